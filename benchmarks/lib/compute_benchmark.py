"""Benchmark 3, compute efficiency: FLOPs per UNet forward, the measured fp32 matmul peak, the fraction of it
achieved while sampling (pipeline, textbook sampler) and training, and train_cfg.py's steady-state training
throughput against a bare PyTorch loop; its table, plot and command line (`benchmarks/compute_efficiency.py`)."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from condiff.argtypes import float_in, int_in
from condiff.evaluation.cli_args import apply_quick, report_parser
from condiff.evaluation.reports import Log, machine_info, markdown_table, pyplot, report_main, save_figure
from condiff.evaluation.sampling import default_device, pipeline_device
from condiff.loading import load_pipeline
from lib.compute import (
    matmul_peak,
    sampling_throughput,
    textbook_throughput,
    training_flops_per_image,
    unet_forward_flops,
)
from lib.compute_breakdown import conv_flops_share, op_time_shares, sampling_variants
from lib.training_loops import parse_training_flags, training_throughput


def _with_fraction_of_peak(row: dict[str, Any], flops_per_item: float, per_second_key: str, peak: float) -> None:
    rate = row.get(per_second_key)
    row["achieved_flops_per_second"] = rate * flops_per_item if rate else None
    row["fraction_of_peak"] = rate * flops_per_item / peak if rate else None


def run_compute_benchmark(
    pipe,
    sampling_batch_sizes: Sequence[int] = (1, 32, 250),
    guidance_scale: float = 3.0,
    min_seconds: float = 5.0,
    textbook_batch_size: int = 10,
    textbook_timed_steps: int = 20,
    matmul_size: int = 2048,
    matmul_reps: int = 5,
    train_argv: Sequence[str] = (),
    train_steps: tuple[int, int] | None = (10, 40),
    train_repeats: int = 3,
    bare_extras: bool = True,
    breakdown_batch_size: int = 0,
    compile_unet: bool = True,
    log: Log = print,
) -> dict[str, Any]:
    """FLOPs per UNet forward (batch 1), the fp32 matmul peak, achieved FLOP/s and fraction of peak while
    sampling (pipeline at each batch size, textbook sampler) and training, and the training throughput of
    train_cfg.py vs the bare loop (`train_steps=None` skips training; `textbook_batch_size=0` the textbook sampler);
    with `breakdown_batch_size`, where a call at that batch spends its time (`compute_breakdown`). JSON-able."""
    device = pipeline_device(pipe)
    flops = unet_forward_flops(pipe.unet, 1)
    log(f"UNet forward: {flops / 1e6:.1f} MFLOP per image")
    peak = matmul_peak(matmul_size, matmul_reps, device)
    log(f"peak: {peak['flops_per_second'] / 1e9:.1f} GFLOP/s ({matmul_size}^3 fp32 matmul, best of {matmul_reps})")
    sampling = [sampling_throughput(pipe, b, guidance_scale, min_seconds) for b in sampling_batch_sizes]
    if textbook_batch_size:
        sampling.append(textbook_throughput(pipe, textbook_batch_size, textbook_timed_steps, guidance_scale))
    for row in sampling:
        _with_fraction_of_peak(row, flops, "forwards_per_second", peak["flops_per_second"])
        log(f"sampling {row['name']}: {row['forwards_per_second']:.1f} forwards/s, {row['fraction_of_peak']:.1%} peak")
    breakdown = None
    if breakdown_batch_size:
        breakdown = time_breakdown(pipe, breakdown_batch_size, guidance_scale, flops, peak, compile_unet, log)
    unet_keys = ("sample_size", "block_out_channels", "layers_per_block", "down_block_types")
    settings = {
        "sampling_batch_sizes": list(sampling_batch_sizes),
        "guidance_scale": guidance_scale,
        "min_seconds": min_seconds,
        "textbook_batch_size": textbook_batch_size,
        "textbook_timed_steps": textbook_timed_steps,
        "unet_parameters": sum(p.numel() for p in pipe.unet.parameters()),
        "unet_config": {k: pipe.unet.config[k] for k in unet_keys},
    }
    training = None
    if train_steps is not None:
        training = training_throughput(pipe, train_argv, train_steps, train_repeats, bare_extras, log)
        per_image = training_flops_per_image(pipe.unet, min(8, training["batch_size"]))
        training["flops_per_image_forward_backward"] = per_image
        for row in training["rows"]:
            _with_fraction_of_peak(row, per_image, "images_per_second", peak["flops_per_second"])
        training["train_argv"] = list(train_argv)
        overhead = training["overhead_percent"]
        log("training overhead of train_cfg.py vs the bare loop: " + ("-" if overhead is None else f"{overhead:.1f}%"))
    return {
        "benchmark": "compute",
        "settings": settings,
        "machine": machine_info(device),
        "flops_per_forward": flops,
        "flop_counter": "torch.utils.flop_counter.FlopCounterMode (matmul/conv only, 2 FLOPs per multiply-add)",
        "peak": peak,
        "sampling": sampling,
        "training": training,
        "breakdown": breakdown,
    }


def time_breakdown(pipe, batch_size: int, guidance_scale: float, flops: int, peak: dict, compile_unet: bool, log: Log):
    """`compute_breakdown`'s operator times and throughput variants at `batch_size`, with fractions of `peak`."""
    ops = op_time_shares(pipe, batch_size, guidance_scale)
    conv_seconds = next((k["seconds"] for k in ops["kinds"] if k["kind"] == "convolution"), 0.0)
    conv_flops = conv_flops_share(pipe.unet) * flops * ops["nfe_per_image"] * batch_size
    ops["convolution_fraction_of_peak"] = conv_flops / conv_seconds / peak["flops_per_second"] if conv_seconds else None
    for k in ops["kinds"]:
        log(f"{k['kind']}: {k['share']:.1%} of the profiled operator time")
    variants = sampling_variants(pipe, batch_size, guidance_scale, compile_unet=compile_unet, log=log)
    for row in variants:
        row["nfe_per_image"] = ops["nfe_per_image"]
        _with_fraction_of_peak(row, flops * ops["nfe_per_image"], "images_per_second", peak["flops_per_second"])
        log(f"{row['name']}: {row['images_per_second']:.1f} img/s, {row['fraction_of_peak']:.1%} of peak")
    return {"batch_size": batch_size, "operators": ops, "variants": variants}


SAMPLING_COLUMNS = (
    ("sampler", "name", ""),
    ("steps", "num_inference_steps", "d"),
    ("NFE/img", "nfe_per_image", ".0f"),
    ("img/s", "images_per_second", ".3g"),
    ("forwards/s", "forwards_per_second", ".1f"),
    ("GFLOP/s", "achieved_gflops", ".2f"),
    ("% of peak", "percent_of_peak", ".1f"),
)
TRAINING_COLUMNS = (
    ("loop", "name", ""),
    ("img/s (steady state)", "images_per_second", ".1f"),
    ("overhead vs bare", "overhead_vs_bare_percent", "+.1f"),
    ("GFLOP/s", "achieved_gflops", ".2f"),
    ("% of peak", "percent_of_peak", ".1f"),
)


def _with_units(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    def scaled(value: float | None, factor: float) -> float | None:
        return None if value is None else value * factor

    return [
        r
        | {
            "achieved_gflops": scaled(r["achieved_flops_per_second"], 1e-9),
            "percent_of_peak": scaled(r["fraction_of_peak"], 100),
        }
        for r in rows
    ]


def _training_markdown(t: dict[str, Any]) -> list[str]:
    overhead = t["overhead_percent"]
    notes = [f"**Note:** {n}." for n in t.get("notes", [])]
    return [
        "## Training",
        "",
        *notes,
        *([""] if notes else []),
        f"Batch {t['batch_size']}, {t['num_training_images']} training images, EMA {'on' if t['use_ema'] else 'off'}"
        f"; steady state from {t['steps_short_long'][1]} - {t['steps_short_long'][0]} steps (differenced), "
        f"median of {t['repeats']}; forward + backward {t['flops_per_image_forward_backward'] / 1e6:.1f} MFLOP "
        "per image.",
        "",
        "**Overhead of train_cfg.py vs the bare loop: "
        + ("-" if overhead is None else f"{overhead:+.1f}%")
        + "** (seconds per image relative to the bare loop's; target <= 10%).",
        "",
        markdown_table(_with_units(t["rows"]), TRAINING_COLUMNS),
        "",
    ]


def compute_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: machine, FLOPs, peak, the sampling table and the training table."""
    m, p, s = report["machine"], report["peak"], report["settings"]
    tf32 = (
        "- On this GPU cuDNN may run the convolutions in TF32 (torch.backends.cudnn.allow_tf32), while the peak is a "
        "plain fp32 matmul: fractions of peak are relative to fp32."
    )
    lines = [
        "# Compute efficiency",
        "",
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, device "
        f"{m['device']}{', ' + m['gpu'] if m.get('gpu') else ''}, 1-min load {m.get('load_average_1min')}.",
        "",
        f"- UNet ({s['unet_parameters'] / 1e6:.2f}M parameters): **{report['flops_per_forward'] / 1e6:.1f} MFLOP per "
        "forward** at batch 1 (FlopCounterMode: matmuls and convolutions).",
        f"- Measured peak: **{p['flops_per_second'] / 1e9:.1f} GFLOP/s** ({p['n']}^3 fp32 matmul, best of "
        f"{p['reps']}; median {p['median_flops_per_second'] / 1e9:.1f}).",
        "",
        *([tf32] if m.get("tf32_cudnn") else []),
        "",
        "## Sampling",
        "",
        markdown_table(_with_units(report["sampling"]), SAMPLING_COLUMNS),
        "",
    ]
    if report.get("training"):
        lines += _training_markdown(report["training"])
    if report.get("breakdown"):
        lines += _breakdown_markdown(report["breakdown"])
    return "\n".join(lines)


OPERATOR_COLUMNS = (("operators", "kind", ""), ("self seconds", "seconds", ".3f"), ("share", "percent", ".1f"))
VARIANT_COLUMNS = (
    ("call at the same batch", "name", ""),
    ("img/s", "images_per_second", ".1f"),
    ("GFLOP/s", "achieved_gflops", ".1f"),
    ("% of peak", "percent_of_peak", ".1f"),
    ("compile s (cold)", "compile_seconds", ".1f"),
    ("pays after images", "pays_after_images", ",.0f"),
)


def _breakdown_markdown(b: dict[str, Any]) -> list[str]:
    ops = b["operators"]
    conv = ops.get("convolution_fraction_of_peak")
    return [
        f"## Where the time goes at batch {b['batch_size']}",
        "",
        f"One profiled pipeline call ({ops['nfe_per_image']:.0f} NFE per image; the profiler's own overhead included)."
        + (
            ""
            if conv is None
            else f" The convolutions run at **{conv:.0%} of the measured peak** during their own "
            "time; the rest of the time goes to operators that do no counted FLOPs."
        ),  # fmt: skip
        "",
        markdown_table([k | {"percent": 100 * k["share"]} for k in ops["kinds"]], OPERATOR_COLUMNS),
        "",
        markdown_table(_with_units(b["variants"]), VARIANT_COLUMNS),
        "",
    ]


def plot_compute(report: dict[str, Any], path: str | Path) -> Path:
    """Left: % of peak achieved while sampling and training; right: training images/s of each loop."""
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    rows = _with_units(report["sampling"])
    training = report.get("training")
    if training:
        rows += [r | {"name": f"training: {r['name']}"} for r in _with_units(training["rows"])]
    if report.get("breakdown"):
        variants = _with_units(report["breakdown"]["variants"])
        rows += [r | {"name": f"batch {r['batch_size']}: {r['name']}"} for r in variants]
    ax.barh([r["name"] for r in rows], [r["percent_of_peak"] or 0.0 for r in rows], color="tab:blue")
    ax.invert_yaxis()
    ax.set_xlabel(f"% of measured peak ({report['peak']['flops_per_second'] / 1e9:.1f} GFLOP/s)")
    ax.set_title(f"Achieved FLOP/s ({report['flops_per_forward'] / 1e6:.0f} MFLOP per forward)")
    ax.tick_params(axis="y", labelsize=8)
    if training:
        trows = training["rows"]
        colors = ["tab:orange"] + ["tab:gray"] * (len(trows) - 1)
        ax2.bar([r["name"] for r in trows], [r["images_per_second"] or 0.0 for r in trows], color=colors)
        ax2.set_ylabel("training images / s (steady state)")
        overhead = training["overhead_percent"]
        ax2.set_title("train_cfg.py overhead vs bare: " + ("-" if overhead is None else f"{overhead:+.1f}%"))
        ax2.tick_params(axis="x", labelsize=8)
    else:
        ax2.text(0.5, 0.5, "training not measured", ha="center", transform=ax2.transAxes)
    return save_figure(fig, path)


def build_parser(default_out_dir: str | Path = "benchmarks/results") -> argparse.ArgumentParser:
    description = (
        "Compute efficiency: FLOPs per UNet forward, measured peak, achieved fraction while sampling and training; "
        "train_cfg.py throughput vs a bare PyTorch loop."
    )
    p = report_parser(description, default_out_dir, "compute_efficiency", batch_size=False)
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--sampling-batch-sizes", type=int_in(1), nargs="+", default=[1, 32, 250])
    p.add_argument("--min-seconds", type=float_in(0.0), default=5.0, help="time each sampling measurement this long")
    p.add_argument("--textbook-batch-size", type=int_in(0), default=10, help="0: no textbook sampler row")
    p.add_argument("--textbook-timed-steps", type=int_in(1), default=20)
    p.add_argument("--matmul-size", type=int_in(1), default=2048)
    p.add_argument("--matmul-reps", type=int_in(1), default=5)
    p.add_argument("--train-steps", type=int_in(1), nargs=2, default=[10, 40], metavar=("SHORT", "LONG"))
    p.add_argument("--train-repeats", type=int_in(1), default=3, help="rounds of all loops; the median is reported")
    p.add_argument("--no-training", action="store_true", help="skip the training throughput measurement")
    p.add_argument("--no-bare-extras", action="store_true", help="skip the bare loop with EMA/clip/LR schedule")
    p.add_argument(
        "--breakdown-batch-size",
        type=int_in(0),
        default=250,
        help="profile a call at this batch and time micro-batch sizes, layouts and torch.compile (0: skip)",
    )
    p.add_argument("--no-compile", action="store_true", help="leave torch.compile out of the breakdown")
    p.add_argument(
        "--train-args",
        default="",
        help='extra train_cfg.py flags, e.g. "--train_batch_size 128" (the UNet comes from the pipeline)',
    )
    return p


QUICK = {
    "sampling_batch_sizes": [1, 8],
    "min_seconds": 0.2,
    "textbook_batch_size": 2,
    "textbook_timed_steps": 3,
    "matmul_size": 512,
    "matmul_reps": 2,
    "train_steps": [2, 4],
    "train_repeats": 1,
    "breakdown_batch_size": 4,
    "no_compile": True,
}
QUICK_TRAIN_ARGV = ["--train_batch_size", "8", "--max_train_samples", "256"]


def main(argv: list[str] | None = None, default_out_dir: str | Path = "benchmarks/results") -> int:
    """`benchmarks/compute_efficiency.py`: run `run_compute_benchmark`, print, write JSON + Markdown + PNG."""
    parser = build_parser(default_out_dir)
    args = parser.parse_args(argv)
    train_argv = shlex.split(args.train_args)
    if args.quick:
        apply_quick(args, QUICK, parser)
        train_argv = QUICK_TRAIN_ARGV + train_argv  # later flags win

    def run() -> dict[str, Any]:
        parse_training_flags(train_argv)  # the shared flags' checks, before any model work
        pipe = load_pipeline(args.model, None, args.device or default_device())
        return run_compute_benchmark(
            pipe, args.sampling_batch_sizes, args.guidance_scale, args.min_seconds, args.textbook_batch_size,
            args.textbook_timed_steps, args.matmul_size, args.matmul_reps, train_argv,
            None if args.no_training else tuple(args.train_steps), args.train_repeats, not args.no_bare_extras,
            args.breakdown_batch_size, not args.no_compile,
        )  # fmt: skip

    return report_main(args, run, compute_markdown, plot_compute)


if __name__ == "__main__":
    sys.exit(main())
