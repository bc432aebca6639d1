"""Comparing guidance methods and sweeping their scales: each `Setting` names a pipeline, a sampler, a step count and
the call's guidance arguments; every setting samples the same balanced labels from the same seeds and is scored
with the MNIST evaluator (accuracy, Frechet distance, diversity) and timed. The classifier-guidance benchmark
(`benchmarks/classifier_guidance.py`) runs its sweep and its side-by-side comparison through `run_settings`, and
`memory_by_step` for the flat-memory check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from condiff.evaluation.metrics import matched_floor
from condiff.evaluation.reports import Log, machine_info, markdown_table, nonfinite_notes, pyplot, save_figure
from condiff.evaluation.sampling import generate_samples, pipeline_device
from condiff.evaluation.scoring import metric_fields, score_samples, timing_fields
from condiff.evaluation.sweep import score_reference

__all__ = ["Setting", "run_settings", "settings_markdown", "plot_settings", "memory_by_step", "rss_megabytes"]


@dataclass(frozen=True)
class Setting:
    """One row: `pipeline` (a key of the pipes handed to `run_settings`), `sampler` (a key of
    `condiff.options.SAMPLERS`, None = the pipeline's own), `steps`, and the call's guidance arguments."""

    name: str
    group: str
    pipeline: str
    sampler: str | None
    steps: int
    kwargs: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def scale_label(self) -> str:
        keys = ("classifier_scale", "guidance_scale")
        return ", ".join(f"{k.split('_')[0][0]}={self.kwargs[k]:g}" for k in keys if self.kwargs.get(k) is not None)


def run_settings(
    pipes: dict[str, Any],
    settings: Sequence[Setting],
    num_per_class: int = 100,
    batch_size: int = 250,
    seed: int = 0,
    classifier: Any = None,
    log: Log = print,
) -> dict[str, Any]:
    """Sample and score every setting; return a JSON-able report (settings, machine, real-data references, rows).
    Each pipeline's scheduler is swapped per setting and restored afterwards."""
    from condiff.models import scheduler_for

    unknown = sorted({s.pipeline for s in settings} - set(pipes))
    if unknown:
        raise ValueError(f"settings name pipelines {unknown}; given: {sorted(pipes)}")
    originals = {name: pipe.scheduler for name, pipe in pipes.items()}
    rows = []
    try:
        for i, s in enumerate(settings):
            pipe = pipes[s.pipeline]
            original = originals[s.pipeline]
            pipe.scheduler = scheduler_for(s.sampler, original.config) if s.sampler else original
            samples = generate_samples(pipe, num_per_class, batch_size, seed, num_inference_steps=s.steps, **s.kwargs)
            scores = score_samples(samples, classifier)
            row = {"name": s.name, "group": s.group, "pipeline": s.pipeline, "scale": s.scale_label}
            row |= {"sampler": type(pipe.scheduler).__name__, "steps": s.steps, **s.kwargs}
            if hasattr(pipe, "default_guidance_method"):  # classifier guidance: the method that ran, given or not
                row["guidance_method"] = s.kwargs.get("guidance_method") or pipe.default_guidance_method()
            row |= timing_fields(samples) | metric_fields(scores) | {"diversity": scores.get("diversity")}
            rows.append(row)
            log(f"[{i + 1}/{len(settings)}] {_row_line(row)}")
    finally:
        for name, pipe in pipes.items():
            pipe.scheduler = originals[name]
    first = next(iter(pipes.values()))
    n = num_per_class * first.num_classes
    return {
        "settings": {
            "num_per_class": num_per_class,
            "num_images_per_setting": n,
            "batch_size": batch_size,
            "seed": seed,
        },
        "machine": machine_info(pipeline_device(first)),
        "real_data": score_reference(classifier, n) | {"floor_matched": matched_floor(n, classifier)},
        "rows": rows,
    }


def _row_line(row: dict[str, Any]) -> str:
    acc, fd = row.get("accuracy"), row.get("fd_ratio_matched")
    quality = "not scored" if acc is None else f"acc {acc:.3f}, FD/floor {fd:.2f}"
    return f"{row['name']} [{row['scale']}]: {quality}, {row['images_per_second']:.2f} img/s"


COLUMNS = [
    ("setting", "name", ""),
    ("scales", "scale", ""),
    ("sampler", "sampler", ""),
    ("steps", "steps", "d"),
    ("accuracy", "accuracy", ".3f"),
    ("Frechet distance", "frechet_distance", ".2f"),
    ("FD / floor", "fd_ratio_matched", ".2f"),
    ("diversity (rel. real)", "diversity_relative", ".2f"),
    ("UNet evals / image", "nfe_per_image", ".0f"),
    ("images/s", "images_per_second", ".2f"),
]


def settings_markdown(report: dict[str, Any], title: str) -> str:
    """The report as Markdown: what was measured, on what, then one table row per setting."""
    s, real, m = report["settings"], report["real_data"], report["machine"]
    lines = [
        f"# {title}",
        "",
        f"{s['num_images_per_setting']} images per setting ({s['num_per_class']} per class), seed {s['seed']}, "
        f"batch {s['batch_size']}; {m['device']}, {m['cpu_count']} CPUs, torch threads {m['torch_threads']}.",
        f"Real-vs-real Frechet floor for {real['num_samples']} images: {real['floor_matched']:.3f} "
        f"(all training rows: {real['floor_all_train_rows']:.3f}). Diversity is the mean pairwise feature distance "
        "within a class relative to the real test split's.",
        "",
        markdown_table(report["rows"], COLUMNS),
        "",
        *nonfinite_notes(report["rows"]),
    ]
    return "\n".join(lines) + "\n"


def plot_settings(report: dict[str, Any], path: str | Path) -> Path:
    """Accuracy against Frechet distance / floor, one line per group, each point labelled by its scales."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = list(dict.fromkeys(r["group"] for r in report["rows"]))
    for group in groups:
        rows = [r for r in report["rows"] if r["group"] == group and r.get("accuracy") is not None]
        xs, ys = [r["fd_ratio_matched"] for r in rows], [r["accuracy"] for r in rows]
        ax.plot(xs, ys, marker="o", label=group)
        for r, x, y in zip(rows, xs, ys, strict=True):
            ax.annotate(r["scale"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(0.97, color="grey", lw=0.8, ls="--")
    ax.axvline(3.0, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="Frechet distance / real floor (lower is better)", ylabel="conditional accuracy", xscale="log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def rss_megabytes() -> float:
    """Resident memory of this process in MB (Linux /proc; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_by_step(pipe: Any, **call_kwargs: Any) -> list[float]:
    """Memory in use after each denoising step of one call (MB): GPU memory allocated on CUDA, else resident
    memory of the process. Flat across steps means no autograd graph or tensor is kept from step to step."""
    device = pipeline_device(pipe)
    cuda = device.type == "cuda"
    readings: list[float] = []

    def record(p: Any, i: int, t: Any, tensors: dict) -> dict:
        readings.append(torch.cuda.memory_allocated(device) / 2**20 if cuda else rss_megabytes())
        return {}

    pipe(callback_on_step_end=record, output_type="latent", **call_kwargs)
    return readings
