"""Measurement tooling shared by the benchmarks (issue 3): generating labelled samples, scoring them (accuracy,
Frechet distance, within-class diversity), the textbook reference sampler, the sampler speed/quality benchmark,
machine descriptions and report writing (JSON + Markdown + PNG).

The guidance sweep lives in `condiff.sweep`, FLOPs and training throughput in `condiff.efficiency`; the
`benchmarks/*.py` scripts are thin wrappers over the `*_main` functions here and there.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

from condiff.pipelines.guidance import cfg_combine

__all__ = [
    "machine_info",
    "default_device",
    "load_pipeline",
    "can_evaluate",
    "default_num_inference_steps",
    "Samples",
    "generate_samples",
    "within_class_diversity",
    "real_diversity",
    "score_samples",
    "textbook_scheduler",
    "textbook_sample",
    "generate_textbook_samples",
    "FAST_SAMPLERS",
    "FAST_STEPS",
    "run_sampler_benchmark",
    "sampler_markdown",
    "plot_sampler_benchmark",
    "write_report",
    "markdown_table",
    "sampler_main",
]

Log = Callable[[str], None]
FAST_SAMPLERS = ("ddim", "dpm++2m", "unipc", "euler")
FAST_STEPS = (5, 10, 15, 25)


# --- machine, device, pipeline ------------------------------------------------------------------------------


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def synchronize(device: str | torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings are honest (a no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def machine_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """What the numbers were measured on: platform, CPU count, torch threads, load, library versions, GPU."""
    import diffusers

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "device": str(device),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        info["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
    return info


def load_pipeline(model: str | None = None, scheduler: str | None = None, device: str | None = None):
    """A saved `ClassConditionalDDPMPipeline` (default: the shipped model), optionally with another scheduler,
    on `device` (default: CUDA when available), with its progress bar off."""
    from condiff.cli import load_pipeline as _load

    pipe = _load(model, scheduler)
    pipe.to(device or default_device())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_device(pipe) -> torch.device:
    return next(pipe.unet.parameters()).device


def can_evaluate(pipe, classifier=None) -> bool:
    """Whether the MNIST evaluator can score this pipeline's images (1 x 28 x 28, as many classes)."""
    cfg = pipe.unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, (tuple, list)) else (cfg.sample_size,) * 2
    num_classes = classifier.config.num_classes if classifier is not None else 10
    return cfg.in_channels == 1 and tuple(size) == (28, 28) and pipe.num_classes == num_classes


def default_num_inference_steps(pipe) -> int | None:
    """The number of steps `pipe(...)` uses when none is given."""
    configured = getattr(getattr(pipe, "config", None), "default_num_inference_steps", None)
    if configured is not None:
        return int(configured)
    param = inspect.signature(pipe.__call__).parameters.get("num_inference_steps")
    return None if param is None or param.default is inspect.Parameter.empty else param.default


# --- generating and scoring -----------------------------------------------------------------------------------


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


def balanced_labels(num_classes: int, num_per_class: int) -> np.ndarray:
    """0, 1, ..., K-1, 0, 1, ... (`num_per_class` rounds), so every batch mixes the classes."""
    if num_per_class < 1 or num_classes < 1:
        raise ValueError(f"num_per_class and num_classes must be >= 1, got {num_per_class} and {num_classes}")
    return np.tile(np.arange(num_classes), num_per_class)


def generate_samples(
    pipe,
    num_per_class: int,
    batch_size: int = 250,
    seed: int = 0,
    num_classes: int | None = None,
    warmup: bool = True,
    **call_kwargs: Any,
) -> Samples:
    """Generate `num_per_class` images of every class with `pipe(...)`, timed (generation only).

    Same conventions as `condiff.metrics.evaluate_pipeline`: labels cycle through the classes, batch b uses
    `torch.Generator().manual_seed(seed + b)`, so two calls with the same seed start from the same noise.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    labels = balanced_labels(num_classes or pipe.num_classes, num_per_class)
    device = pipeline_device(pipe)
    if warmup:  # one untimed 2-step call at the first batch's shape (first-call allocations, kernel selection)
        pipe(label=labels[:batch_size].tolist(), output_type="pt", **(call_kwargs | {"num_inference_steps": 2}))
    chunks, nfe = [], []
    synchronize(device)
    start = time.perf_counter()
    for b, i in enumerate(range(0, len(labels), batch_size)):
        out = pipe(
            label=labels[i : i + batch_size].tolist(),
            generator=torch.Generator().manual_seed(seed + b),
            output_type="pt",
            **call_kwargs,
        )
        chunks.append(out.images)
        nfe.append(getattr(pipe, "last_nfe_per_image", None))
    synchronize(device)
    wall = time.perf_counter() - start
    images = torch.cat([torch.as_tensor(c).detach().to("cpu", torch.float32) for c in chunks])
    if images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.permute(0, 3, 1, 2)
    known = [n for n in nfe if n is not None]
    sizes = [min(batch_size, len(labels) - i) for i in range(0, len(labels), batch_size)]
    nfe_mean = float(np.average(known, weights=sizes[: len(known)])) if len(known) == len(sizes) else None
    return Samples(images, labels, wall, nfe_mean, min(batch_size, len(labels)))


def _pairwise_mean(features: np.ndarray) -> float:
    from scipy.spatial.distance import pdist

    return float(pdist(features.astype(np.float64)).mean())


def within_class_diversity(features: np.ndarray, labels: Sequence[int] | np.ndarray) -> float | None:
    """Mean pairwise Euclidean feature distance within each class, averaged over the classes that have at
    least two rows (None when none has). Unbiased in the sample size: a mean over pairs."""
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(features):
        raise ValueError(f"labels has {len(labels)} entries but features has {len(features)} rows")
    per_class = [_pairwise_mean(features[labels == c]) for c in np.unique(labels) if (labels == c).sum() >= 2]
    return float(np.mean(per_class)) if per_class else None


_REAL_DIVERSITY: dict[int, float] = {}


def real_diversity(classifier=None) -> float:
    """`within_class_diversity` of the real test split (true labels), the reference for generated sets."""
    from condiff.data import load_mnist_arrays
    from condiff.metrics import default_classifier, real_features

    classifier = classifier if classifier is not None else default_classifier()
    key = id(classifier)
    if key not in _REAL_DIVERSITY:
        _images, labels = load_mnist_arrays("test")
        _REAL_DIVERSITY[key] = within_class_diversity(real_features("test", classifier), labels)
    return _REAL_DIVERSITY[key]


def score_samples(samples: Samples, classifier=None) -> dict[str, Any]:
    """Conditional accuracy, Frechet distance vs the test split (with floors), and within-class diversity
    relative to the real test split's, of samples in [0, 1]. If any image holds NaN or inf (a diverged sampler),
    nothing is scored: `nonfinite_images` counts them and the metrics are None."""
    from condiff.metrics import classifier_features_and_logits, default_classifier, evaluate_images

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
    return {
        "num_images": int(len(samples.labels)),
        "batch_size": samples.batch_size,
        "nfe_per_image": samples.nfe_per_image,
        "wall_seconds": samples.wall_seconds,
        "images_per_second": samples.images_per_second,
    }


METRIC_KEYS = ("accuracy", "frechet_distance", "floor_matched", "fd_ratio_matched", "diversity_relative")


def empty_metrics() -> dict[str, Any]:
    return {k: None for k in METRIC_KEYS} | {"num_scored": 0, "nonfinite_images": None}


def metric_fields(scores: dict[str, Any]) -> dict[str, Any]:
    out = {k: scores.get(k) for k in METRIC_KEYS}
    out["num_scored"] = scores["num_samples"]
    out["nonfinite_images"] = scores.get("nonfinite_images")
    return out


# --- the textbook sampler (DESIGN.md section 6) ---------------------------------------------------------------


def textbook_scheduler(config) -> DDPMScheduler:
    """The DDPM scheduler of the course notes' sampler, from a pipeline's scheduler config (training schedule)."""
    return DDPMScheduler.from_config(config)


@torch.inference_mode()
def textbook_sample(
    unet,
    ddpm_scheduler: DDPMScheduler,
    labels: Sequence[int] | torch.Tensor,
    guidance_scale: float = 3.0,
    generator: torch.Generator | None = None,
    null_class: int | None = None,
    max_steps: int | None = None,
) -> tuple[torch.Tensor, float]:
    """The course notes' CFG sampler: every one of the scheduler's training timesteps (1000 DDPM steps), and per
    step a forward pass with the labels and a second, separate one with the null class, combined with
    `cfg_combine` (both passes run at every scale, also 0 and 1).

    Returns (images [N, C, H, W] in [0, 1] on the CPU, network evaluations per image). `max_steps` stops after
    that many steps (speed measurements only: the result is then not a finished image).
    """
    device = next(unet.parameters()).device
    cfg = unet.config
    null_class = cfg.num_class_embeds - 1 if null_class is None else null_class
    cond = torch.as_tensor(labels, dtype=torch.long, device=device).reshape(-1)
    uncond = torch.full_like(cond, null_class)
    size = cfg.sample_size if isinstance(cfg.sample_size, (tuple, list)) else (cfg.sample_size,) * 2
    x = randn_tensor((len(cond), cfg.in_channels, *size), generator=generator, device=device, dtype=unet.dtype)
    ddpm_scheduler.set_timesteps(ddpm_scheduler.config.num_train_timesteps, device=device)
    x = x * ddpm_scheduler.init_noise_sigma
    forwards = 0
    for i, t in enumerate(ddpm_scheduler.timesteps):
        if max_steps is not None and i >= max_steps:
            break
        pred_cond = unet(x, t, class_labels=cond).sample
        pred_uncond = unet(x, t, class_labels=uncond).sample
        forwards += 2
        x = ddpm_scheduler.step(cfg_combine(pred_uncond, pred_cond, guidance_scale), t, x, generator=generator)
        x = x.prev_sample
    images = (x.float().cpu() / 2 + 0.5).clamp(0, 1)
    return images, float(forwards)


def generate_textbook_samples(
    pipe,
    num_images: int,
    guidance_scale: float = 3.0,
    batch_size: int = 250,
    seed: int = 0,
    max_steps: int | None = None,
    warmup: bool = True,
) -> Samples:
    """`num_images` textbook samples (labels cycling through the classes), timed like `generate_samples`."""
    num_classes = pipe.num_classes
    labels = balanced_labels(num_classes, math.ceil(num_images / num_classes))[:num_images]
    scheduler = textbook_scheduler(pipe.scheduler.config)
    device = pipeline_device(pipe)
    if warmup:  # one untimed step at the first batch's shape
        textbook_sample(
            pipe.unet, scheduler, labels[:batch_size], guidance_scale, null_class=pipe.null_class, max_steps=1
        )
    chunks, nfe = [], 0.0
    synchronize(device)
    start = time.perf_counter()
    for b, i in enumerate(range(0, len(labels), batch_size)):
        images, nfe = textbook_sample(
            pipe.unet,
            scheduler,
            labels[i : i + batch_size],
            guidance_scale,
            generator=torch.Generator().manual_seed(seed + b),
            null_class=pipe.null_class,
            max_steps=max_steps,
        )
        chunks.append(images)
    synchronize(device)
    wall = time.perf_counter() - start
    return Samples(torch.cat(chunks), labels, wall, nfe, min(batch_size, len(labels)))


# --- sampler speed and quality benchmark ----------------------------------------------------------------------


def run_sampler_benchmark(
    pipe,
    samplers: Sequence[str] = FAST_SAMPLERS,
    steps: Sequence[int] = FAST_STEPS,
    guidance_scale: float = 3.0,
    num_per_class: int = 100,
    batch_size: int = 250,
    textbook_speed_images: int | None = None,
    textbook_quality_per_class: int = 2,
    textbook_timed_steps: int | None = 50,
    textbook_batch_size: int | None = None,
    seed: int = 0,
    classifier=None,
    evaluate: bool | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """The textbook sampler against condiff's default path and each fast scheduler at each step count, in one
    run: images/s, NFE/image, conditional accuracy, Frechet distance (and floor-normalised ratio), diversity.

    - textbook speed: `textbook_speed_images` images (default: one batch) in batches of `textbook_batch_size`
      (default: `batch_size`, the same batch as the other samplers, so the ratio is not a batching effect). Only
      the first `textbook_timed_steps` of its 1000 steps are timed (None: all) and the time is extrapolated to
      all steps: every DDPM step does the same work. The report flags it (`extrapolated`, `timed_steps`).
    - textbook quality: `textbook_quality_per_class` images of each class, all steps, timed and scored (0 skips
      it); its own images/s is in the row's `quality_run`.
    - everything else: `num_per_class` images of each class in batches of `batch_size`, timed and scored.
    `evaluate` (default: when the evaluator fits the pipeline) turns the scoring off. Returns a JSON-able dict
    with `settings`, `machine`, `rows` (textbook first, then the default path, then the fast samplers) and
    `headline` (the default path's and the best images/s ratios to the textbook sampler).
    """
    from condiff.models import SAMPLERS, scheduler_for

    unknown = [s for s in samplers if s not in SAMPLERS]
    if unknown:
        raise ValueError(f"unknown sampler(s) {unknown}; choose from {sorted(SAMPLERS)}")
    if any(int(n) < 1 for n in steps):
        raise ValueError(f"steps must be >= 1, got {list(steps)}")
    textbook_batch_size = textbook_batch_size or batch_size
    textbook_speed_images = textbook_speed_images or textbook_batch_size
    if textbook_speed_images < 1 or textbook_batch_size < 1 or batch_size < 1:
        raise ValueError(
            f"batch sizes and textbook_speed_images must be >= 1, got {batch_size}, {textbook_batch_size} and "
            f"{textbook_speed_images}"
        )
    if textbook_quality_per_class < 0:
        raise ValueError(f"textbook_quality_per_class must be >= 0, got {textbook_quality_per_class}")
    if textbook_timed_steps is not None and textbook_timed_steps < 1:
        raise ValueError(f"textbook_timed_steps must be >= 1, got {textbook_timed_steps}")
    evaluate = can_evaluate(pipe, classifier) if evaluate is None else evaluate
    device = pipeline_device(pipe)
    pipe.set_progress_bar_config(disable=True)
    total_steps = textbook_scheduler(pipe.scheduler.config).config.num_train_timesteps
    rows: list[dict[str, Any]] = []

    timed_steps = min(textbook_timed_steps or total_steps, total_steps)
    log(f"textbook sampler: timing {textbook_speed_images} images over {timed_steps} of {total_steps} steps ...")
    speed = generate_textbook_samples(
        pipe, textbook_speed_images, guidance_scale, textbook_batch_size, seed, max_steps=timed_steps
    )
    wall = speed.wall_seconds * total_steps / timed_steps
    textbook = {
        "name": "textbook",
        "sampler": f"DDPMScheduler, 2 separate passes/step (course notes), {total_steps} steps",
        "num_inference_steps": total_steps,
        "num_images": textbook_speed_images,
        "batch_size": speed.batch_size,
        "nfe_per_image": 2.0 * total_steps,
        "wall_seconds": wall,
        "images_per_second": textbook_speed_images / wall,
        "timed_steps": timed_steps,
        "extrapolated": timed_steps < total_steps,
    } | empty_metrics()
    if textbook_quality_per_class > 0:
        n = textbook_quality_per_class * pipe.num_classes
        log(f"textbook sampler: {n} images for quality ...")
        quality = generate_textbook_samples(pipe, n, guidance_scale, textbook_batch_size, seed)
        textbook["quality_run"] = timing_fields(quality)
        if evaluate:
            textbook |= metric_fields(score_samples(quality, classifier))
    rows.append(textbook)

    # The default path runs with the model's own defaults (steps, guidance interval); the ablation row and the
    # fast samplers apply guidance at every step (plain CFG), so each measure's contribution shows.
    every_step = {"guidance_interval": (0.0, 1.0)}
    configs: list[tuple[str, str | None, int | None, dict]] = [("default", None, None, {})]
    if tuple(getattr(pipe.config, "default_guidance_interval", (0.0, 1.0))) != (0.0, 1.0):
        configs.append(("default, guidance at every step", None, None, every_step))
    configs += [(f"{name} {n}", name, int(n), every_step) for name in samplers for n in steps]
    original = pipe.scheduler
    try:
        for label, name, n, extra in configs:
            pipe.scheduler = scheduler_for(name, original.config) if name is not None else original
            kwargs = dict(extra) if n is None else {"num_inference_steps": n, **extra}
            samples = generate_samples(pipe, num_per_class, batch_size, seed, guidance_scale=guidance_scale, **kwargs)
            row = {
                "name": label,
                "sampler": type(pipe.scheduler).__name__,
                "num_inference_steps": n if n is not None else default_num_inference_steps(pipe),
                "guidance_interval": list(
                    extra.get("guidance_interval", getattr(pipe.config, "default_guidance_interval", (0.0, 1.0)))
                ),
            } | timing_fields(samples)
            row |= metric_fields(score_samples(samples, classifier)) if evaluate else empty_metrics()
            rows.append(row)
            log(_row_line(row))
    finally:
        pipe.scheduler = original

    base = textbook["images_per_second"]
    for row in rows:
        row["speedup_vs_textbook"] = row["images_per_second"] / base
    default = rows[1]
    best = max(rows[1:], key=lambda r: r["images_per_second"])
    headline = {
        "default_speedup_vs_textbook": default["speedup_vs_textbook"],
        "default_sampler": f"{default['sampler']} {default['num_inference_steps']} steps",
        "fastest": best["name"],
        "fastest_speedup_vs_textbook": best["speedup_vs_textbook"],
    }
    return {
        "benchmark": "samplers",
        "settings": {
            "guidance_scale": guidance_scale,
            "num_per_class": num_per_class,
            "num_images": num_per_class * pipe.num_classes,
            "batch_size": batch_size,
            "samplers": list(samplers),
            "steps": [int(n) for n in steps],
            "textbook_speed_images": textbook_speed_images,
            "textbook_batch_size": textbook_batch_size,
            "textbook_quality_images": textbook_quality_per_class * pipe.num_classes,
            "textbook_timed_steps": timed_steps,
            "textbook_scheduler": dict(textbook_scheduler(pipe.scheduler.config).config),
            "default_scheduler": type(original).__name__,
            "seed": seed,
            "evaluated": bool(evaluate),
            "unet_parameters": sum(p.numel() for p in pipe.unet.parameters()),
        },
        "machine": machine_info(device),
        "headline": headline,
        "rows": rows,
    }


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, spec)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A Markdown table: `columns` = (header, key, format spec); None shows as '-'."""
    head = "| " + " | ".join(h for h, _, _ in columns) + " |"
    rule = "|" + "|".join("---:" if spec else "---" for _, _, spec in columns) + "|"
    body = ["| " + " | ".join(_fmt(r.get(k), spec) for _, k, spec in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


SAMPLER_COLUMNS = (
    ("sampler", "name", ""),
    ("steps", "num_inference_steps", "d"),
    ("NFE/img", "nfe_per_image", ".0f"),
    ("img/s", "images_per_second", ".3g"),
    ("x textbook", "speedup_vs_textbook", ".3g"),
    ("images timed", "num_images", "d"),
    ("batch", "batch_size", "d"),
    ("images scored", "num_scored", "d"),
    ("accuracy", "accuracy", ".3f"),
    ("Frechet dist.", "frechet_distance", ".2f"),
    ("FD / real floor (same N)", "fd_ratio_matched", ".2f"),
    ("diversity (rel.)", "diversity_relative", ".2f"),
)


def _row_line(row: dict[str, Any]) -> str:
    acc, fd = row.get("accuracy"), row.get("frechet_distance")
    quality = "" if acc is None else f", accuracy {acc:.3f}, FD {fd:.2f}"
    if row.get("nonfinite_images"):
        quality += f", {row['nonfinite_images']} non-finite images (not scored)"
    return (
        f"{row['name']}: {row['images_per_second']:.3g} img/s, NFE/img {row['nfe_per_image']}, "
        f"{row['num_images']} images{quality}"
    )


def sampler_markdown(report: dict[str, Any]) -> str:
    s, h, m = report["settings"], report["headline"], report["machine"]
    textbook = report["rows"][0]
    lines = [
        "# Sampler speed and quality",
        "",
        f"Guidance scale {s['guidance_scale']}; {s['num_images']} images per sampler ({s['num_per_class']} per "
        f"class, batch {s['batch_size']}); machine: {m['platform']}, {m['cpu_count']} CPUs, "
        f"{m['torch_threads']} torch threads, device {m['device']}, 1-min load {m.get('load_average_1min')}.",
        "",
        f"**Headline: condiff's default path ({h['default_sampler']}) generates "
        f"{h['default_speedup_vs_textbook']:.3g}x as many images per second as the textbook sampler** "
        f"(fastest: {h['fastest']}, {h['fastest_speedup_vs_textbook']:.3g}x).",
        "",
        f"Textbook sampler: {textbook['sampler']}; speed from {textbook['num_images']} images in batches of "
        f"{textbook['batch_size']}"
        + (
            f", timed over the first {textbook['timed_steps']} steps and extrapolated to all (every DDPM step is "
            "the same work)"
            if textbook["extrapolated"]
            else ""
        )
        + f"; quality from {textbook['num_scored']} images "
        "(the Frechet distance grows at small N: compare the 'FD / real floor (same N)' column)"
        + _quality_run_note(textbook.get("quality_run"))
        + ".",
        "",
        markdown_table(report["rows"], SAMPLER_COLUMNS),
        "",
        *nonfinite_notes(report["rows"]),
    ]
    return "\n".join(lines)


def _quality_run_note(run: dict[str, Any] | None) -> str:
    if not run:
        return ""
    return (
        f"; the quality run, all steps, made {run['num_images']} images in {run['wall_seconds']:.1f} s "
        f"({run['images_per_second']:.3g} img/s at batch {run['batch_size']})"
    )


def nonfinite_notes(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown lines naming the rows whose sampler produced NaN/inf images (left unscored)."""
    bad = [f"{r.get('name') or r.get('label')} ({r['nonfinite_images']})" for r in rows if r.get("nonfinite_images")]
    return [f"Not scored, non-finite images (count): {', '.join(bad)}.", ""] if bad else []


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_sampler_benchmark(report: dict[str, Any], path: str | Path) -> Path:
    """Accuracy and floor-normalised Frechet distance against images/s (log), one line per scheduler."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    groups: dict[str, list[dict]] = {}
    for row in report["rows"]:
        groups.setdefault(row["name"].split(" ")[0], []).append(row)
    for ax, key, ylabel in (
        (axes[0], "accuracy", "conditional accuracy"),
        (axes[1], "fd_ratio_matched", "Frechet distance / real floor (same N)"),
    ):
        for name, rows in groups.items():
            pts = [(r["images_per_second"], r[key], r["num_inference_steps"]) for r in rows if r.get(key) is not None]
            if not pts:
                continue
            marker = {"textbook": "*", "default": "s"}.get(name, "o")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, ms=5 if marker == "o" else 11, label=name)
            for x, y, n in pts:
                ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
        textbook = report["rows"][0]
        ax.axvline(textbook["images_per_second"], color="gray", ls="--", lw=1, label="textbook sampler speed")
        ax.set_xscale("log")
        ax.set_xlabel("images / second (log)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    if not any(r.get("accuracy") is not None for r in report["rows"]):
        for ax in axes:
            ax.text(0.5, 0.5, "not scored (no evaluator for this pipeline)", ha="center", transform=ax.transAxes)
        for name, rows in groups.items():
            axes[0].plot([r["images_per_second"] for r in rows], [0.0] * len(rows), "o", label=name)
    axes[0].legend(fontsize=8)
    s = report["settings"]
    fig.suptitle(f"Samplers at guidance scale {s['guidance_scale']} (labels: steps)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --- reports ------------------------------------------------------------------------------------------------


def _json_default(obj: Any):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (Path, torch.device, torch.dtype)):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def _finite(obj: Any) -> Any:
    """Replace NaN/inf floats by None (JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_report(out_dir: str | Path, name: str, report: dict[str, Any], markdown: str) -> dict[str, Path]:
    """Write `<out_dir>/<name>.json` and `<name>.md`; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{name}.json", "md": out_dir / f"{name}.md"}
    paths["json"].write_text(json.dumps(_finite(report), indent=2, default=_json_default) + "\n")
    paths["md"].write_text(markdown)
    return paths


def check_name(name: str) -> str:
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ValueError(f"--name must be a plain file stem (no folders), got {name!r}")
    return name


def check_out_dir(path: str | Path) -> Path:
    """Create the output folder (with parents) and check it is writable, before any model work."""
    import tempfile

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ValueError(f"--out-dir {str(path)!r} cannot be written: {err.strerror or err}") from err
    return path


# --- command line ----------------------------------------------------------------------------------------------


def add_common_arguments(
    p: argparse.ArgumentParser, default_out_dir: str | Path, default_name: str, batch_size: bool = True
) -> None:
    p.add_argument("--model", default=None, help="saved pipeline folder or Hub id (default: the shipped model)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    if batch_size:
        p.add_argument("--batch-size", type=int, default=250, help="images per pipeline call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out-dir", default=str(default_out_dir), help="where <name>.json/.md/.png go (default: %(default)s)"
    )
    p.add_argument("--name", default=default_name, help="file stem of the outputs")
    p.add_argument("--quick", action="store_true", help="tiny settings (a smoke run, not a measurement)")


def apply_quick(args: argparse.Namespace, quick: dict[str, Any], parser: argparse.ArgumentParser) -> None:
    """--quick: use the tiny `quick` settings for every option left at its default."""
    for key, value in quick.items():
        if getattr(args, key) == parser.get_default(key):
            setattr(args, key, value)


def build_sampler_parser(default_out_dir: str | Path = "benchmarks/results") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Sampler speed and quality: the textbook 1000-step sampler vs condiff's default path and fast "
        "schedulers, in one run."
    )
    add_common_arguments(p, default_out_dir, "sampler_speed")
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--samplers", nargs="+", default=list(FAST_SAMPLERS), help="fast schedulers to compare")
    p.add_argument("--steps", type=int, nargs="+", default=list(FAST_STEPS), help="step counts for each")
    p.add_argument("--num-per-class", type=int, default=100, help="images per class for each fast sampler")
    p.add_argument(
        "--textbook-speed-images", type=int, default=None, help="images timed with the textbook sampler (one batch)"
    )
    p.add_argument(
        "--textbook-batch-size", type=int, default=None, help="textbook sampler batch (default: --batch-size)"
    )
    p.add_argument(
        "--textbook-timed-steps",
        type=int,
        default=50,
        help="time the first N of the textbook's 1000 steps and extrapolate (every step is the same work); "
        "1000 times them all",
    )
    p.add_argument(
        "--textbook-quality-per-class",
        type=int,
        default=2,
        help="textbook images per class to score, all 1000 steps (0: none)",
    )
    return p


QUICK_SAMPLER = {
    "num_per_class": 2,
    "steps": [5, 10],
    "textbook_speed_images": 2,
    "textbook_quality_per_class": 0,
    "textbook_timed_steps": 5,
}


def sampler_main(argv: list[str] | None = None, default_out_dir: str | Path = "benchmarks/results") -> int:
    """`benchmarks/samplers.py`: run `run_sampler_benchmark`, print the table, write JSON + Markdown + PNG."""
    parser = build_sampler_parser(default_out_dir)
    args = parser.parse_args(argv)
    if args.quick:
        apply_quick(args, QUICK_SAMPLER, parser)
    try:
        out_dir = check_out_dir(args.out_dir)
        name = check_name(args.name)
        for flag in ("batch_size", "num_per_class"):
            if getattr(args, flag) < 1:
                raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
        pipe = load_pipeline(args.model, None, args.device)
        report = run_sampler_benchmark(
            pipe,
            samplers=args.samplers,
            steps=args.steps,
            guidance_scale=args.guidance_scale,
            num_per_class=args.num_per_class,
            batch_size=args.batch_size,
            textbook_speed_images=args.textbook_speed_images,
            textbook_quality_per_class=args.textbook_quality_per_class,
            textbook_timed_steps=args.textbook_timed_steps,
            textbook_batch_size=args.textbook_batch_size,
            seed=args.seed,
        )
    except (ValueError, TypeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report["settings"] |= {"model": args.model or "shipped", "quick": args.quick}
    markdown = sampler_markdown(report)
    paths = write_report(out_dir, name, report, markdown)
    paths["png"] = plot_sampler_benchmark(report, out_dir / f"{name}.png")
    print(markdown)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
