"""Benchmark of issue 22, negative log-likelihood: the variational bound in bits per dimension of several saved
models on the first N images of the MNIST test split (`condiff.likelihood.bits_per_dim`, one UNet pass per image and
training timestep), with each model's variance kind, prediction type and size; a table and a plot of the bound's
per-timestep terms. Its command line: `benchmarks/likelihood.py`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from condiff.argtypes import int_in
from condiff.evaluation.cli_args import apply_quick, report_parser
from condiff.evaluation.likelihood_cli import (
    DATA,
    NLL_PIPELINES,
    DenoiserFolder,
    evaluate_folder,
    inspect_model,
    mnist_test_images,
)
from condiff.evaluation.reports import (
    Log,
    describe_machine,
    machine_info,
    markdown_table,
    pyplot,
    report_main,
    save_figure,
)

AUTO = "auto"
SHIPPED = ("class-conditional", "classifier-guided")  # the default --models: the shipped models of these kinds


def parse_model_spec(spec: str) -> tuple[str, str]:
    """(folder, label) of "FOLDER[:LABEL]" (default label: the folder's name)."""
    folder, sep, label = spec.rpartition(":")
    if not sep or not folder:
        folder, label = spec, ""
    return folder, label or Path(folder).name


def check_models(specs: Sequence[str], pipelines: Sequence[str] | None) -> list[tuple[DenoiserFolder, str]]:
    """Every model's folder checked before any model work: (what it holds, its label) per `--models` entry."""
    pipelines = list(pipelines or [AUTO] * len(specs))
    if len(pipelines) != len(specs):
        raise ValueError(f"--pipelines needs one entry per --models entry ({len(specs)}), got {len(pipelines)}")
    models = []
    for spec, kind in zip(specs, pipelines, strict=True):
        folder, label = parse_model_spec(spec)
        models.append((inspect_model(folder, None if kind == AUTO else kind, "--models"), label))
    labels = [label for _, label in models]
    if len(set(labels)) != len(labels):
        raise ValueError(f"--models labels must differ (FOLDER:LABEL), got {labels}")
    return models


def run_likelihood_benchmark(
    models: Sequence[tuple[DenoiserFolder, str]],
    num_images: int = 100,
    batch_size: int = 250,
    stride: int = 1,
    seed: int = 0,
    device: str | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """bits/dim +- s.e. of each model on the first `num_images` test images (the same images and seed for all; a
    model with fewer than `stride` + 1 timesteps gets stride T - 1), with the per-timestep terms. JSON-able."""
    images, labels = mnist_test_images(num_images, "--num-images")
    rows = []
    for info, label in models:
        used = min(stride, max(info.num_train_timesteps - 1, 1))
        row = evaluate_folder(info, images, labels, batch_size, used, seed, device)
        rows.append({"label": label} | row)
        log(f"{label}: {row['bits_per_dim']:.4f} bits/dim ({row['variance']}, {row['prediction_type']}, "
            f"{row['seconds_per_image']:.2f} s/image)")  # fmt: skip
    settings = {"num_images": num_images, "split": DATA["name"], "batch_size": batch_size, "stride": stride}
    settings |= {"seed": seed, "clip_denoised": True}
    return {"benchmark": "likelihood", "settings": settings, "machine": machine_info(rows[0]["device"]), "rows": rows}


COLUMNS = (
    ("model", "label", ""),
    ("pipeline", "pipeline", ""),
    ("given", "given", ""),
    ("UNet params (M)", "parameters_m", ".2f"),
    ("variance", "variance", ""),
    ("prediction", "prediction_type", ""),
    ("**bits/dim**", "bits_per_dim", ".4f"),
    ("± s.e.", "standard_error", ".4f"),
    ("decoder L_0", "decoder_bits_per_dim", ".4f"),
    ("timesteps", "timesteps_used", ""),
    ("s / image", "seconds_per_image", ".2f"),
)


def _table_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        r
        | {
            "given": "true class" if r["conditional"] else "-",
            "parameters_m": r["parameters"] / 1e6,
            "timesteps_used": f"{r['num_timesteps_evaluated']} / {r['num_train_timesteps']}",
        }
        for r in rows
    ]


def likelihood_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: what was measured, the table and, for strided runs, that they are estimates."""
    s, rows = report["settings"], report["rows"]
    strided = [f"{r['label']} (stride {r['stride']})" for r in rows if not r["exact"]]
    lines = [
        "# Negative log-likelihood (bits/dim)",
        "",
        f"The variational bound on -log2 p(x) per dimension of the first {s['num_images']} images of the "
        f"{s['split']} (8-bit pixels; the decoder L_0 integrates each pixel's bin), summed over every training "
        f"timestep plus the prior L_T, each term at one x_t ~ q(x_t | x0) (seed {s['seed']}); the model's x0 "
        "clipped to [-1, 1] before its mean. Class-conditional UNets get the true class: log p(x | y), not log p(x). "
        "± s.e.: the standard error over the images.",
        "",
        f"Machine: {describe_machine(report['machine'])}.",
        "",
        markdown_table(_table_rows(rows), COLUMNS),
        "",
    ]
    if strided:
        lines += [
            f"**Estimates, not measurements:** {', '.join(strided)}: every stride-th KL term only, each weighted "
            "to stand for the skipped ones (`--stride`; the decoder and prior terms exact).",
            "",
        ]
    return "\n".join(lines)


def plot_likelihood(report: dict[str, Any], path: str | Path) -> Path:
    """Left: each model's bound term L_t (bits/dim, averaged over the images) against t, log scale; right: bits/dim
    +- s.e. per model."""
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    rows = report["rows"]
    for r in rows:
        points = [(t, v) for t, v in zip(r["timesteps"], r["terms_bits_per_dim"], strict=True) if v > 0]
        ax.plot(
            [t for t, _ in points], [v for _, v in points], marker="." if not r["exact"] else None, label=r["label"]
        )
    ax.set_yscale("log")
    ax.set_xscale("symlog", linthresh=1)  # most of the bound sits at small t; t = 0 (the decoder) stays on the axis
    ax.set_xlabel("training timestep t (t = 0: the decoder L_0; linear below 1, log above)")
    ax.set_ylabel("L_t, bits/dim")
    ax.set_title("The bound's terms")
    ax.legend(fontsize=8)
    errors = [r["standard_error"] or 0.0 for r in rows]
    ax2.bar([r["label"] for r in rows], [r["bits_per_dim"] for r in rows], yerr=errors, capsize=4, color="tab:blue")
    ax2.set_ylabel("bits/dim (± s.e.)")
    ax2.set_title(f"NLL bound, {report['settings']['num_images']} test images")
    ax2.tick_params(axis="x", labelsize=8, rotation=20)
    return save_figure(fig, path)


def build_parser(default_out_dir: str | Path = "benchmarks/results") -> argparse.ArgumentParser:
    description = "Negative log-likelihood bound in bits/dim of saved models on the MNIST test split."
    p = report_parser(description, default_out_dir, "likelihood")
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        metavar="FOLDER[:LABEL]",
        help="saved pipeline folders (default: --model, else the shipped class-conditional and classifier-guided "
        "models)",
    )
    p.add_argument(
        "--pipelines",
        nargs="+",
        choices=(AUTO, *NLL_PIPELINES.values()),
        default=None,
        help="one per --models entry (default: auto, each folder's model_index.json)",
    )
    p.add_argument("--num-images", type=int_in(1), default=100, help="the first N images of the test split")
    p.add_argument("--stride", type=int_in(1), default=1, help="every k-th KL term only (an estimate)")
    return p


QUICK = {"num_images": 4, "stride": 100}


def main(argv: list[str] | None = None, default_out_dir: str | Path = "benchmarks/results") -> int:
    """`benchmarks/likelihood.py`: run `run_likelihood_benchmark`, print, write JSON + Markdown + PNG."""
    parser = build_parser(default_out_dir)
    args = parser.parse_args(argv)
    if args.quick:
        apply_quick(args, QUICK, parser)
    if args.models is None:
        from condiff import shipped_model_path

        args.models = [args.model] if args.model else [f"{shipped_model_path(k)}:shipped {k}" for k in SHIPPED]
    elif args.model:
        parser.error("give the folders with --models (--model is its one-model shorthand)")
    args.model = ", ".join(args.models)  # what report_main stamps into the settings

    def run() -> dict[str, Any]:
        models = check_models(args.models, args.pipelines)
        return run_likelihood_benchmark(models, args.num_images, args.batch_size, args.stride, args.seed, args.device)

    return report_main(args, run, likelihood_markdown, plot_likelihood)


if __name__ == "__main__":
    sys.exit(main())
