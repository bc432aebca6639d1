"""The benchmark code in benchmarks/lib: the textbook reference sampler, FLOP counting and the peak measurement, the
bare training loop and its settings, and the sampler-speed and compute-efficiency benchmarks end to end with tiny
settings (well-formed JSON, Markdown and PNG)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_pipeline
from diffusers import DDPMScheduler
from PIL import Image
from test_sweep import tiny_mnist_pipeline

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # what `python benchmarks/<script>.py` puts first on the path

from lib.compute import matmul_peak, unet_forward_flops  # noqa: E402
from lib.compute_benchmark import main as compute_main  # noqa: E402
from lib.sampler_benchmark import main as sampler_main  # noqa: E402
from lib.textbook import textbook_sample, textbook_scheduler  # noqa: E402
from lib.training_loops import (  # noqa: E402
    bare_training_seconds,
    load_training_tensors,
    parse_training_flags,
    train_cfg_argv,
)


@pytest.fixture(scope="module")
def tiny_mnist_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-mnist")
    tiny_mnist_pipeline().save_pretrained(path)
    return path


# --- the textbook sampler -------------------------------------------------------------------------------------------


class CountingUNet(torch.nn.Module):
    """Wraps a UNet and records the class labels of every forward pass."""

    def __init__(self, unet):
        super().__init__()
        self.unet, self.calls = unet, []

    @property
    def config(self):
        return self.unet.config

    @property
    def dtype(self):
        return self.unet.dtype

    def forward(self, x, t, class_labels):
        self.calls.append(class_labels.tolist())
        return self.unet(x, t, class_labels=class_labels)


def test_textbook_sampler_runs_two_separate_passes_at_every_training_timestep():
    pipe = tiny_pipeline()  # 50 training timesteps, 3 classes (null class 3)
    unet = CountingUNet(pipe.unet)
    images, nfe = textbook_sample(unet, textbook_scheduler(pipe.scheduler.config), [0, 2], 1.0)
    assert nfe == 100.0 and len(unet.calls) == 100
    assert unet.calls[0::2] == [[0, 2]] * 50 and unet.calls[1::2] == [[3, 3]] * 50  # never batched together
    assert images.shape == (2, 1, 8, 8) and 0 <= images.min() and images.max() <= 1
    unet.calls.clear()
    textbook_sample(unet, textbook_scheduler(pipe.scheduler.config), [1], 0.0, max_steps=4)
    assert len(unet.calls) == 8  # max_steps: speed measurements only


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0])
def test_textbook_sampler_equals_the_pipeline_with_ddpm_at_every_timestep(scale):
    """Same noise, same DDPM steps, same CFG formula: only the batching of the two branches differs."""
    pipe = tiny_pipeline()
    ddpm = textbook_scheduler(pipe.scheduler.config)
    assert isinstance(ddpm, DDPMScheduler)
    labels = [0, 1, 2]
    images, _ = textbook_sample(pipe.unet, ddpm, labels, scale, generator=torch.Generator().manual_seed(7))
    pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    ref = pipe(
        label=labels,
        guidance_scale=scale,
        num_inference_steps=50,
        generator=torch.Generator().manual_seed(7),
        output_type="pt",
    ).images
    assert torch.allclose(images, ref, atol=1e-4), (images - ref).abs().max()


# --- FLOPs, peak, training loops ---------------------------------------------------------------------------------


def test_unet_flops_are_positive_and_linear_in_the_batch():
    unet = tiny_mnist_pipeline().unet
    one = unet_forward_flops(unet, 1)
    assert one > 1e6
    assert unet_forward_flops(unet, 3) == 3 * one


def test_matmul_peak_reports_a_rate():
    peak = matmul_peak(n=64, reps=2)
    assert peak["flops_per_matmul"] == 2 * 64**3
    assert peak["flops_per_second"] >= peak["median_flops_per_second"] > 0


def test_both_training_loops_get_the_shared_flags_and_the_pipelines_unet(tiny_mnist_dir):
    from condiff import ClassConditionalDDPMPipeline

    pipe = ClassConditionalDDPMPipeline.from_pretrained(tiny_mnist_dir)
    flags, rest = parse_training_flags(["--train_batch_size", "4", "--max_train_samples", "16", "--cache_dir", "c"])
    assert (
        flags.train_batch_size == 4 and flags.learning_rate == 1e-3 and flags.use_ema and rest == ["--cache_dir", "c"]
    )
    argv = train_cfg_argv(pipe, flags, rest)
    flag = {a: argv[i + 1] for i, a in enumerate(argv[:-1]) if a.startswith("--")}
    assert argv[argv.index("--block_out_channels") + 1 : argv.index("--block_out_channels") + 3] == ["8", "16"]
    assert flag["--norm_num_groups"] == "4" and flag["--resolution"] == "28" and flag["--num_train_timesteps"] == "30"
    assert flag["--train_batch_size"] == "4" and flag["--learning_rate"] == "0.001" and flag["--p_uncond"] == "0.1"
    assert flag["--ema_max_decay"] == "0.9999" and flag["--report_to"] == "none" and argv[-2:] == ["--cache_dir", "c"]
    assert "--use_ema" in argv and "--attention" not in argv
    with pytest.raises(ValueError, match="gradient accumulation"):
        parse_training_flags(["--gradient_accumulation_steps", "2"])
    with pytest.raises(ValueError, match="--train_batch_size"):
        parse_training_flags(["--train_batch_size", "0"])

    images, labels, num_classes = load_training_tensors(flags, 28)
    assert images.shape == (16, 1, 28, 28) and labels.shape == (16,) and num_classes == 10
    assert -1 <= images.min() and images.max() <= 1
    for extras in (False, True):
        assert bare_training_seconds(pipe, flags, 3, (images, labels, num_classes), extras=extras, device="cpu") > 0


# --- end to end ---------------------------------------------------------------------------------------------------


def _png(path: Path) -> Image.Image:
    img = Image.open(path)
    img.load()
    assert img.width > 100 and img.height > 100
    return img


def test_sampler_benchmark_end_to_end(tiny_mnist_dir, tmp_path):
    out = tmp_path / "res"
    argv = ["--model", str(tiny_mnist_dir), "--device", "cpu", "--out-dir", str(out), "--quick"]
    argv += ["--samplers", "ddim", "euler", "--steps", "2", "3", "--textbook-quality-per-class", "1"]
    assert sampler_main(argv) == 0
    report = json.loads((out / "sampler_speed.json").read_text())
    rows = report["rows"]
    assert [r["name"] for r in rows] == ["textbook", "default", "ddim 2", "ddim 3", "euler 2", "euler 3"]
    textbook, default = rows[0], rows[1]
    assert textbook["nfe_per_image"] == 60.0 and textbook["num_inference_steps"] == 30  # 30 training timesteps
    assert textbook["speedup_vs_textbook"] == pytest.approx(1.0)
    assert textbook["num_scored"] == 10 and textbook["quality_run"]["num_images"] == 10
    assert textbook["extrapolated"] and textbook["timed_steps"] == 5  # --quick times 5 of the 30 steps
    assert textbook["num_images"] == textbook["batch_size"] == 2
    assert default["sampler"] == "DPMSolverMultistepScheduler" and default["num_inference_steps"] == 20
    assert [r["nfe_per_image"] for r in rows[2:]] == [4.0, 6.0, 4.0, 6.0]
    for r in rows:
        assert r["images_per_second"] > 0 and r["speedup_vs_textbook"] > 0 and 0 <= r["accuracy"] <= 1
    for r in rows[1:]:
        assert r["num_images"] == r["num_scored"] == 20
    assert report["headline"]["default_speedup_vs_textbook"] == pytest.approx(default["speedup_vs_textbook"])
    assert report["settings"]["textbook_scheduler"]["_class_name"] == "DDPMScheduler"
    assert {"platform", "cpu_count", "torch_threads"} <= set(report["machine"])
    assert "**Headline" in (out / "sampler_speed.md").read_text()
    _png(out / "sampler_speed.png")


def test_compute_benchmark_end_to_end(tiny_mnist_dir, tmp_path):
    out = tmp_path / "res"
    argv = ["--model", str(tiny_mnist_dir), "--device", "cpu", "--out-dir", str(out), "--quick"]
    argv += ["--train-args", "--max_train_samples 64 --train_batch_size 4"]
    assert compute_main(argv) == 0
    report = json.loads((out / "compute_efficiency.json").read_text())
    assert report["flops_per_forward"] > 1e6 and report["peak"]["flops_per_second"] > 0
    names = [r["name"] for r in report["sampling"]]
    assert names == ["pipeline, batch 1", "pipeline, batch 8", "textbook, batch 2"]
    for r in report["sampling"]:
        assert r["forwards_per_second"] > 0 and 0 < r["fraction_of_peak"]
        assert r["achieved_flops_per_second"] == pytest.approx(r["forwards_per_second"] * report["flops_per_forward"])
    training = report["training"]
    assert [r["name"] for r in training["rows"]] == ["train_cfg.py", "bare", "bare + EMA, clip, LR schedule"]
    assert training["batch_size"] == 4 and training["num_training_images"] == 64
    assert training["notes"] and "--train-steps" in training["notes"][0]  # far too short to be a measurement
    assert training["flops_per_image_forward_backward"] > 2 * report["flops_per_forward"]
    for r in training["rows"]:
        assert len(r["seconds_short_long"]) == 1 and all(s > 0 for s in r["seconds_short_long"][0])
    breakdown = report["breakdown"]
    assert breakdown["batch_size"] == 4 and breakdown["operators"]["kinds"][0]["share"] > 0
    assert breakdown["operators"]["convolution_fraction_of_peak"] > 0
    assert [r["name"] for r in breakdown["variants"]][-2:] == [
        "UNet forwards alone, micro-batch 4, channels_last",
        "UNet forwards alone, micro-batch 4, contiguous (NCHW)",
    ]  # the quick run leaves torch.compile out
    for r in breakdown["variants"]:
        flops_per_second = r["images_per_second"] * r["nfe_per_image"] * report["flops_per_forward"]
        assert r["fraction_of_peak"] == pytest.approx(flops_per_second / report["peak"]["flops_per_second"])
    md = (out / "compute_efficiency.md").read_text()
    assert "## Training" in md and "## Where the time goes at batch 4" in md
    _png(out / "compute_efficiency.png")


def test_benchmark_scripts_are_thin_wrappers_with_help():
    scripts = ("guidance_sweep", "sampler_speed", "compute_efficiency", "distillation", "micro_batching")
    for script in (f"benchmarks/{name}.py" for name in scripts):
        result = subprocess.run(
            [sys.executable, str(REPO / script), "--help"], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0 and "--quick" in result.stdout, script
        assert "results" in result.stdout  # default output folder: benchmarks/results


@pytest.mark.skipif(
    not (REPO / "src/condiff/assets/mnist-cfg/model_index.json").is_file(), reason="shipped model not trained yet"
)
def test_sampler_benchmark_runs_on_the_shipped_model(tmp_path):
    argv = ["--device", "cpu", "--out-dir", str(tmp_path), "--quick", "--samplers", "dpm++2m", "--steps", "5"]
    argv += ["--textbook-timed-steps", "2"]
    assert sampler_main(argv) == 0
    report = json.loads((tmp_path / "sampler_speed.json").read_text())
    assert report["rows"][0]["extrapolated"] and report["rows"][0]["nfe_per_image"] == 2000.0


def test_text_styles_apg_setting_guides_the_steps_of_its_noise_interval():
    """`apg:W:LO:HI` of benchmarks/text_guidance_styles.py: diffusers' APG (eta 0) on the same steps as CFG on the
    interval (LO, HI) at the text model's default steps."""
    import argparse
    from types import SimpleNamespace

    import text_guidance_styles as styles
    from diffusers import DPMSolverMultistepScheduler

    from condiff import shipped_model_path

    parser = argparse.ArgumentParser()
    assert styles.parse_setting("apg:4:0.2:0.7", parser) == {"w": 4.0, "interval": [0.2, 0.7], "method": "apg"}
    with pytest.raises(SystemExit):
        styles.parse_setting("apg:4:0.2", parser)
    scheduler = DPMSolverMultistepScheduler.from_pretrained(shipped_model_path("latent"), subfolder="scheduler")
    pipe = SimpleNamespace(scheduler=scheduler, config=SimpleNamespace(default_num_inference_steps=25))
    guider = styles.apg_guider(pipe, 4.0, (0.2, 0.7))
    fractions = [float(t) / scheduler.config.num_train_timesteps for t in scheduler.timesteps]
    inside = [i for i, f in enumerate(fractions) if 0.2 <= f <= 0.7]
    assert 0 < len(inside) < 25
    assert (guider._start, guider._stop) == (inside[0] / 25, (inside[-1] + 1) / 25)
    assert (guider.guidance_scale, guider.eta) == (4.0, 0.0)


def test_classifier_guidance_misses_reports_the_draw_and_draws_its_misses(tmp_path):
    """benchmarks/classifier_guidance_misses.py on the shipped folder at 2 steps (mostly misses): the counts add up,
    the JSON file holds the printed line and the grid has one 32-pixel tile (4x enlarged) per miss."""
    from classifier_guidance_misses import main as misses_main

    argv = ["--num-per-class", "1", "--num-inference-steps", "2", "--out", str(tmp_path / "m.json")]
    result = misses_main([*argv, "--grid", str(tmp_path / "m.png")])
    assert result["num_samples"] == 10 and result["requested"] == list(range(10))
    assert result["guide_fooled"] + result["guide_rejects"] == result["misses"] == len(result["missed_indices"]) > 0
    assert result["evaluator_accuracy"] == pytest.approx(1 - result["misses"] / 10) == result["accuracy"]
    assert result["fd_over_floor_same_n"] > 1
    assert json.loads((tmp_path / "m.json").read_text())["missed_indices"] == result["missed_indices"]
    assert Image.open(tmp_path / "m.png").size == (128 * result["misses"], 128)
