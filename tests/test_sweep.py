"""The guidance sweep (condiff.evaluation.sweep) and the generation it runs on: settings, balanced seeded sampling,
the diversity measure on known inputs, and end-to-end runs with tiny settings through `condiff sweep`, producing
well-formed JSON, Markdown and PNGs."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from condiff.pipelines.checks import unet_sample_size
from conftest import tiny_pipeline
from diffusers import DDPMScheduler
from PIL import Image

from condiff import ClassConditionalDDPMPipeline
from condiff.cli import main as cli_main
from condiff.evaluation import Samples, generate_samples, score_samples, within_class_diversity
from condiff.evaluation.scoring import metric_fields
from condiff.evaluation.sweep import DEFAULT_SCALES, GuidanceSetting, sweep_settings
from condiff.models import (
    DPM_SOLVER_SETTINGS,
    class_conditional_unet,
    default_sampling_scheduler,
    scheduler_for,
    training_scheduler,
)


def tiny_mnist_pipeline() -> ClassConditionalDDPMPipeline:
    """A random 28 x 28, 10-class pipeline (so the MNIST evaluator can score it) with a 30-step training schedule
    (DPM-Solver++ at as many inference steps as training steps gives NaNs, so keep 30 > its default 20)."""
    torch.manual_seed(0)
    unet = class_conditional_unet(10, sample_size=28, block_out_channels=(8, 16), norm_num_groups=4)
    train = DDPMScheduler(num_train_timesteps=30, beta_schedule="squaredcos_cap_v2", clip_sample=True)
    return ClassConditionalDDPMPipeline(unet=unet, scheduler=default_sampling_scheduler(train))


@pytest.fixture(scope="session")
def tiny_mnist_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-mnist-pipeline")
    tiny_mnist_pipeline().save_pretrained(path)
    return path


# --- settings -------------------------------------------------------------------------------------------------


def test_default_settings_are_plain_cfg_then_rescale_and_interval_variants_above_one():
    settings = sweep_settings()
    assert DEFAULT_SCALES == (0.0, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5)
    plain = [s for s in settings if s.variant == "plain CFG"]
    assert [s.guidance_scale for s in plain] == list(DEFAULT_SCALES)
    assert settings[: len(plain)] == plain
    above_one = [1.5, 2.0, 3.0, 5.0, 7.5]
    assert [s.guidance_scale for s in settings if s.guidance_rescale == 0.7] == above_one
    assert [s.guidance_scale for s in settings if s.guidance_interval == (0.2, 0.8)] == above_one
    assert len(settings) == 7 + 5 + 5


def test_settings_labels_repeats_and_validation():
    assert GuidanceSetting(3.0).label == "w=3"
    assert GuidanceSetting(2.0, 0.5).label == "w=2 (rescale 0.5)"
    assert GuidanceSetting(5.0, guidance_interval=(0.1, 0.9)).label == "w=5 (interval [0.1, 0.9])"
    assert GuidanceSetting(2.0, 0.5).call_kwargs() == {
        "guidance_scale": 2.0,
        "guidance_rescale": 0.5,
        "guidance_interval": (0.0, 1.0),
    }
    # an interval of (0, 1) is plain CFG: not repeated
    settings = sweep_settings([1, 3], rescales=[], intervals=[(0.0, 1.0)], variant_scales=[3])
    assert settings == [GuidanceSetting(1.0), GuidanceSetting(3.0)]
    with pytest.raises(ValueError, match="guidance_interval"):
        sweep_settings([3], intervals=[(0.8, 0.2)])
    with pytest.raises(ValueError, match="guidance_rescale"):
        sweep_settings([3], rescales=[1.5])
    with pytest.raises(ValueError, match="guidance_scale"):
        sweep_settings([-1])


# --- diversity --------------------------------------------------------------------------------------------------


def test_within_class_diversity_on_known_inputs():
    feats = np.array([[0, 0], [3, 4], [0, 0], [1, 0], [0, 1], [9, 9]], dtype=np.float32)
    labels = [0, 0, 1, 1, 1, 2]  # class 2 has one row: no pairs, ignored
    expected = (5.0 + (1 + 1 + math.sqrt(2)) / 3) / 2
    assert within_class_diversity(feats, labels) == pytest.approx(expected)
    # identical rows have no diversity; scaling the features scales it
    assert within_class_diversity(np.ones((4, 3)), [0, 0, 1, 1]) == 0.0
    assert within_class_diversity(3 * feats, labels) == pytest.approx(3 * expected)
    assert within_class_diversity(feats[:2], [0, 1]) is None
    with pytest.raises(ValueError, match="labels has"):
        within_class_diversity(feats, [0, 1])


def test_generate_samples_is_balanced_seeded_and_counts_nfe():
    pipe = tiny_pipeline()
    a = generate_samples(pipe, num_per_class=2, batch_size=4, seed=3, guidance_scale=2.0, num_inference_steps=3)
    b = generate_samples(pipe, num_per_class=2, batch_size=4, seed=3, guidance_scale=2.0, num_inference_steps=3)
    assert a.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert a.images.shape == (6, 1, 8, 8) and 0 <= a.images.min() and a.images.max() <= 1
    assert torch.equal(a.images, b.images)
    assert a.nfe_per_image == 6.0 and a.batch_size == 4 and a.wall_seconds > 0
    assert len(a.first_of_each_class()) == 3


class _Recorder:
    """A stand-in pipeline that records its calls and reports NFE per image in its output."""

    num_classes = 2

    def __init__(self):
        self.calls: list[dict] = []
        self._progress_bar_config = {"leave": False}

    def set_progress_bar_config(self, **kwargs):
        self._progress_bar_config.update(kwargs)

    def __call__(self, label, output_type, generator=None, **kwargs):
        seed = None if generator is None else generator.initial_seed()
        self.calls.append({"n": len(label), "seed": seed, "bar": dict(self._progress_bar_config), **kwargs})
        return SimpleNamespace(images=torch.zeros(len(label), 4, 4, 1), nfe_per_image=float(len(label)))


def test_generate_samples_warms_up_untimed_weights_nfe_and_restores_the_progress_bar():
    pipe = _Recorder()
    samples = generate_samples(pipe, num_per_class=3, batch_size=4, seed=5, guidance_scale=2.0)
    warm, *timed = pipe.calls
    assert warm["n"] == 4 and warm["seed"] is None and warm["num_inference_steps"] == 2
    assert [(c["n"], c["seed"]) for c in timed] == [(4, 5), (2, 6)]
    assert all(c["bar"]["disable"] and c["guidance_scale"] == 2.0 for c in pipe.calls)
    assert pipe._progress_bar_config == {"leave": False}  # restored
    assert samples.labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert samples.images.shape == (6, 1, 4, 4)  # channels-last output turned to [N, C, H, W]
    assert samples.nfe_per_image == pytest.approx((4 * 4 + 2 * 2) / 6)  # weighted by images per batch
    with pytest.raises(ValueError, match="batch_size"):
        generate_samples(pipe, num_per_class=1, batch_size=0)


def test_default_sampler_is_the_dpm_solver_short_name():
    train = training_scheduler("squaredcos_cap_v2", "epsilon", 30)
    shipped = default_sampling_scheduler(train)
    assert shipped.config == scheduler_for("dpm++2m", train.config).config
    assert {k: shipped.config[k] for k in DPM_SOLVER_SETTINGS} == DPM_SOLVER_SETTINGS
    assert unet_sample_size(class_conditional_unet(3, sample_size=8).config) == (8, 8)


def test_diverged_samples_are_counted_not_scored():
    images = torch.rand(4, 1, 28, 28)
    images[2, 0, 3, 3] = float("nan")
    samples = Samples(images, np.array([0, 1, 2, 3]), 1.0, 2.0, 4)
    scores = score_samples(samples)
    assert scores["nonfinite_images"] == 1 and scores["num_samples"] == 0
    assert metric_fields(scores)["accuracy"] is None and metric_fields(scores)["nonfinite_images"] == 1
    assert (
        score_samples(Samples(torch.rand(4, 1, 28, 28), np.array([0, 0, 1, 1]), 1.0, 2.0, 4))["nonfinite_images"] == 0
    )


# --- end to end ------------------------------------------------------------------------------------------------


def _check_png(path, min_size=(32, 32)) -> Image.Image:
    img = Image.open(path)
    img.load()
    assert img.width >= min_size[0] and img.height >= min_size[1]
    return img


def test_sweep_command_end_to_end_on_a_tiny_mnist_pipeline(tiny_mnist_dir, tmp_path, capsys):
    out = tmp_path / "results"
    argv = ["sweep", "--model", str(tiny_mnist_dir), "--device", "cpu", "--out-dir", str(out), "--name", "s"]
    argv += ["--scales", "0", "1", "3", "--variant-scales", "3", "--num-per-class", "2", "--steps", "3"]
    assert cli_main(argv) == 0
    report = json.loads((out / "s.json").read_text())
    rows = report["rows"]
    assert [r["label"] for r in rows] == ["w=0", "w=1", "w=3", "w=3 (rescale 0.7)", "w=3 (interval [0.2, 0.8])"]
    assert report["settings"]["num_images_per_setting"] == 20 and report["settings"]["num_inference_steps"] == 3
    assert report["settings"]["evaluated"] is True
    assert {"platform", "cpu_count", "torch_threads"} <= set(report["machine"])
    # NFE: one branch at w = 0 and 1, both at w = 3; the interval skips the second branch outside it
    assert [r["nfe_per_image"] for r in rows[:4]] == [3.0, 3.0, 6.0, 6.0]
    assert 3.0 <= rows[4]["nfe_per_image"] <= 6.0
    for r in rows:
        assert r["num_images"] == r["num_scored"] == 20
        assert 0 <= r["accuracy"] <= 1 and r["frechet_distance"] > 0 and r["fd_ratio_matched"] > 0
        assert r["diversity_relative"] > 0 and r["images_per_second"] > 0 and r["wall_seconds"] > 0
        assert set(r["per_class_accuracy"]) == {str(c) for c in range(10)}
    assert report["real_data"]["floor_matched"] > 0 and report["real_data"]["diversity_test_split"] > 0
    md = (out / "s.md").read_text()
    assert "| w | variant | NFE/img |" in md and md.count("\n| ") >= 6
    _check_png(out / "s.png")
    grid = _check_png(out / "s_grid.png")
    assert grid.height == 5 * 28 * 2 and grid.width > 10 * 28 * 2  # rows = settings, columns = classes (x2 zoom)
    assert "wrote" in capsys.readouterr().out


def test_sweep_runs_on_any_pipeline_without_scores_when_the_evaluator_does_not_fit(tmp_path):
    from condiff.evaluation.sweep import main

    model = tmp_path / "tiny8"
    tiny_pipeline().save_pretrained(model)
    out = tmp_path / "r"
    assert main(["--model", str(model), "--device", "cpu", "--quick", "--scales", "1", "2", "--out-dir", str(out)]) == 0
    report = json.loads((out / "guidance_sweep.json").read_text())
    assert report["settings"]["evaluated"] is False and "real_data" not in report
    assert all(r["accuracy"] is None and r["num_scored"] == 0 for r in report["rows"])
    assert [r["nfe_per_image"] for r in report["rows"]][:2] == [10.0, 20.0]  # --quick: 10 steps
    assert "Not scored" in (out / "guidance_sweep.md").read_text()
    _check_png(out / "guidance_sweep.png")
    assert _check_png(out / "guidance_sweep_grid.png").height == 4 * 8 * 2  # w=1, w=2, and two variants at 3


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--num-per-class", "0"], "--num-per-class"),
        (["--name", "a/b"], "--name"),
        (["--intervals", "0.9,0.1"], "guidance_interval"),
        (["--steps", "0"], "--steps"),
    ],
)
def test_sweep_rejects_bad_arguments_before_model_work(tmp_path, capsys, extra, match):
    out = tmp_path / "r"
    try:
        code = cli_main(["sweep", "--model", str(tmp_path / "missing"), "--out-dir", str(out), *extra])
    except SystemExit as stop:  # argparse rejects out-of-range numbers while parsing
        code = stop.code
    assert code == 2
    assert match in capsys.readouterr().err
    assert not list(out.glob("*.json"))


# --- outputs: nothing existing is replaced without --overwrite (issue 19 item 4) -------------------------------


def _no_model_work(monkeypatch):
    import condiff.evaluation.sweep as sweep_module

    def fail(*args, **kwargs):
        raise AssertionError("model work before the output check")

    monkeypatch.setattr(sweep_module, "load_pipeline", fail)
    monkeypatch.setattr(sweep_module, "generate_samples", fail)


def test_sweep_refuses_existing_outputs_before_sampling_and_leaves_them(tmp_path, capsys, monkeypatch):
    _no_model_work(monkeypatch)
    out = tmp_path / "published"
    out.mkdir()
    (out / "s_grid.png").write_bytes(b"published figure")
    code = cli_main(["sweep", "--model", str(tmp_path / "missing"), "--out-dir", str(out), "--name", "s"])
    err = capsys.readouterr().err
    assert code == 2 and str(out / "s_grid.png") in err and "--overwrite" in err
    assert (out / "s_grid.png").read_bytes() == b"published figure"
    assert sorted(p.name for p in out.iterdir()) == ["s_grid.png"]


def test_sweep_with_overwrite_replaces_existing_outputs(tiny_mnist_dir, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "s.json").write_text("old")
    argv = ["sweep", "--model", str(tiny_mnist_dir), "--device", "cpu", "--out-dir", str(out), "--name", "s"]
    argv += ["--scales", "1", "--variant-scales", "--num-per-class", "2", "--steps", "2", "--overwrite"]
    assert cli_main(argv) == 0
    assert json.loads((out / "s.json").read_text())["settings"]["num_per_class"] == 2


def test_sweep_default_output_folder_is_not_the_published_results():
    from condiff.evaluation.cli_args import build_sweep_parser
    from condiff.evaluation.sweep import main

    assert build_sweep_parser().parse_args([]).out_dir == "condiff-sweep"
    assert main.__defaults__[-1] == "condiff-sweep"


def test_report_main_refuses_existing_outputs_before_running(tmp_path, capsys):
    from condiff.evaluation.cli_args import report_parser
    from condiff.evaluation.reports import report_main

    (tmp_path / "r.md").write_text("published")
    args = report_parser("a report", tmp_path, "r").parse_args([])

    def run():
        raise AssertionError("measured before the output check")

    assert report_main(args, run, str, None) == 2
    assert "r.md" in capsys.readouterr().err and (tmp_path / "r.md").read_text() == "published"


def test_classifier_guidance_benchmark_refuses_existing_outputs_before_loading(tmp_path, capsys, monkeypatch):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import classifier_guidance

    monkeypatch.setattr(classifier_guidance, "load_pipes", lambda args: pytest.fail("loaded before the check"))
    (tmp_path / "cg_sweep.png").write_bytes(b"figure")
    argv = ["--part", "sweep", "--out-dir", str(tmp_path), "--name", "cg_sweep"]
    assert classifier_guidance.main(argv) == 2
    err = capsys.readouterr().err
    assert "cg_sweep.png" in err and "--overwrite" in err and (tmp_path / "cg_sweep.png").read_bytes() == b"figure"
