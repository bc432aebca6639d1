"""benchmarks/predictor_corrector.py: equal-NFE pairs and an end-to-end run on a tiny MNIST-shaped model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from test_sweep import tiny_mnist_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from lib.corrector_benchmark import main, pc_settings  # noqa: E402


def test_pairs_spend_the_same_evaluations():
    assert pc_settings([20, 50], 1) == [(20, 0), (10, 1), (50, 0), (25, 1)]
    assert pc_settings([20, 9], 2) == [(20, 0), (9, 0), (3, 2)]  # 20 is not 3 x an integer: no corrector row


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-mnist")
    tiny_mnist_pipeline().save_pretrained(path)
    return path


def test_end_to_end_counts_the_corrector_in_nfe(tiny_dir, tmp_path):
    out = tmp_path / "res"
    argv = ["--quick", "--model", str(tiny_dir), "--samplers", "ddim", "--budgets", "4", "6", "--out-dir", str(out)]
    assert main(argv) == 0
    rows = json.loads((out / "predictor_corrector.json").read_text())["rows"]
    assert [(r["predictor_steps"], r["corrector_steps"]) for r in rows] == [(4, 0), (2, 1), (6, 0), (3, 1)]
    assert [r["nfe_per_image"] for r in rows] == [4, 4, 6, 6]  # w = 1: one evaluation per predictor or corrector step
    assert rows[0]["fd_ratio_matched"] != rows[1]["fd_ratio_matched"]  # the corrector changed the samples
    assert "| ddim | 2 | 1 | 4 |" in (out / "predictor_corrector.md").read_text()
