"""Benchmark of issue 22, the five training targets: class-conditional UNets of one architecture and training budget
that differ only in what the network predicts (epsilon, v, x0, the posterior mean, the score), each sampled by the
same scheduler on the same seeds (unguided and with classifier-free guidance: accuracy, FD over the same-N floor) and
scored by the variational bound in bits/dim on the same test images. Its command line:
`benchmarks/prediction_targets.py`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from condiff.argtypes import float_in, int_in
from condiff.evaluation.cli_args import apply_quick, report_parser
from condiff.evaluation.likelihood_cli import evaluate_folder, inspect_model, mnist_test_images
from condiff.evaluation.reports import (
    Log,
    describe_machine,
    machine_info,
    markdown_table,
    pyplot,
    report_main,
    save_figure,
)
from condiff.evaluation.scoring import evaluate_pipeline
from condiff.options import SAMPLERS
from lib.likelihood_benchmark import parse_model_spec

SAMPLE_KEYS = ("accuracy", "frechet_distance", "fd_ratio_matched", "nfe_per_image")
NLL_KEYS = ("bits_per_dim", "standard_error", "parameters", "seconds_per_image")
# settings that must agree for reports to be merged into one table
COMPARABLE = ("sampler", "steps", "guidance_scale", "num_per_class", "seed", "nll_images")


def trained_target(info: Any) -> str:
    """What the network predicts: the pipeline's `prediction_target` (mean, score) or the scheduler's type."""
    return info.prediction_target or info.scheduler_config.get("prediction_type", "epsilon")


def trained_steps(folder: str | Path) -> int | None:
    """The optimizer steps a trained folder records (its training_summary.json), None when it records none."""
    path = Path(folder) / "training_summary.json"
    return json.loads(path.read_text()).get("global_step") if path.is_file() else None


def run_targets_benchmark(
    models: Sequence[tuple[str, str]],
    sampler: str = "dpm++2m",
    steps: int = 20,
    guidance_scale: float = 3.0,
    num_per_class: int = 100,
    nll_images: int = 32,
    batch_size: int = 250,
    seed: int = 0,
    device: str | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """One row per (folder, label): unguided (w 1) and guided (w `guidance_scale`) accuracy and FD ratio with
    `sampler` at `steps`, and bits/dim +- s.e. on the first `nll_images` test images (all timesteps). JSON-able."""
    from condiff.loading import load_pipeline

    infos = [(inspect_model(folder, "class-conditional", "--models"), label) for folder, label in models]
    images, labels = mnist_test_images(nll_images, "--nll-images")
    rows = []
    for info, label in infos:
        pipe = load_pipeline(str(info.folder), sampler, device)
        pipe.set_progress_bar_config(disable=True)
        row = {"label": label, "folder": str(info.folder), "target": trained_target(info),
               "trained_steps": trained_steps(info.folder)}  # fmt: skip
        for name, w in (("unguided", 1.0), ("guided", guidance_scale)):
            result = evaluate_pipeline(pipe, w, num_per_class, steps, batch_size, seed)
            row |= {f"{name}_{k}": result[k] for k in SAMPLE_KEYS}
            accuracy, ratio = result["accuracy"], result["fd_ratio_matched"]
            log(f"{label} {name} (w {w:g}): accuracy {accuracy:.1%}, FD/floor {ratio:.3f}")
        nll = evaluate_folder(info, images, labels, batch_size, 1, seed, device)
        row |= {k: nll[k] for k in NLL_KEYS}
        log(f"{label}: {nll['bits_per_dim']:.4f} +- {nll['standard_error'] or 0:.4f} bits/dim")
        rows.append(row)
    settings = {"sampler": sampler, "steps": steps, "guidance_scale": guidance_scale, "num_per_class": num_per_class,
                "seed": seed, "nll_images": nll_images, "batch_size": batch_size}  # fmt: skip
    return {"benchmark": "prediction_targets", "settings": settings, "machine": machine_info(device or "cpu"),
            "rows": rows}  # fmt: skip


def merge_reports(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One report of the rows of several runs with the same settings (runs of different models in parallel)."""
    if not reports:
        raise ValueError("--merge needs at least one report")
    first = reports[0]["settings"]
    for report in reports[1:]:
        differ = [k for k in COMPARABLE if report["settings"].get(k) != first.get(k)]
        if differ:
            raise ValueError(f"--merge: reports differ in {differ}; only runs with the same settings share a table")
    rows = [{"trained_steps": trained_steps(row["folder"])} | row for report in reports for row in report["rows"]]
    labels = [row["label"] for row in rows]
    if len(set(labels)) != len(labels):
        raise ValueError(f"--merge: model labels repeat across the reports: {labels}")
    return {"benchmark": "prediction_targets", "settings": dict(first), "machine": reports[0]["machine"],
            "rows": rows, "merged_from": len(reports)}  # fmt: skip


COLUMNS = (
    ("model", "label", ""),
    ("target", "target", ""),
    ("steps trained", "trained_steps", ""),
    ("**bits/dim**", "bits_per_dim", ".3f"),
    ("± s.e.", "standard_error", ".3f"),
    ("unguided accuracy", "unguided_accuracy", ".1%"),
    ("unguided FD / floor", "unguided_fd_ratio_matched", ".3f"),
    ("guided accuracy", "guided_accuracy", ".1%"),
    ("guided FD / floor", "guided_fd_ratio_matched", ".3f"),
    ("NFE (guided)", "guided_nfe_per_image", ".0f"),
)


def targets_markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    return "\n".join([
        "# Training targets: epsilon, v, x0, mean, score",
        "",
        describe_machine(report["machine"]),
        "",
        f"Same UNet, data, seed and training budget; only the target differs. Sampling: {s['sampler']}, "
        f"{s['steps']} steps, {s['num_per_class'] * 10} samples per column (seed {s['seed']}, the same noise for "
        f"every model), unguided = w 1, guided = CFG w {s['guidance_scale']:g}; condiff's MNIST evaluator. "
        f"bits/dim: the variational bound over all timesteps on the first {s['nll_images']} test images, given "
        "their true class (log p(x | y)).",
        "",
        markdown_table(report["rows"], COLUMNS),
        "",
    ])  # fmt: skip


def plot_targets(report: dict[str, Any], path: str | Path) -> Path:
    """bits/dim (± s.e.) and guided FD / floor per target."""
    plt = pyplot()
    rows = report["rows"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    names = [r["label"] for r in rows]
    ax.bar(names, [r["bits_per_dim"] for r in rows], yerr=[r["standard_error"] or 0 for r in rows], capsize=4)
    ax.set_ylabel("bits/dim (± s.e.)")
    ax2.bar(names, [r["guided_fd_ratio_matched"] for r in rows], color="tab:orange", label="guided")
    ax2.plot(names, [r["unguided_fd_ratio_matched"] for r in rows], "ko", label="unguided")
    ax2.set_ylabel("FD / same-N floor")
    ax2.legend()
    return save_figure(fig, path)


def build_parser(default_out_dir: str | Path = "benchmarks/results") -> argparse.ArgumentParser:
    p = report_parser("Training targets compared: FD, accuracy and bits/dim.", default_out_dir, "prediction_targets")
    p.add_argument("--models", nargs="+", default=None, metavar="FOLDER[:LABEL]",
                   help="saved class-conditional pipeline folders, one per target")  # fmt: skip
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="instead of measuring: one table from earlier reports of this benchmark")  # fmt: skip
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default="dpm++2m")
    p.add_argument("--steps", type=int_in(1, 1000), default=20)
    p.add_argument("--guidance-scale", type=float_in(0.0), default=3.0)
    p.add_argument("--num-per-class", type=int_in(1), default=100)
    p.add_argument("--nll-images", type=int_in(1), default=32)
    return p


QUICK = {"steps": 2, "num_per_class": 2, "nll_images": 2}


def main(argv: list[str] | None = None, default_out_dir: str | Path = "benchmarks/results") -> int:
    parser = build_parser(default_out_dir)
    args = parser.parse_args(argv)
    if args.quick:
        apply_quick(args, QUICK, parser)
    if (args.models is None) == (args.merge is None):
        parser.error("give exactly one of --models and --merge")

    def run() -> dict[str, Any]:
        if args.merge:
            return merge_reports([json.loads(Path(p).read_text()) for p in args.merge])
        models = [parse_model_spec(spec) for spec in args.models]
        for folder, _ in models:
            inspect_model(folder, "class-conditional", "--models")  # every folder checked before any sampling
        return run_targets_benchmark(models, args.sampler, args.steps, args.guidance_scale, args.num_per_class,
                                     args.nll_images, args.batch_size, args.seed, args.device)  # fmt: skip

    return report_main(args, run, targets_markdown, plot_targets)


if __name__ == "__main__":
    sys.exit(main())
