"""Tests of condiff.evaluation.metrics, evaluate_pipeline and the shipped evaluator (fast: the evaluator is ~0.5M
parameters)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from condiff.data import load_mnist_arrays, uint8_to_model_tensor
from condiff.evaluation import (
    classifier_features_and_logits,
    conditional_accuracy,
    evaluate_images,
    evaluate_pipeline,
    frechet_distance,
    guidance_misses,
    metrics,
    real_features,
    real_vs_real_floor,
)
from condiff.evaluator import MnistClassifier, default_evaluator_path, load_evaluator


def _whitened(n: int, d: int, seed: int) -> np.ndarray:
    """Samples with sample mean exactly 0 and (unbiased) sample covariance exactly I."""
    x = np.random.default_rng(seed).normal(size=(n, d))
    x -= x.mean(0)
    cov = np.cov(x, rowvar=False)
    return x @ np.linalg.inv(np.linalg.cholesky(cov)).T


@pytest.fixture(scope="module")
def classifier() -> MnistClassifier:
    return metrics.default_classifier()


@pytest.fixture(scope="module")
def test_split() -> tuple[np.ndarray, np.ndarray]:
    return load_mnist_arrays("test")


@pytest.fixture(scope="module")
def recorded_metrics() -> dict:
    return json.loads((default_evaluator_path() / "metrics.json").read_text())


def _to_unit(images_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images_u8).float()[:, None] / 255.0


# --- Frechet distance -------------------------------------------------------------------------------------


def test_frechet_distance_of_a_set_with_itself_is_zero():
    a = np.random.default_rng(0).normal(size=(500, 32)) @ np.random.default_rng(1).normal(size=(32, 32))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6 * np.trace(np.cov(a, rowvar=False)))


def test_frechet_distance_of_a_mean_shift_is_the_squared_shift():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(2000, 64)) @ rng.normal(size=(64, 64)) / 8  # correlated features
    d = rng.normal(size=64) * 0.5
    # Identical covariances, means differ by d: FD = ||d||^2 exactly.
    assert frechet_distance(a, a + d) == pytest.approx(float(d @ d), rel=1e-6)


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    a = _whitened(3000, 16, seed=3)  # exact moments: mean 0, covariance I
    sigma = np.linspace(0.5, 2.0, 16)
    mu = np.linspace(-1.0, 1.0, 16)
    b = _whitened(1500, 16, seed=4) * sigma + mu  # mean mu, covariance diag(sigma^2)
    expected = float(mu @ mu + np.sum((1.0 - sigma) ** 2))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_is_symmetric_and_positive():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(800, 24))
    b = rng.normal(size=(600, 24)) * 1.3 + 0.2
    ab, ba = frechet_distance(a, b), frechet_distance(b, a)
    assert ab > 0.5
    assert ab == pytest.approx(ba, rel=1e-8)


def test_frechet_distance_rejects_mismatched_feature_sizes():
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(np.zeros((10, 4)), np.zeros((10, 5)))


# --- evaluator ----------------------------------------------------------------------------------------------


def test_shipped_evaluator_is_small_and_reproduces_its_recorded_test_accuracy(test_split, recorded_metrics):
    model = load_evaluator()  # fresh load: checks the safetensors + config round trip
    assert not model.training
    num_params = sum(p.numel() for p in model.parameters())
    assert num_params == recorded_metrics["num_parameters"]
    assert num_params < 1_000_000
    images, labels = test_split
    feats, logits = classifier_features_and_logits(model, uint8_to_model_tensor(images))
    assert feats.shape == (1000, 128) and logits.shape == (1000, 10)
    acc = conditional_accuracy(logits, labels)
    assert acc == pytest.approx(recorded_metrics["test_accuracy"], abs=1e-12)
    assert acc >= 0.985
    # Predictions given as class ids score the same as logits.
    assert conditional_accuracy(logits.argmax(1), labels) == acc


def test_conditional_accuracy_counts_matches():
    logits = np.eye(4)[[0, 1, 2, 3, 0]]
    assert conditional_accuracy(logits, [0, 1, 2, 0, 0]) == pytest.approx(0.8)
    assert conditional_accuracy(torch.tensor([1, 1]), torch.tensor([1, 0])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="labels"):
        conditional_accuracy(logits, [0, 1])


def test_real_features_are_cached_per_split_and_classifier(classifier):
    first = real_features("test", classifier)
    assert real_features("test", classifier) is first
    assert real_features("train", classifier).shape == (9000, 128)


def test_real_vs_real_floor_is_positive_finite_and_small(classifier, test_split):
    floor = real_vs_real_floor(classifier)
    assert math.isfinite(floor) and floor > 0
    # Far below what uniform noise scores against the test split.
    noise_feats, _ = classifier_features_and_logits(classifier, torch.rand(1000, 1, 28, 28) * 2 - 1)
    assert frechet_distance(noise_feats, real_features("test", classifier)) > 50 * floor


# --- evaluate_images ----------------------------------------------------------------------------------------


def test_evaluate_images_on_the_test_split_itself(classifier, test_split, recorded_metrics):
    images, labels = test_split
    result = evaluate_images(_to_unit(images), labels, classifier=classifier)
    assert result["num_samples"] == 1000
    assert result["accuracy"] == pytest.approx(recorded_metrics["test_accuracy"], abs=1e-12)
    assert result["frechet_distance"] == pytest.approx(0.0, abs=1e-6)  # the reference set itself
    assert result["fd_ratio"] == pytest.approx(0.0, abs=1e-6)
    # The same images given in model space score identically.
    again = evaluate_images(uint8_to_model_tensor(images), labels, classifier=classifier, value_range=(-1, 1))
    assert again["accuracy"] == result["accuracy"]
    assert again["frechet_distance"] == pytest.approx(result["frechet_distance"], abs=1e-6)


def test_evaluate_images_on_held_out_real_images_scores_like_the_floor(classifier):
    images, labels = load_mnist_arrays("train")
    result = evaluate_images(_to_unit(images[:1000]), labels[:1000], classifier=classifier)
    assert result["accuracy"] >= 0.985
    assert result["floor"] == pytest.approx(real_vs_real_floor(classifier))
    # Measured: fd_ratio 1.9 (1000 rows score worse than the 9000-row floor: small-sample bias),
    # fd_ratio_matched 1.09 (against 1000-row real subsets).
    assert 0.5 < result["fd_ratio"] < 3.5
    assert 0.5 < result["fd_ratio_matched"] < 2.0
    assert sorted(result["per_class_accuracy"]) == list(range(10))
    # Blurring the digits is clearly detected by the Frechet distance.
    blurred = torch.nn.functional.avg_pool2d(_to_unit(images[:1000]), 3, 1, 1)
    assert evaluate_images(blurred, labels[:1000], classifier=classifier)["fd_ratio"] > 3 * result["fd_ratio"]


def test_evaluate_images_rejects_mismatched_lengths(classifier, test_split):
    images, labels = test_split
    with pytest.raises(ValueError, match="labels"):
        evaluate_images(_to_unit(images[:10]), labels[:9], classifier=classifier)


def test_evaluate_images_rejects_images_outside_value_range(classifier, test_split):
    images, labels = test_split
    with pytest.raises(ValueError, match="value_range"):
        evaluate_images(uint8_to_model_tensor(images[:10]), labels[:10], classifier=classifier)  # [-1, 1]
    with pytest.raises(ValueError, match=r"\[N, 1, 28, 28\]"):
        evaluate_images(_to_unit(images[:10])[:, 0], labels[:10], classifier=classifier)


# --- evaluate_pipeline --------------------------------------------------------------------------------------


class _RealImagePipeline:
    """Stands in for a conditional pipeline: returns real test images of the requested classes."""

    def __init__(self):
        images, labels = load_mnist_arrays("test")
        self.by_class = {c: _to_unit(images[labels == c]) for c in range(10)}
        self.scheduler = SimpleNamespace()
        self.calls: list[dict] = []

    def __call__(self, label, generator, output_type, **kwargs):
        call = {"label": list(label), "seed": generator.initial_seed(), "output_type": output_type}
        self.calls.append({**call, **kwargs})
        counts: dict[int, int] = {}
        out = []
        for c in label:
            i = counts.get(c, 0) + 10 * len(self.calls)  # different rows per call
            counts[c] = counts.get(c, 0) + 1
            out.append(self.by_class[c][i % len(self.by_class[c])])
        return SimpleNamespace(images=torch.stack(out), nfe_per_image=7.0)


def test_evaluate_pipeline_calls_the_pipeline_and_reports_everything(classifier):
    pipe = _RealImagePipeline()
    result = evaluate_pipeline(pipe, guidance_scale=2.5, num_per_class=30, batch_size=120, seed=11)
    assert [len(c["label"]) for c in pipe.calls] == [120, 120, 60]
    assert [c["seed"] for c in pipe.calls] == [11, 12, 13]
    assert all(c["output_type"] == "pt" and c["guidance_scale"] == 2.5 for c in pipe.calls)
    assert all("num_inference_steps" not in c for c in pipe.calls)  # omitted when None
    assert sum(c["label"].count(3) for c in pipe.calls) == 30
    assert result["num_samples"] == 300
    assert result["accuracy"] >= 0.97  # real digits
    assert result["nfe_per_image"] == 7.0
    assert result["sampler"] == "SimpleNamespace"
    assert result["guidance_scale"] == 2.5 and result["num_inference_steps"] is None
    assert result["wall_seconds"] > 0
    assert result["images_per_second"] == pytest.approx(300 / result["wall_seconds"])
    assert math.isfinite(result["fd_ratio"]) and result["fd_ratio"] > 0

    evaluate_pipeline(pipe, num_per_class=1, num_inference_steps=4, batch_size=10, seed=0, eta=0.5)
    assert pipe.calls[-1]["num_inference_steps"] == 4 and pipe.calls[-1]["eta"] == 0.5


def test_evaluate_images_rejects_non_finite_images():
    images = torch.full((4, 1, 28, 28), 0.5)
    images[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        metrics.evaluate_images(images, [0, 1, 2, 3])


class _FixedGuide(torch.nn.Module):
    """A stand-in noise-aware classifier that predicts a fixed class per image, and checks it is read at t = 0."""

    def __init__(self, predictions: np.ndarray):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.predictions, self.seen = torch.as_tensor(predictions), 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.shape == (len(x),) and bool((t == 0).all())
        rows = self.predictions[self.seen : self.seen + len(x)]
        self.seen += len(x)
        return torch.nn.functional.one_hot(rows, 10).float()


def test_guidance_misses_splits_the_evaluators_misses_by_the_guiding_classifiers_verdict(classifier, test_split):
    images, true = test_split[0][:300], test_split[1][:300].astype(np.int64)
    requested = true.copy()
    requested[:20] = (true[:20] + 1) % 10  # 20 "samples" that show another digit than the one asked for
    guide = requested.copy()
    guide[:8] = (requested[:8] + 5) % 10  # the guiding classifier rejects 8 of them, is fooled by the other 12
    evaluator = classifier_features_and_logits(classifier, uint8_to_model_tensor(images))[1].argmax(1)
    natural = np.flatnonzero(evaluator[20:] != true[20:]) + 20  # the evaluator's own mistakes on real digits
    result = guidance_misses(_to_unit(images), requested, _FixedGuide(guide), classifier=classifier)
    assert result["missed_indices"] == list(range(20)) + natural.tolist()
    assert result["misses"] == 20 + len(natural) and result["guide_rejects"] == 8
    assert result["guide_fooled"] == 12 + len(natural)
    assert result["evaluator_accuracy"] == pytest.approx(1 - result["misses"] / 300)
    assert result["guide_accuracy"] == pytest.approx(292 / 300)
    with pytest.raises(ValueError, match="labels has 299 entries"):
        guidance_misses(_to_unit(images), requested[:299], _FixedGuide(guide), classifier=classifier)
