"""Benchmark 2, sampler speed and quality: the textbook sampler against condiff's default path and the fast
schedulers at several step counts, in one run (images/s and the ratio to the textbook sampler, NFE/image, accuracy,
Frechet distance, diversity); its table, plot and command line (`benchmarks/sampler_speed.py`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from condiff.argtypes import int_in
from condiff.evaluation.cli_args import apply_quick, report_parser
from condiff.evaluation.reports import (
    Log,
    machine_info,
    markdown_table,
    nonfinite_notes,
    pyplot,
    report_main,
    save_figure,
)
from condiff.evaluation.sampling import (
    can_evaluate,
    default_device,
    default_num_inference_steps,
    generate_samples,
    pipeline_device,
)
from condiff.evaluation.scoring import empty_metrics, metric_fields, score_samples, timing_fields
from condiff.loading import load_pipeline
from condiff.models import scheduler_for
from condiff.options import SAMPLERS
from lib.textbook import generate_textbook_samples, textbook_scheduler

FAST_SAMPLERS = ("ddim", "dpm++2m", "unipc", "euler")
FAST_STEPS = (5, 10, 15, 25)
EVERY_STEP = {"guidance_interval": (0.0, 1.0)}


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


def row_line(row: dict[str, Any]) -> str:
    """One row as a progress line."""
    acc, fd = row.get("accuracy"), row.get("frechet_distance")
    quality = "" if acc is None else f", accuracy {acc:.3f}, FD {fd:.2f}"
    if row.get("nonfinite_images"):
        quality += f", {row['nonfinite_images']} non-finite images (not scored)"
    return (
        f"{row['name']}: {row['images_per_second']:.3g} img/s, NFE/img {row['nfe_per_image']}, "
        f"{row['num_images']} images{quality}"
    )


def quality_run_note(run: dict[str, Any] | None) -> str:
    if not run:
        return ""
    return (
        f"; the quality run, all steps, made {run['num_images']} images in {run['wall_seconds']:.1f} s "
        f"({run['images_per_second']:.3g} img/s at batch {run['batch_size']})"
    )


def textbook_row(
    pipe,
    guidance_scale: float,
    speed_images: int,
    batch_size: int,
    timed_steps: int | None,
    quality_per_class: int,
    seed: int,
    evaluate: bool,
    classifier,
    log: Log,
) -> dict[str, Any]:
    """The textbook sampler's row: speed from `speed_images` images over its first `timed_steps` steps (None: all),
    extrapolated to all (every DDPM step is the same work); quality from `quality_per_class` images of each class
    at all steps (0: none), timed too (`quality_run`)."""
    total_steps = textbook_scheduler(pipe.scheduler.config).config.num_train_timesteps
    timed_steps = min(timed_steps or total_steps, total_steps)
    log(f"textbook sampler: timing {speed_images} images over {timed_steps} of {total_steps} steps ...")
    speed = generate_textbook_samples(pipe, speed_images, guidance_scale, batch_size, seed, max_steps=timed_steps)
    wall = speed.wall_seconds * total_steps / timed_steps
    row = {
        "name": "textbook",
        "sampler": f"DDPMScheduler, 2 separate passes/step (course notes), {total_steps} steps",
        "num_inference_steps": total_steps,
        "num_images": speed_images,
        "batch_size": speed.batch_size,
        "nfe_per_image": 2.0 * total_steps,
        "wall_seconds": wall,
        "images_per_second": speed_images / wall,
        "timed_steps": timed_steps,
        "extrapolated": timed_steps < total_steps,
    } | empty_metrics()
    if quality_per_class > 0:
        n = quality_per_class * pipe.num_classes
        log(f"textbook sampler: {n} images for quality ...")
        quality = generate_textbook_samples(pipe, n, guidance_scale, batch_size, seed)
        row["quality_run"] = timing_fields(quality)
        if evaluate:
            row |= metric_fields(score_samples(quality, classifier))
    return row


def fast_rows(
    pipe,
    samplers: Sequence[str],
    steps: Sequence[int],
    guidance_scale: float,
    num_per_class: int,
    batch_size: int,
    seed: int,
    evaluate: bool,
    classifier,
    log: Log,
) -> list[dict[str, Any]]:
    """The default path (the model's own steps and guidance interval), then, if that interval is not every step,
    the default with guidance at every step, then each fast scheduler at each step count (plain CFG), so each
    measure's contribution shows."""
    configs: list[tuple[str, str | None, int | None, dict]] = [("default", None, None, {})]
    if tuple(getattr(pipe.config, "default_guidance_interval", (0.0, 1.0))) != (0.0, 1.0):
        configs.append(("default, guidance at every step", None, None, EVERY_STEP))
    configs += [(f"{name} {n}", name, int(n), EVERY_STEP) for name in samplers for n in steps]
    original, rows = pipe.scheduler, []
    try:
        for label, name, n, extra in configs:
            pipe.scheduler = scheduler_for(name, original.config) if name is not None else original
            kwargs = dict(extra) if n is None else {"num_inference_steps": n, **extra}
            samples = generate_samples(pipe, num_per_class, batch_size, seed, guidance_scale=guidance_scale, **kwargs)
            interval = extra.get("guidance_interval", getattr(pipe.config, "default_guidance_interval", (0.0, 1.0)))
            row = {
                "name": label,
                "sampler": type(pipe.scheduler).__name__,
                "num_inference_steps": n if n is not None else default_num_inference_steps(pipe),
                "guidance_interval": list(interval),
            } | timing_fields(samples)
            row |= metric_fields(score_samples(samples, classifier)) if evaluate else empty_metrics()
            rows.append(row)
            log(row_line(row))
    finally:
        pipe.scheduler = original
    return rows


def _textbook_settings(pipe, speed_images: int, batch_size: int, quality_per_class: int, row: dict) -> dict:
    return {
        "textbook_speed_images": speed_images,
        "textbook_batch_size": batch_size,
        "textbook_quality_images": quality_per_class * pipe.num_classes,
        "textbook_timed_steps": row["timed_steps"],
        "textbook_scheduler": dict(textbook_scheduler(pipe.scheduler.config).config),
        "default_scheduler": type(pipe.scheduler).__name__,
        "unet_parameters": sum(p.numel() for p in pipe.unet.parameters()),
    }


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
    """The textbook sampler (`textbook_row`; its batch defaults to `batch_size` so the ratio is not a batching
    effect, its speed run to one batch) against the default path and each fast scheduler at each step count
    (`fast_rows`, `num_per_class` images of each class), in one run. `evaluate` (default: when the evaluator fits)
    turns the scoring on. Returns a JSON-able dict: `settings`, `machine`, `rows` (textbook first) and `headline`
    (the default path's and the best images/s ratios to the textbook sampler)."""
    unknown = [s for s in samplers if s not in SAMPLERS]
    if unknown:
        raise ValueError(f"unknown sampler(s) {unknown}; choose from {sorted(SAMPLERS)}")
    textbook_batch_size = textbook_batch_size or batch_size
    textbook_speed_images = textbook_speed_images or textbook_batch_size
    evaluate = can_evaluate(pipe, classifier) if evaluate is None else evaluate
    textbook_args = (textbook_speed_images, textbook_batch_size, textbook_timed_steps, textbook_quality_per_class)
    textbook = textbook_row(pipe, guidance_scale, *textbook_args, seed, evaluate, classifier, log)
    fast = fast_rows(pipe, samplers, steps, guidance_scale, num_per_class, batch_size, seed, evaluate, classifier, log)
    rows = [textbook, *fast]
    for row in rows:
        row["speedup_vs_textbook"] = row["images_per_second"] / textbook["images_per_second"]
    settings = {
        "guidance_scale": guidance_scale,
        "num_per_class": num_per_class,
        "num_images": num_per_class * pipe.num_classes,
        "batch_size": batch_size,
        "samplers": list(samplers),
        "steps": [int(n) for n in steps],
    } | _textbook_settings(pipe, textbook_speed_images, textbook_batch_size, textbook_quality_per_class, textbook)
    settings |= {"seed": seed, "evaluated": bool(evaluate)}
    report = {"benchmark": "samplers", "settings": settings, "machine": machine_info(pipeline_device(pipe))}
    return report | {"headline": _headline(rows), "rows": rows}


def _headline(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The default path's (rows[1]) and the fastest sampler's images/s ratios to the textbook sampler (rows[0])."""
    default, best = rows[1], max(rows[1:], key=lambda r: r["images_per_second"])
    return {
        "default_speedup_vs_textbook": default["speedup_vs_textbook"],
        "default_sampler": f"{default['sampler']} {default['num_inference_steps']} steps",
        "fastest": best["name"],
        "fastest_speedup_vs_textbook": best["speedup_vs_textbook"],
    }


def sampler_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: settings, the headline ratio, the textbook sampler's method, the table."""
    s, h, m = report["settings"], report["headline"], report["machine"]
    textbook = report["rows"][0]
    extrapolated = (
        f", timed over the first {textbook['timed_steps']} steps and extrapolated to all (every DDPM step is the "
        "same work)"
        if textbook["extrapolated"]
        else ""
    )
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
        f"{textbook['batch_size']}{extrapolated}; quality from {textbook['num_scored']} images "
        "(the Frechet distance grows at small N: compare the 'FD / real floor (same N)' column)"
        + quality_run_note(textbook.get("quality_run"))
        + ".",
        "",
        markdown_table(report["rows"], SAMPLER_COLUMNS),
        "",
        *nonfinite_notes(report["rows"]),
    ]
    return "\n".join(lines)


def plot_sampler_benchmark(report: dict[str, Any], path: str | Path) -> Path:
    """Accuracy and floor-normalised Frechet distance against images/s (log), one line per scheduler."""
    plt = pyplot()
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
            marker = {"textbook": "*", "default": "s"}.get(name, "o")
            if pts:
                ax.plot(*zip(*[p[:2] for p in pts]), marker=marker, ms=5 if marker == "o" else 11, label=name)
            for x, y, n in pts:
                ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
        ax.axvline(report["rows"][0]["images_per_second"], color="gray", ls="--", lw=1, label="textbook speed")
        ax.set(xscale="log", xlabel="images / second (log)", ylabel=ylabel)
        ax.grid(alpha=0.3)
    if not any(r.get("accuracy") is not None for r in report["rows"]):
        for ax in axes:
            ax.text(0.5, 0.5, "not scored (no evaluator for this pipeline)", ha="center", transform=ax.transAxes)
        for name, rows in groups.items():
            axes[0].plot([r["images_per_second"] for r in rows], [0.0] * len(rows), "o", label=name)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Samplers at guidance scale {report['settings']['guidance_scale']} (labels: steps)")
    return save_figure(fig, path)


def build_parser(default_out_dir: str | Path = "benchmarks/results") -> argparse.ArgumentParser:
    description = (
        "Sampler speed and quality: the textbook 1000-step sampler vs condiff's default path and fast schedulers, "
        "in one run."
    )
    p = report_parser(description, default_out_dir, "sampler_speed")
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--samplers", nargs="+", choices=sorted(SAMPLERS), default=list(FAST_SAMPLERS))
    p.add_argument("--steps", type=int_in(1), nargs="+", default=list(FAST_STEPS), help="step counts for each")
    p.add_argument("--num-per-class", type=int_in(1), default=100, help="images per class for each fast sampler")
    p.add_argument("--textbook-speed-images", type=int_in(1), default=None, help="textbook images timed")
    p.add_argument("--textbook-batch-size", type=int_in(1), default=None, help="default: --batch-size")
    p.add_argument(
        "--textbook-timed-steps",
        type=int_in(1),
        default=50,
        help="time the first N of the textbook's 1000 steps and extrapolate (every step is the same work); "
        "1000 times them all",
    )
    p.add_argument(
        "--textbook-quality-per-class", type=int_in(0), default=2, help="textbook images per class to score (0: none)"
    )
    return p


QUICK = {
    "num_per_class": 2,
    "steps": [5, 10],
    "textbook_speed_images": 2,
    "textbook_quality_per_class": 0,
    "textbook_timed_steps": 5,
}


def main(argv: list[str] | None = None, default_out_dir: str | Path = "benchmarks/results") -> int:
    """`benchmarks/sampler_speed.py`: run `run_sampler_benchmark`, print the table, write JSON + Markdown + PNG."""
    parser = build_parser(default_out_dir)
    args = parser.parse_args(argv)
    if args.quick:
        apply_quick(args, QUICK, parser)

    def run() -> dict[str, Any]:
        pipe = load_pipeline(args.model, None, args.device or default_device())
        return run_sampler_benchmark(
            pipe, args.samplers, args.steps, args.guidance_scale, args.num_per_class, args.batch_size,
            args.textbook_speed_images, args.textbook_quality_per_class, args.textbook_timed_steps,
            args.textbook_batch_size, args.seed,
        )  # fmt: skip

    return report_main(args, run, sampler_markdown, plot_sampler_benchmark)


if __name__ == "__main__":
    sys.exit(main())
