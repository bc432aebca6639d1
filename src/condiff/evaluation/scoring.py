"""Scoring generated samples: `evaluate_pipeline` (generate a balanced set with a pipeline and score it, what
`condiff evaluate` runs) and the per-row fields the sweep and the benchmarks report."""

from __future__ import annotations

from typing import Any

import torch

from condiff.evaluation.metrics import (
    classifier_features_and_logits,
    default_classifier,
    evaluate_images,
    real_diversity,
    within_class_diversity,
)
from condiff.evaluation.sampling import Samples, generate_samples
from condiff.evaluator import MnistClassifier

__all__ = ["evaluate_pipeline", "score_samples", "timing_fields", "metric_fields", "empty_metrics", "METRIC_KEYS"]

METRIC_KEYS = ("accuracy", "frechet_distance", "floor_matched", "fd_ratio_matched", "diversity_relative")


def evaluate_pipeline(
    pipe: Any,
    guidance_scale: float | None = None,
    num_per_class: int = 100,
    num_inference_steps: int | None = None,
    batch_size: int = 250,
    seed: int = 0,
    classifier: MnistClassifier | None = None,
    num_classes: int = 10,
    show_progress: bool = False,
    **call_kwargs: Any,
) -> dict[str, Any]:
    """Generate `num_per_class` images of each class 0..num_classes-1 with `pipe` and score them.

    Calls `pipe(label=[...], guidance_scale=..., num_inference_steps=..., generator=
    torch.Generator().manual_seed(seed + batch_index), output_type="pt", **call_kwargs).images` per batch
    (`generate_samples`, no warm-up). Returns `evaluate_images`' dict plus guidance_scale, num_inference_steps,
    sampler, nfe_per_image (None when the pipeline does not report it), wall_seconds, images_per_second
    (generation only, scoring excluded) and seed. Non-finite images raise a ValueError.
    """
    kwargs = dict(call_kwargs)
    if guidance_scale is not None:  # None: the pipeline's own default (e.g. its `default_guidance_scale`)
        kwargs["guidance_scale"] = guidance_scale
    if num_inference_steps is not None:
        kwargs["num_inference_steps"] = num_inference_steps
    samples = generate_samples(
        pipe,
        num_per_class,
        batch_size,
        seed,
        num_classes=num_classes,
        warmup=False,
        show_progress=show_progress,
        **kwargs,
    )
    result = evaluate_images(samples.images, samples.labels, classifier=classifier, value_range=(0, 1))
    scheduler = getattr(pipe, "scheduler", None)
    result.update(
        guidance_scale=getattr(pipe, "default_guidance_scale", None) if guidance_scale is None else guidance_scale,
        num_inference_steps=num_inference_steps,
        sampler=scheduler.__class__.__name__ if scheduler is not None else None,
        nfe_per_image=samples.nfe_per_image,
        wall_seconds=samples.wall_seconds,
        images_per_second=samples.images_per_second,
        seed=seed,
    )
    return result


def score_samples(samples: Samples, classifier: MnistClassifier | None = None) -> dict[str, Any]:
    """Conditional accuracy, Frechet distance vs the test split (with floors), and within-class diversity
    relative to the real test split's, of samples in [0, 1]. If any image holds NaN or inf (a diverged sampler),
    nothing is scored: `nonfinite_images` counts them and the metrics are None."""
    classifier = classifier if classifier is not None else default_classifier()
    nonfinite = int((~torch.isfinite(samples.images).flatten(1).all(1)).sum())
    if nonfinite:  # a sampler that diverged: report it rather than score NaNs
        return {"num_samples": 0, "nonfinite_images": nonfinite, "per_class_accuracy": None, "diversity": None}
    result = evaluate_images(samples.images, samples.labels, classifier=classifier, value_range=(0, 1))
    result["nonfinite_images"] = 0
    feats, _ = classifier_features_and_logits(classifier, samples.images * 2 - 1)
    diversity = within_class_diversity(feats, samples.labels)
    result["diversity"] = diversity
    result["diversity_real"] = real_diversity(classifier)
    result["diversity_relative"] = None if diversity is None else diversity / result["diversity_real"]
    return result


def timing_fields(samples: Samples) -> dict[str, Any]:
    """The speed columns of a report row."""
    return {
        "num_images": int(len(samples.labels)),
        "batch_size": samples.batch_size,
        "nfe_per_image": samples.nfe_per_image,
        "wall_seconds": samples.wall_seconds,
        "images_per_second": samples.images_per_second,
    }


def empty_metrics() -> dict[str, Any]:
    """The quality columns of a row that was not scored."""
    return {k: None for k in METRIC_KEYS} | {"num_scored": 0, "nonfinite_images": None}


def metric_fields(scores: dict[str, Any]) -> dict[str, Any]:
    """The quality columns of a report row, from `score_samples`."""
    out = {k: scores.get(k) for k in METRIC_KEYS}
    out["num_scored"] = scores["num_samples"]
    out["nonfinite_images"] = scores.get("nonfinite_images")
    return out
