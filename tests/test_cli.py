"""The `condiff` command line: fast --help, --num-images per label, --out checked before model work, --quiet,
evaluate's scope and report, sweep without matplotlib, offline Hub errors, `condiff train` forwarding."""

import importlib.util
import json
import subprocess
import sys
import time
import types

import pytest
import torch
from conftest import tiny_pipeline
from diffusers import DDPMScheduler
from PIL import Image

from condiff import ClassConditionalDDPMPipeline
from condiff.cli import main
from condiff.models import class_conditional_unet


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A 3-class 8 x 8 pipeline (not something the MNIST evaluator can score)."""
    folder = tmp_path_factory.mktemp("tiny-3-class")
    tiny_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def mnist_shaped_dir(tmp_path_factory):
    """A random 10-class 28 x 28 pipeline whose default is 3 inference steps."""
    torch.manual_seed(0)
    unet = class_conditional_unet(10, sample_size=28, block_out_channels=(8, 16), norm_num_groups=4)
    scheduler = DDPMScheduler(num_train_timesteps=30, beta_schedule="squaredcos_cap_v2", clip_sample=True)
    folder = tmp_path_factory.mktemp("tiny-mnist-shaped")
    ClassConditionalDDPMPipeline(unet, scheduler, default_num_inference_steps=3).save_pretrained(folder)
    return folder


def python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)


# --- item 6: --help answers without torch, and shows defaults ---------------------------------------------------


HELP_ARGVS = [["--help"], ["generate", "--help"], ["evaluate", "--help"], ["sweep", "--help"], ["--version"]]


@pytest.mark.parametrize("argv", HELP_ARGVS)
def test_help_does_not_import_torch_diffusers_or_pil(argv):
    code = f"""
import sys, time
start = time.perf_counter()
from condiff.cli import main
try:
    main({argv!r})
except SystemExit as stop:
    assert stop.code == 0, stop.code
heavy = sorted(m for m in ("torch", "diffusers", "PIL", "numpy", "huggingface_hub") if m in sys.modules)
assert not heavy, heavy
print("seconds", time.perf_counter() - start)
"""
    result = python(code)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split("seconds")[-1]) < 2.0  # was 5-12 s with torch imported first


def test_help_shows_defaults_and_defines_num_images(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: the model's own, 2.5 for the shipped model" in text
    assert "(default: 16)" in text and "(default: 2)" in text
    assert "images PER LABEL: --label 0,1 --num-images 3 writes 6 images" in text
    assert "(default: None)" not in text and "(default: False)" not in text
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert all(command in top for command in ("generate", "evaluate", "sweep", "train"))


def test_package_import_is_lazy_but_complete():
    result = python("import sys, condiff; assert 'torch' not in sys.modules; print(condiff.shipped_model_path().name)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["mnist-cfg"]
    import condiff

    assert condiff.ClassConditionalDDPMPipeline is ClassConditionalDDPMPipeline  # imported on first use
    assert "ClassConditionalDDPMPipeline" in condiff.__all__
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        condiff.nothing  # noqa: B018


# --- item 7: --num-images is per label --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "label,num_images,size,count",
    [
        ("0,1", 3, (3 * 8, 2 * 8), 6),
        ("zero,one,two", 7, (7 * 8, 3 * 8), 21),
        ("1", 4, (2 * 8, 2 * 8), 4),
        (None, 5, (3 * 8, 2 * 8), 5),
    ],
)
def test_num_images_is_per_label(label, num_images, size, count, model_dir, tmp_path, capsys):
    out = tmp_path / "grid.png"
    argv = ["generate", "--model", str(model_dir), "--out", str(out), "--num-images", str(num_images)]
    argv += ["--upscale", "1", "--steps", "2", "--quiet"] + (["--label", label] if label else [])
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    assert f"({count} images: {num_images} per label" in stdout
    with Image.open(out) as grid:
        assert grid.size == size  # one row per label, num_images columns (a near-square grid for one label)


# --- item 8: --out is checked before any model work; no silent overwrite ----------------------------------------


@pytest.mark.parametrize("out", ["/proc/condiff-x.png", "/sys/condiff-x.png"])
def test_unwritable_out_fails_fast_without_loading_anything(out):
    code = f"""
import sys, time
start = time.perf_counter()
from condiff.cli import main
assert main(["generate", "--label", "3", "--out", {out!r}]) == 2
assert "torch" not in sys.modules
print("seconds", time.perf_counter() - start)
"""
    result = python(code)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split("seconds")[-1]) < 3.0
    assert f"--out {out!r}: folder {out.rsplit('/', 1)[0]!r} cannot be written" in result.stderr


def test_existing_out_needs_overwrite(model_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "grid.png"
    out.write_bytes(b"old")
    argv = ["generate", "--model", str(model_dir), "--out", str(out), "--steps", "2", "--quiet"]
    with monkeypatch.context() as m:
        m.setattr("condiff.loading.load_pipeline", lambda *a, **k: pytest.fail("model loaded before --out was checked"))
        code, _, err = run(argv, capsys)
    assert code == 2 and "already exists; pass --overwrite to replace it" in err
    assert out.read_bytes() == b"old"
    code, _, err = run([*argv, "--overwrite"], capsys)
    assert code == 0, err
    with Image.open(out) as grid:
        assert grid.format == "PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temporary or probe file left


def test_evaluate_json_out_needs_overwrite(tmp_path, capsys, monkeypatch):
    out = tmp_path / "m.json"
    out.write_text("{}")
    monkeypatch.setattr("condiff.loading.load_pipeline", lambda *a, **k: pytest.fail("model loaded"))
    code, _, err = run(["evaluate", "--out", str(out)], capsys)
    assert code == 2 and "--overwrite" in err and out.read_text() == "{}"


# --- item 9: --quiet silences diffusers' loading bar ------------------------------------------------------------


def test_quiet_silences_the_loading_bar(model_dir, tmp_path, capsys):
    from diffusers.utils import logging as diffusers_logging

    argv = ["generate", "--model", str(model_dir), "--steps", "2", "--num-images", "1"]
    code, _, err = run([*argv, "--out", str(tmp_path / "a.png")], capsys)
    assert code == 0 and "Loading pipeline components" in err  # the bar is there without --quiet
    code, _, err = run([*argv, "--out", str(tmp_path / "b.png"), "--quiet"], capsys)
    assert code == 0 and err == ""
    assert diffusers_logging.is_progress_bar_enabled()  # restored for the rest of the process


# --- items 10 and 11: evaluate's scope, the steps it used, labelled Frechet floors --------------------------------


def test_evaluate_refuses_a_model_the_evaluator_cannot_score(model_dir, capsys, monkeypatch):
    monkeypatch.setattr(
        "condiff.evaluation.scoring.evaluate_pipeline", lambda *a, **k: pytest.fail("sampled before the check")
    )
    code, _, err = run(["evaluate", "--model", str(model_dir), "--num-per-class", "2"], capsys)
    assert code == 2
    assert "scores 10-class, 1-channel 28x28 models" in err and "is a 3-class, 1-channel 8x8 model" in err
    assert "label must be in" not in err


def test_evaluate_reports_steps_used_and_names_each_floor(mnist_shaped_dir, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    argv = ["evaluate", "--model", str(mnist_shaped_dir), "--num-per-class", "2", "--out", str(out)]
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    report = json.loads(out.read_text())
    assert json.loads(stdout) == report
    assert report["num_inference_steps"] == 3  # the pipeline's default_num_inference_steps, not null
    assert report["num_samples"] == 20
    fd = report["frechet_distance"]
    assert report["fd_over_floor_same_n"] == pytest.approx(fd / report["floor_same_n"])
    assert report["fd_over_floor_all_train_rows"] == pytest.approx(fd / report["floor_all_train_rows"])
    assert report["floor_same_n"] > report["floor_all_train_rows"] > 0  # 20 rows inflate the real-vs-real floor
    assert not {"floor", "fd_ratio", "floor_matched", "fd_ratio_matched"} & set(report)
    assert set(report["notes"]) == {"frechet_distance", "floor_all_train_rows", "floor_same_n"}
    settings = {k: report[k] for k in ("guidance_method", "classifier_scale", "guidance_scale", "scheduler")}
    assert settings == {  # what ran: the model's default scale (None in its config: 3), its scheduler
        "guidance_method": "classifier-free",
        "classifier_scale": None,
        "guidance_scale": 3.0,
        "scheduler": "DDPMScheduler",
    }
    code, _, err = run([*argv, "--steps", "2", "--overwrite"], capsys)
    assert code == 0, err
    assert json.loads(out.read_text())["num_inference_steps"] == 2


# --- item 12: sweep needs matplotlib: say so before any work ----------------------------------------------------


def test_sweep_without_matplotlib_fails_first_naming_the_extra(tmp_path, capsys, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real_find_spec(name, *a)
    )
    monkeypatch.setattr("condiff.evaluation.sweep.run_from_args", lambda args: pytest.fail("sweep ran"))
    out = tmp_path / "r"
    code, _, err = run(["sweep", "--quick", "--out-dir", str(out)], capsys)
    assert code == 2 and 'pip install "condiff[plots]"' in err and "matplotlib" in err
    assert not out.exists()


# --- item 13: an unreachable Hub id says so, and that a local folder works ----------------------------------------


def test_offline_hub_id_error_is_clear(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets when the Hub is imported
    argv = ["generate", "--model", "someone/no-such-model", "--out", str(tmp_path / "g.png"), "--quiet"]
    code, _, err = run(argv, capsys)
    assert code == 2
    assert "--model 'someone/no-such-model' is not a local folder" in err
    assert "the Hugging Face Hub cannot be reached (offline mode: HF_HUB_OFFLINE is set)" in err
    assert "a local pipeline folder works offline" in err
    assert "stacktrace" not in err and "Traceback" not in err


def test_model_that_is_neither_folder_nor_hub_id(tmp_path, capsys):
    code, _, err = run(["generate", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "g.png")], capsys)
    assert code == 2 and "no such folder" in err and "missing" in err


# --- item 3: the push-failure hint names commands that exist ------------------------------------------------------


def test_push_failure_hint_names_working_commands(tmp_path, monkeypatch):
    from condiff import hub

    tiny_pipeline().save_pretrained(tmp_path / "m")

    def unreachable(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(hub, "create_repo", unreachable)
    with pytest.raises(hub.HubUploadError) as info:
        hub.push_folder(tmp_path / "m", "someone/tiny")
    message = str(info.value)
    assert "huggingface-cli" not in message
    python_call = message.split("push it later from Python with `")[1].split("`")[0]
    uploaded = {}
    monkeypatch.setattr(hub, "create_repo", lambda *a, **k: None)
    monkeypatch.setattr(hub, "upload_folder", lambda **kw: uploaded.update(kw) or "ok")
    exec(python_call, {})  # the Python call in the hint runs as written
    assert str(uploaded["folder_path"]) == str(tmp_path / "m") and uploaded["repo_id"] == "someone/tiny"
    hf_command = message.split("or with `")[1].split("`")[0]
    assert hf_command.startswith("hf upload someone/tiny ")
    hf = subprocess.run([str(__import__("pathlib").Path(sys.executable).parent / "hf"), "upload", "--help"],
                        capture_output=True, text=True, timeout=60)  # fmt: skip
    assert hf.returncode == 0 and "--exclude" in hf.stdout


# --- condiff train forwards to condiff.train ----------------------------------------------------------------------


def test_train_forwards_everything_to_the_task_parser(monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "condiff.train", types.SimpleNamespace(main=calls.append))
    assert main(["train", "cfg", "--help"]) == 0
    assert main(["train", "cfg", "--output_dir", "x", "--max_train_steps", "2"]) == 0
    assert calls == [["cfg", "--help"], ["cfg", "--output_dir", "x", "--max_train_steps", "2"]]


def test_elapsed_budget_of_the_fast_paths():
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "condiff.cli", "generate", "--out", "x.txt"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "--out 'x.txt' must end in one of .png" in result.stderr
    assert time.perf_counter() - start < 5.0


def test_guidance_interval_reaches_the_pipeline_and_bad_ones_are_refused(model_dir, tmp_path, capsys, monkeypatch):
    from condiff.pipelines.class_conditional import ClassConditionalDDPMPipeline as Pipe

    seen = []
    real = Pipe.__call__
    monkeypatch.setattr(
        Pipe, "__call__", lambda self, **kw: seen.append(kw.get("guidance_interval")) or real(self, **kw)
    )
    base = ["generate", "--model", str(model_dir), "--label", "1", "--steps", "2", "--num-images", "1", "--quiet"]
    code, stdout, err = run(base + ["--out", str(tmp_path / "a.png"), "--guidance-interval", "0.3", "0.6"], capsys)
    assert code == 0, err
    assert seen == [(0.3, 0.6)] and "guidance_interval=(0.3, 0.6)" in stdout
    with pytest.raises(SystemExit) as exit_:
        main(base + ["--out", str(tmp_path / "b.png"), "--guidance-interval", "0.5", "1.5"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--guidance-interval" in err and not (tmp_path / "b.png").exists()
