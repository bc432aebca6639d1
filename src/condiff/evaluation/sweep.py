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

from PIL import Image

from condiff.evaluation.cli_args import (
    DEFAULT_INTERVALS,
    DEFAULT_RESCALES,
    DEFAULT_SCALES,
    DEFAULT_SWEEP_OUT_DIR,
    FULL_INTERVAL,
    apply_quick,
    build_sweep_parser,
    check_name,
    check_new_outputs,
    check_out_dir,
)
from condiff.evaluation.metrics import default_classifier, matched_floor, real_diversity, real_vs_real_floor
from condiff.evaluation.reports import Log, machine_info
from condiff.evaluation.sampling import (
    Samples,
    can_evaluate,
    default_device,
    default_num_inference_steps,
    generate_samples,
    pipeline_device,
)
from condiff.evaluation.scoring import empty_metrics, metric_fields, score_samples, timing_fields
from condiff.evaluation.sweep_report import row_line, sweep_markdown, sweep_output_paths, tensor_to_pil, write_sweep
from condiff.loading import load_pipeline
from condiff.pipelines.guidance import check_guidance_arguments

__all__ = [
    "DEFAULT_SCALES",
    "DEFAULT_RESCALES",
    "DEFAULT_INTERVALS",
    "GuidanceSetting",
    "sweep_settings",
    "SweepResult",
    "run_sweep",
    "score_reference",
    "run_from_args",
    "main",
]


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
    steps = num_inference_steps if num_inference_steps is not None else default_num_inference_steps(pipe)
    step_kwargs = {} if num_inference_steps is None else {"num_inference_steps": num_inference_steps}
    rows, grid = [], []
    for i, setting in enumerate(settings):
        samples = generate_samples(pipe, num_per_class, batch_size, seed, **setting.call_kwargs(), **step_kwargs)
        rows.append(_sweep_row(setting, samples, type(pipe.scheduler).__name__, steps, evaluate, classifier))
        grid.append([tensor_to_pil(t) for t in samples.first_of_each_class()])
        log(f"[{i + 1}/{len(settings)}] {row_line(rows[-1])}")

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
        n = num_per_class * pipe.num_classes
        report["real_data"] = score_reference(classifier, n) | {"floor_matched": matched_floor(n, classifier)}
    return SweepResult(report, grid)


def _sweep_row(
    setting: GuidanceSetting, samples: Samples, sampler: str, steps: int | None, evaluate: bool, classifier
) -> dict[str, Any]:
    row = {
        "label": setting.label,
        "variant": setting.variant,
        "guidance_scale": setting.guidance_scale,
        "guidance_rescale": setting.guidance_rescale,
        "guidance_interval": list(setting.guidance_interval),
        "sampler": sampler,
        "num_inference_steps": steps,
    } | timing_fields(samples)
    if not evaluate:
        return row | empty_metrics()
    scores = score_samples(samples, classifier)
    return row | metric_fields(scores) | {k: scores.get(k) for k in ("diversity", "per_class_accuracy")}


def score_reference(classifier, num_samples: int) -> dict[str, Any]:
    """What real data scores: the all-rows real-vs-real floor and the real test split's diversity."""
    classifier = classifier if classifier is not None else default_classifier()
    return {
        "floor_all_train_rows": real_vs_real_floor(classifier),
        "diversity_test_split": real_diversity(classifier),
        "num_samples": num_samples,
    }


QUICK = {"num_per_class": 3, "steps": 10, "variant_scales": [3.0]}


def run_from_args(args: argparse.Namespace) -> dict[str, Path]:
    """Validate `args` (before any model work: existing outputs are refused unless `args.overwrite`), run the sweep,
    print the table, write the outputs."""
    if args.quick:
        apply_quick(args, QUICK, build_sweep_parser())
    name = check_name(args.name)
    settings = sweep_settings(args.scales, args.rescales, args.intervals, args.variant_scales)
    check_new_outputs(sweep_output_paths(args.out_dir, name).values(), args.overwrite)
    out_dir = check_out_dir(args.out_dir)
    pipe = load_pipeline(args.model, args.scheduler, args.device or default_device())
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
    paths = write_sweep(result.report, result.grid, out_dir, name)
    print(sweep_markdown(result.report))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return paths


def main(argv: list[str] | None = None, default_out_dir: str | Path = DEFAULT_SWEEP_OUT_DIR) -> int:
    args = build_sweep_parser(default_out_dir).parse_args(argv)
    try:
        run_from_args(args)
    except (ValueError, TypeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
