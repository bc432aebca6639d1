"""benchmarks/learned_variance.py end to end on a tiny learned-variance UNet (with the shipped classifier)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from diffusers import DDPMPipeline, DDPMScheduler

from condiff.models import class_conditional_unet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from lib.variance_benchmark import main  # noqa: E402


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    path = tmp_path_factory.mktemp("lv")
    unet = class_conditional_unet(None, 28, 1, (8, 16), 1, False, 4, out_channels=2)
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                              variance_type="learned_range")  # fmt: skip
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(path)
    return path


def test_rows_for_each_model_and_setting(learned, tmp_path):
    out = tmp_path / "res"
    assert main(["--quick", "--models", f"{learned}:lv", "--steps", "2", "3", "--out-dir", str(out)]) == 0
    report = json.loads((out / "learned_variance.json").read_text())
    settings = [(r["model"], r["setting"]) for r in report["rows"]]
    assert settings == [
        ("lv", "unguided, DDPM 2 steps"),
        ("lv", "unguided, DDPM 3 steps"),
        ("lv", "classifier guidance s 5, DDPM 2 steps, mean shift"),
    ]
    for r in report["rows"]:
        assert r["variance"] == "learned_range" and r["nfe_per_image"] == r["steps"]
        assert r["fd_ratio_matched"] > 0 and 0 <= r["accuracy"] <= 1
    assert "| lv | learned_range | unguided, DDPM 2 steps | - |" in (out / "learned_variance.md").read_text()


def test_a_folder_that_is_no_denoiser_is_refused_before_sampling(tmp_path, capsys):
    assert main(["--quick", "--models", str(tmp_path / "missing"), "--out-dir", str(tmp_path / "res")]) == 2
    assert "--models" in capsys.readouterr().err and not (tmp_path / "res" / "learned_variance.json").exists()


def test_guided_rows_default_to_the_kept_fixed_variance_folder(learned, tmp_path, capsys):
    """The guide is the folder shipped before issue 22 (fixed variance, s 5, 25 steps), kept in benchmarks/models;
    a --guide that is no classifier-guided folder is refused before any sampling."""
    from lib.variance_benchmark import REFERENCE_CG

    index = json.loads((REFERENCE_CG / "model_index.json").read_text())
    scheduler = json.loads((REFERENCE_CG / "scheduler" / "scheduler_config.json").read_text())
    assert index["_class_name"] == "ClassifierGuidedPipeline" and scheduler["variance_type"] == "fixed_small"
    assert (index["default_classifier_scale"], index["default_num_inference_steps"]) == (5.0, 25)
    out = tmp_path / "res"
    args = ["--quick", "--models", f"{learned}:lv", "--out-dir", str(out)]
    assert main([*args, "--guide", str(learned)]) == 2
    assert "--guide" in capsys.readouterr().err and not (out / "learned_variance.json").exists()
