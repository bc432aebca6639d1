"""benchmarks/prediction_targets.py end to end on tiny 10-class 28 x 28 models (epsilon and mean targets), and its
--merge of runs made in parallel."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from condiff.pipelines import ClassConditionalDDPMPipeline
from diffusers import DDPMScheduler

from condiff.models import class_conditional_unet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from lib.targets_benchmark import main  # noqa: E402


def save_model(folder: Path, prediction_target: str | None) -> Path:
    torch.manual_seed(0)
    unet = class_conditional_unet(10, sample_size=28, block_out_channels=(8, 16), norm_num_groups=4)
    scheduler = DDPMScheduler(num_train_timesteps=20, beta_schedule="squaredcos_cap_v2", clip_sample=True)
    pipe = ClassConditionalDDPMPipeline(unet, scheduler, prediction_target=prediction_target)
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("targets")
    return save_model(root / "eps", None), save_model(root / "mean", "mean")


def run(args: list[str], out: Path, name: str) -> dict:
    assert main(["--quick", "--out-dir", str(out), "--name", name, *args]) == 0
    return json.loads((out / f"{name}.json").read_text())


def test_one_row_per_model_with_samples_and_bits(models, tmp_path):
    eps, mean = models
    report = run(["--models", f"{eps}:eps", f"{mean}:mean", "--steps", "3"], tmp_path, "both")
    rows = report["rows"]
    assert [(r["label"], r["target"]) for r in rows] == [("eps", "epsilon"), ("mean", "mean")]
    for r in rows:
        assert r["unguided_nfe_per_image"] == 3 and r["guided_nfe_per_image"] == 6  # w 3: two branches per step
        assert 0 <= r["guided_accuracy"] <= 1 and r["guided_fd_ratio_matched"] > 0
        assert r["bits_per_dim"] > 0 and r["parameters"] > 0
    # the same weights read as epsilon or as a mean are different models: their bounds differ
    assert rows[0]["bits_per_dim"] != pytest.approx(rows[1]["bits_per_dim"], rel=1e-3)
    assert "| eps | epsilon |" in (tmp_path / "both.md").read_text()


def test_merge_joins_parallel_runs_and_refuses_mismatches(models, tmp_path, capsys):
    eps, mean = models
    a = run(["--models", f"{eps}:eps"], tmp_path, "a")
    b = run(["--models", f"{mean}:mean"], tmp_path, "b")
    merged = run(["--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json")], tmp_path, "merged")
    assert merged["rows"] == a["rows"] + b["rows"] and merged["merged_from"] == 2
    assert [r["trained_steps"] for r in merged["rows"]] == [None, None]  # saved, not trained: no summary
    run(["--models", f"{mean}:other", "--guidance-scale", "2"], tmp_path, "c")
    for pair, message in ((("a", "c"), "differ in ['guidance_scale']"), (("a", "a"), "labels repeat")):
        paths = [str(tmp_path / f"{p}.json") for p in pair]
        assert main(["--out-dir", str(tmp_path), "--name", "bad", "--merge", *paths]) == 2
        assert not (tmp_path / "bad.json").exists()
        assert message in capsys.readouterr().err


def test_bad_models_are_refused_before_sampling(tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["--quick", "--models", str(tmp_path / "missing"), "--out-dir", str(out)]) == 2
    assert "--models" in capsys.readouterr().err and not (out / "prediction_targets.json").exists()
    with pytest.raises(SystemExit):
        main(["--quick", "--out-dir", str(out)])  # neither --models nor --merge


def test_trained_steps_come_from_the_training_summary(tmp_path):
    from lib.targets_benchmark import trained_steps

    assert trained_steps(tmp_path) is None
    (tmp_path / "training_summary.json").write_text('{"task": "cfg", "global_step": 1500}')
    assert trained_steps(tmp_path) == 1500
