"""Guidance sweep (issue 3, benchmark 1): for each guidance scale (and the guidance-rescale and guidance-interval
variants), generate a balanced set of samples and report conditional accuracy, Frechet distance against the test
split, within-class diversity relative to the real data's, NFE per image and images per second.

Outputs: a Markdown table, a plot of accuracy against Frechet distance labelled by scale (the CFG paper's
trade-off figure) with diversity against scale beside it, and a grid image (rows = settings, columns = classes,
every row from the same initial noise). `condiff sweep`, `scripts/sweep.py` and `benchmarks/guidance_sweep.py`
all run `main`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from condiff.benchmarking import (
    Log,
    _pyplot,
    add_common_arguments,
    apply_quick,
    can_evaluate,
    check_name,
    check_out_dir,
    default_num_inference_steps,
    empty_metrics,
    generate_samples,
    load_pipeline,
    machine_info,
    markdown_table,
    metric_fields,
    nonfinite_notes,
    pipeline_device,
    score_samples,
    timing_fields,
    write_report,
)

__all__ = [
    "DEFAULT_SCALES",
    "DEFAULT_RESCALES",
    "DEFAULT_INTERVALS",
    "GuidanceSetting",
    "sweep_settings",
    "SweepResult",
    "run_sweep",
    "sweep_markdown",
    "plot_tradeoff",
    "save_grid",
    "write_sweep",
    "add_sweep_arguments",
    "main",
]

DEFAULT_SCALES = (0.0, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5)
DEFAULT_RESCALES = (0.7,)  # Lin et al. (2023) recommend 0.7
# Guidance off at the highest and lowest noise levels (Kynkaanniemi et al. 2024); (0.2, 0.8) of the training
# timesteps is roughly their sigma range (0.28, 2.9] on the cosine schedule. A starting point, not a tuned value.
DEFAULT_INTERVALS = ((0.2, 0.8),)
FULL_INTERVAL = (0.0, 1.0)


@dataclass(frozen=True)
class GuidanceSetting:
    """One row of the sweep: the pipeline's three guidance arguments."""

    guidance_scale: float
    guidance_rescale: float = 0.0
    guidance_interval: tuple[float, float] = FULL_INTERVAL

    @property
    def variant(self) -> str:
        parts = []
        if self.guidance_rescale:
            parts.append(f"rescale {self.guidance_rescale:g}")
        if tuple(self.guidance_interval) != FULL_INTERVAL:
            lo, hi = self.guidance_interval
            parts.append(f"interval [{lo:g}, {hi:g}]")
        return ", ".join(parts) or "plain CFG"

    @property
    def label(self) -> str:
        return f"w={self.guidance_scale:g}" + ("" if self.variant == "plain CFG" else f" ({self.variant})")

    def call_kwargs(self) -> dict[str, Any]:
        return {
            "guidance_scale": self.guidance_scale,
            "guidance_rescale": self.guidance_rescale,
            "guidance_interval": tuple(self.guidance_interval),
        }


def sweep_settings(
    scales: Sequence[float] = DEFAULT_SCALES,
    rescales: Sequence[float] = DEFAULT_RESCALES,
    intervals: Sequence[tuple[float, float]] = DEFAULT_INTERVALS,
    variant_scales: Sequence[float] | None = None,
) -> list[GuidanceSetting]:
    """Plain CFG at every scale, then each rescale and each interval variant at `variant_scales`.

    `variant_scales` defaults to the scales above 1: at w = 1 neither refinement changes anything (only the
    conditional branch runs), and at w = 0 rescale does nothing either.
    """
    from condiff.pipelines.guidance import check_guidance_arguments

    scales = [float(s) for s in scales]
    if not scales:
        raise ValueError("give at least one guidance scale")
    variant_scales = [s for s in scales if s > 1] if variant_scales is None else [float(s) for s in variant_scales]
    settings = [GuidanceSetting(s) for s in scales]
    settings += [GuidanceSetting(s, guidance_rescale=float(r)) for r in rescales for s in variant_scales]
    settings += [
        GuidanceSetting(s, guidance_interval=(float(lo), float(hi))) for lo, hi in intervals for s in variant_scales
    ]
    for s in settings:
        check_guidance_arguments(s.guidance_scale, s.guidance_rescale, s.guidance_interval)
    unique = list(dict.fromkeys(settings))  # keep order, drop repeats
    return unique


@dataclass
class SweepResult:
    """`report` is JSON-able (settings, machine, real-data references, one row per setting); `grid` holds one
    image per class for each row, in the same order."""

    report: dict[str, Any]
    grid: list[list[Image.Image]] = field(default_factory=list)


def run_sweep(
    pipe,
    settings: Sequence[GuidanceSetting] | None = None,
    num_per_class: int = 100,
    num_inference_steps: int | None = None,
    batch_size: int = 250,
    seed: int = 0,
    classifier=None,
    evaluate: bool | None = None,
    log: Log = print,
) -> SweepResult:
    """Sample `num_per_class` images of every class for each `GuidanceSetting` (default `sweep_settings()`),
    all from the same seeds, and score them with the MNIST evaluator (`evaluate`: default when it fits the
    pipeline; otherwise only speed, NFE and the grid are reported)."""
    settings = list(settings) if settings is not None else sweep_settings()
    if not settings:
        raise ValueError("settings is empty")
    if num_per_class < 1 or batch_size < 1:
        raise ValueError(f"num_per_class and batch_size must be >= 1, got {num_per_class} and {batch_size}")
    evaluate = can_evaluate(pipe, classifier) if evaluate is None else evaluate
    pipe.set_progress_bar_config(disable=True)
    steps = num_inference_steps if num_inference_steps is not None else default_num_inference_steps(pipe)
    step_kwargs = {} if num_inference_steps is None else {"num_inference_steps": num_inference_steps}

    rows, grid = [], []
    for i, setting in enumerate(settings):
        samples = generate_samples(pipe, num_per_class, batch_size, seed, **setting.call_kwargs(), **step_kwargs)
        row = {
            "label": setting.label,
            "variant": setting.variant,
            "guidance_scale": setting.guidance_scale,
            "guidance_rescale": setting.guidance_rescale,
            "guidance_interval": list(setting.guidance_interval),
            "sampler": type(pipe.scheduler).__name__,
            "num_inference_steps": steps,
        } | timing_fields(samples)
        if evaluate:
            scores = score_samples(samples, classifier)
            row |= metric_fields(scores)
            row["diversity"] = scores.get("diversity")
            row["per_class_accuracy"] = scores.get("per_class_accuracy")
        else:
            row |= empty_metrics()
        rows.append(row)
        grid.append([tensor_to_pil(t) for t in samples.first_of_each_class()])
        log(f"[{i + 1}/{len(settings)}] {_row_line(row)}")

    report = {
        "benchmark": "guidance_sweep",
        "settings": {
            "num_per_class": num_per_class,
            "num_images_per_setting": num_per_class * pipe.num_classes,
            "num_classes": pipe.num_classes,
            "sampler": type(pipe.scheduler).__name__,
            "scheduler_config": dict(pipe.scheduler.config),
            "num_inference_steps": steps,
            "batch_size": batch_size,
            "seed": seed,
            "evaluated": bool(evaluate),
            "unet_parameters": sum(p.numel() for p in pipe.unet.parameters()),
            "grid_rows": [s.label for s in settings],
        },
        "machine": machine_info(pipeline_device(pipe)),
        "rows": rows,
    }
    if evaluate:
        from condiff.metrics import matched_floor

        n = num_per_class * pipe.num_classes
        report["real_data"] = score_reference(classifier, n) | {"floor_matched": matched_floor(n, classifier)}
    return SweepResult(report, grid)


def score_reference(classifier, num_samples: int) -> dict[str, Any]:
    """What real data scores: the all-rows real-vs-real floor and the real test split's diversity."""
    from condiff.benchmarking import real_diversity
    from condiff.metrics import default_classifier, real_vs_real_floor

    classifier = classifier if classifier is not None else default_classifier()
    return {
        "floor_all_train_rows": real_vs_real_floor(classifier),
        "diversity_test_split": real_diversity(classifier),
        "num_samples": num_samples,
    }


def tensor_to_pil(image) -> Image.Image:
    """A [C, H, W] tensor in [0, 1] -> a PIL image ("L" for one channel, else "RGB")."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(array[0], "L") if array.shape[0] == 1 else Image.fromarray(array.transpose(1, 2, 0))


def _row_line(row: dict[str, Any]) -> str:
    quality = ""
    if row.get("accuracy") is not None:
        quality = (
            f", accuracy {row['accuracy']:.3f}, FD {row['frechet_distance']:.2f} "
            f"({row['fd_ratio_matched']:.2f}x floor), diversity {row['diversity_relative']:.2f}x real"
        )
    if row.get("nonfinite_images"):
        quality += f", {row['nonfinite_images']} non-finite images (not scored)"
    return (
        f"{row['label']}: NFE/img {row['nfe_per_image']}, {row['images_per_second']:.3g} img/s"
        f" ({row['num_images']} images){quality}"
    )


SWEEP_COLUMNS = (
    ("w", "guidance_scale", "g"),
    ("variant", "variant", ""),
    ("NFE/img", "nfe_per_image", ".0f"),
    ("img/s", "images_per_second", ".3g"),
    ("images", "num_images", "d"),
    ("accuracy", "accuracy", ".3f"),
    ("Frechet dist.", "frechet_distance", ".2f"),
    ("FD / real floor (same N)", "fd_ratio_matched", ".2f"),
    ("diversity (rel. to real)", "diversity_relative", ".3f"),
)


def sweep_markdown(report: dict[str, Any]) -> str:
    s, m = report["settings"], report["machine"]
    lines = [
        "# Guidance sweep",
        "",
        f"{s['num_images_per_setting']} images per row ({s['num_per_class']} per class), sampler {s['sampler']}, "
        f"{s['num_inference_steps']} steps, batch {s['batch_size']}, seed {s['seed']}; machine: {m['platform']}, "
        f"{m['cpu_count']} CPUs, {m['torch_threads']} torch threads, device {m['device']}, "
        f"1-min load {m.get('load_average_1min')}.",
        "",
    ]
    real = report.get("real_data")
    if real:
        lines += [
            f"Real data: Frechet distance floor {real['floor_matched']:.2f} (real train subsets of "
            f"{real['num_samples']} rows vs the test split; {real['floor_all_train_rows']:.2f} with all train "
            f"rows); within-class diversity of the test split {real['diversity_test_split']:.3f} (= 1.0 relative).",
            "",
        ]
    else:
        lines += ["Not scored: the MNIST evaluator does not fit this pipeline (speed, NFE and the grid only).", ""]
    lines += [
        markdown_table(report["rows"], SWEEP_COLUMNS),
        "",
        *nonfinite_notes(report["rows"]),
        "Diversity: mean pairwise evaluator-feature distance within each class, relative to the real test "
        "split's. NFE/img: UNet evaluations per image (both CFG branches run only where w is not 0 or 1 and, "
        "with an interval, only inside it).",
        "",
        "Grid rows (top to bottom): " + "; ".join(s["grid_rows"]) + ".",
        "",
    ]
    return "\n".join(lines)


def plot_tradeoff(report: dict[str, Any], path: str | Path) -> Path:
    """Left: accuracy against Frechet distance, one line per variant, points labelled by scale (the CFG paper's
    trade-off figure); right: relative diversity against scale."""
    plt = _pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    variants: dict[str, list[dict]] = {}
    for row in report["rows"]:
        variants.setdefault(row["variant"], []).append(row)
    scored = [r for r in report["rows"] if r.get("accuracy") is not None]
    for variant, rows in variants.items():
        rows = [r for r in rows if r.get("accuracy") is not None]
        if not rows:
            continue
        rows = sorted(rows, key=lambda r: r["guidance_scale"])
        ax.plot([r["frechet_distance"] for r in rows], [r["accuracy"] for r in rows], "o-", label=variant)
        for r in rows:
            ax.annotate(
                f"{r['guidance_scale']:g}",
                (r["frechet_distance"], r["accuracy"]),
                textcoords="offset points",
                xytext=(4, 3),
                fontsize=8,
            )
        ax2.plot([r["guidance_scale"] for r in rows], [r["diversity_relative"] for r in rows], "o-", label=variant)
    real = report.get("real_data")
    if real:
        ax.axvline(real["floor_matched"], color="gray", ls="--", lw=1, label="real data (same N)")
        ax2.axhline(1.0, color="gray", ls="--", lw=1, label="real data")
    if not scored:
        for a in (ax, ax2):
            a.text(0.5, 0.5, "not scored (no evaluator for this pipeline)", ha="center", transform=a.transAxes)
    ax.set_xlabel("Frechet distance to the test split (evaluator features)")
    ax.set_ylabel("conditional accuracy")
    ax.set_title("Guidance trade-off (labels: guidance scale w)")
    ax2.set_xlabel("guidance scale w")
    ax2.set_ylabel("within-class diversity / real")
    ax2.set_title("Diversity")
    for a in (ax, ax2):
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8)
    s = report["settings"]
    fig.suptitle(f"{s['sampler']}, {s['num_inference_steps']} steps, {s['num_images_per_setting']} images per point")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def save_grid(result: SweepResult, path: str | Path, upscale: int = 2, label_width: int = 150) -> Path:
    """Rows = settings (labelled on the left), columns = classes; made with `diffusers.utils.make_image_grid`."""
    from diffusers.utils import make_image_grid
    from PIL import ImageDraw

    rows = result.grid
    if not rows or not rows[0]:
        raise ValueError("the sweep result holds no images")
    cols = max(len(r) for r in rows)
    blank = Image.new(rows[0][0].mode, rows[0][0].size)
    images = [img for r in rows for img in (r + [blank] * (cols - len(r)))]
    grid = make_image_grid(images, rows=len(rows), cols=cols).convert("RGB")
    grid = grid.resize((grid.width * upscale, grid.height * upscale), Image.NEAREST)
    canvas = Image.new("RGB", (grid.width + label_width, grid.height), "white")
    canvas.paste(grid, (label_width, 0))
    draw = ImageDraw.Draw(canvas)
    row_height = grid.height / len(rows)
    for i, label in enumerate(result.report["settings"]["grid_rows"]):
        draw.text((4, int(i * row_height + row_height / 2 - 5)), label, fill="black")
    path = Path(path)
    canvas.save(path)
    return path


def write_sweep(result: SweepResult, out_dir: str | Path, name: str = "guidance_sweep") -> dict[str, Path]:
    """Write `<name>.json`, `<name>.md`, `<name>.png` (trade-off plot) and `<name>_grid.png`."""
    out_dir = Path(out_dir)
    paths = write_report(out_dir, name, result.report, sweep_markdown(result.report))
    paths["png"] = plot_tradeoff(result.report, out_dir / f"{name}.png")
    paths["grid"] = save_grid(result, out_dir / f"{name}_grid.png")
    return paths


# --- command line ---------------------------------------------------------------------------------------------


def _interval(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"an interval is LO,HI (e.g. 0.2,0.8), got {text!r}") from None
    return lo, hi


def add_sweep_arguments(p: argparse.ArgumentParser, default_out_dir: str | Path = "benchmarks/results") -> None:
    """The sweep's options (shared by `condiff sweep`, `scripts/sweep.py` and `benchmarks/guidance_sweep.py`)."""
    from condiff.models import SAMPLERS

    add_common_arguments(p, default_out_dir, "guidance_sweep")
    p.add_argument("--scheduler", choices=sorted(SAMPLERS), default=None, help="default: the pipeline's own")
    p.add_argument("--steps", type=int, default=None, help="inference steps (default: the pipeline's)")
    p.add_argument("--scales", type=float, nargs="+", default=list(DEFAULT_SCALES), help="guidance scales w")
    p.add_argument("--num-per-class", type=int, default=100, help="images per class for each setting")
    p.add_argument(
        "--rescales", type=float, nargs="*", default=list(DEFAULT_RESCALES), help="guidance_rescale variants"
    )
    p.add_argument(
        "--intervals",
        type=_interval,
        nargs="*",
        default=list(DEFAULT_INTERVALS),
        help="guidance_interval variants as LO,HI fractions of the noise range",
    )
    p.add_argument(
        "--variant-scales", type=float, nargs="*", default=None, help="scales for the variants (default: those > 1)"
    )


def build_parser(default_out_dir: str | Path = "benchmarks/results") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Guidance sweep: accuracy, Frechet distance, diversity, NFE and speed for each guidance scale."
    )
    add_sweep_arguments(p, default_out_dir)
    return p


QUICK = {"num_per_class": 3, "steps": 10, "variant_scales": [3.0]}


def run_from_args(args: argparse.Namespace) -> dict[str, Path]:
    """Validate `args` (before any model work), run the sweep, print the table, write the outputs."""
    if args.quick:
        apply_quick(args, QUICK, build_parser())
    out_dir = check_out_dir(args.out_dir)
    name = check_name(args.name)
    for flag in ("num_per_class", "batch_size"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    settings = sweep_settings(args.scales, args.rescales, args.intervals, args.variant_scales)
    pipe = load_pipeline(args.model, args.scheduler, args.device)
    print(f"guidance sweep: {len(settings)} settings x {args.num_per_class * pipe.num_classes} images")
    result = run_sweep(
        pipe,
        settings,
        num_per_class=args.num_per_class,
        num_inference_steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    result.report["settings"] |= {"model": args.model or "shipped", "quick": bool(args.quick)}
    paths = write_sweep(result, out_dir, name)
    print(sweep_markdown(result.report))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return paths


def main(argv: list[str] | None = None, default_out_dir: str | Path = "benchmarks/results") -> int:
    args = build_parser(default_out_dir).parse_args(argv)
    try:
        run_from_args(args)
    except (ValueError, TypeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
