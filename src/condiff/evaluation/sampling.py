"""Generating balanced, labelled, timed samples with a pipeline: the one generation loop behind `evaluate_pipeline`,
the guidance sweep and the benchmarks.

Conventions: labels cycle 0, 1, ..., K-1, 0, 1, ... (every batch mixes the classes) and batch b draws its noise
from `torch.Generator().manual_seed(seed + b)`, so two runs with the same seed start from the same noise. Only the
generation is timed (after an optional untimed warm-up call), between two device synchronisations.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from condiff.pipelines.checks import unet_sample_size

__all__ = [
    "Samples",
    "balanced_labels",
    "generate_samples",
    "timed_generation",
    "nfe_per_image",
    "default_device",
    "pipeline_device",
    "synchronize",
    "default_num_inference_steps",
    "can_evaluate",
]

# sample(labels of one batch, its generator) -> (images [n, C, H, W] or [n, H, W, C], network evaluations per image)
BatchSampler = Callable[[np.ndarray, torch.Generator], tuple[torch.Tensor, float | None]]


@dataclass
class Samples:
    """Images [N, C, H, W] in [0, 1] (CPU float32) generated for `labels` [N], and how long that took."""

    images: torch.Tensor
    labels: np.ndarray
    wall_seconds: float
    nfe_per_image: float | None
    batch_size: int

    @property
    def images_per_second(self) -> float:
        return len(self.labels) / self.wall_seconds if self.wall_seconds > 0 else float("inf")

    def first_of_each_class(self) -> list[torch.Tensor]:
        """One image per class (the first generated), in class order."""
        return [self.images[int(np.flatnonzero(self.labels == c)[0])] for c in np.unique(self.labels)]


def default_device() -> str:
    """ "cuda" when available, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def pipeline_device(pipe: Any) -> torch.device:
    """The device a pipeline runs on (CPU for objects that do not say)."""
    return torch.device(getattr(pipe, "device", "cpu"))


def synchronize(device: str | torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings are honest (a no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def default_num_inference_steps(pipe: Any) -> int | None:
    """The number of steps `pipe(...)` uses when none is given."""
    configured = getattr(getattr(pipe, "config", None), "default_num_inference_steps", None)
    if configured is not None:
        return int(configured)
    param = inspect.signature(pipe.__call__).parameters.get("num_inference_steps")
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def can_evaluate(pipe: Any, classifier: Any = None) -> bool:
    """Whether the MNIST evaluator can score this pipeline's images (1 x 28 x 28, as many classes)."""
    cfg = pipe.unet.config
    num_classes = classifier.config.num_classes if classifier is not None else 10
    return cfg.in_channels == 1 and unet_sample_size(cfg) == (28, 28) and pipe.num_classes == num_classes


def balanced_labels(num_classes: int, num_per_class: int) -> np.ndarray:
    """0, 1, ..., K-1, 0, 1, ... (`num_per_class` rounds), so every batch mixes the classes."""
    if num_per_class < 1 or num_classes < 1:
        raise ValueError(f"num_per_class and num_classes must be >= 1, got {num_per_class} and {num_classes}")
    return np.tile(np.arange(num_classes), num_per_class)


def nfe_per_image(output: Any) -> float | None:
    """Network evaluations per image of the call that returned `output` (condiff pipelines report it; None for
    others)."""
    return getattr(output, "nfe_per_image", None)


def _to_cpu_nchw(images: Any) -> torch.Tensor:
    x = torch.as_tensor(images).detach().to("cpu", torch.float32)
    if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):  # channels-last output
        x = x.permute(0, 3, 1, 2)
    return x


def timed_generation(
    sample: BatchSampler,
    labels: np.ndarray,
    batch_size: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
    warmup: Callable[[np.ndarray], Any] | None = None,
) -> Samples:
    """Run `sample` on `labels` in batches of `batch_size` (batch b with generator seed `seed + b`), timed from the
    first call to the end of the last; NFE per image is the image-weighted mean (None unless every batch says).
    `warmup`, if given, is called untimed first with the first batch's labels."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if warmup is not None:
        warmup(labels[:batch_size])
    starts = range(0, len(labels), batch_size)
    chunks, nfe = [], []
    synchronize(device)
    start = time.perf_counter()
    for b, i in enumerate(starts):
        images, n = sample(labels[i : i + batch_size], torch.Generator().manual_seed(seed + b))
        chunks.append(images)
        nfe.append(n)
    synchronize(device)
    wall = time.perf_counter() - start
    sizes = [min(batch_size, len(labels) - i) for i in starts]
    known = all(n is not None for n in nfe)
    nfe_mean = float(np.average(nfe, weights=sizes)) if known and nfe else None
    images = torch.cat([_to_cpu_nchw(c) for c in chunks])
    return Samples(images, labels, wall, nfe_mean, min(batch_size, len(labels)))


@contextlib.contextmanager
def _progress_bar(pipe: Any, show: bool) -> Iterator[None]:
    """Hide the pipeline's progress bar (unless `show`) and restore its settings afterwards."""
    old = dict(getattr(pipe, "_progress_bar_config", {}) or {})
    if not show and hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    try:
        yield
    finally:
        if hasattr(pipe, "_progress_bar_config"):
            pipe._progress_bar_config = old


def generate_samples(
    pipe: Any,
    num_per_class: int,
    batch_size: int = 250,
    seed: int = 0,
    num_classes: int | None = None,
    warmup: bool = True,
    show_progress: bool = False,
    **call_kwargs: Any,
) -> Samples:
    """Generate `num_per_class` images of every class (default: `pipe.num_classes`) with
    `pipe(label=[...], generator=..., output_type="pt", **call_kwargs)`, timed (generation only).

    `warmup` makes one untimed 2-step call at the first batch's shape first (first-call allocations, kernel
    selection). NFE per image comes from each call (`nfe_per_image`).
    """
    labels = balanced_labels(num_classes or pipe.num_classes, num_per_class)

    def sample(batch_labels: np.ndarray, generator: torch.Generator) -> tuple[torch.Tensor, float | None]:
        out = pipe(label=batch_labels.tolist(), generator=generator, output_type="pt", **call_kwargs)
        return out.images, nfe_per_image(out)

    def warm(batch_labels: np.ndarray) -> None:
        pipe(label=batch_labels.tolist(), output_type="pt", **(call_kwargs | {"num_inference_steps": 2}))

    with _progress_bar(pipe, show_progress):
        return timed_generation(sample, labels, batch_size, seed, pipeline_device(pipe), warm if warmup else None)
