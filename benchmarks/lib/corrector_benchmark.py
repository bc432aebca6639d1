"""Benchmark of issue 22, predictor-corrector sampling: the shipped class-conditional model sampled by a predictor
alone and by the same predictor with Langevin corrector steps at equal network evaluations per image (half the
predictor steps, one corrector step each), for several schedulers and budgets. Its command line:
`benchmarks/predictor_corrector.py`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from condiff.argtypes import float_in, int_in
from condiff.evaluation.cli_args import apply_quick, report_parser
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


def pc_settings(budgets: Sequence[int], corrector_steps: int) -> list[tuple[int, int]]:
    """(predictor steps, corrector steps per predictor step) pairs at each NFE budget: the predictor alone, then
    budget / (1 + corrector_steps) predictor steps with `corrector_steps` each (budgets that do not divide are
    skipped for the corrector)."""
    rows = []
    for budget in budgets:
        rows.append((budget, 0))
        if budget % (1 + corrector_steps) == 0:
            rows.append((budget // (1 + corrector_steps), corrector_steps))
    return rows


def run_corrector_benchmark(
    pipe: Any,
    samplers: Sequence[str] = ("ddpm", "dpm++2m"),
    budgets: Sequence[int] = (20, 50),
    corrector_steps: int = 1,
    snr: float = 0.16,
    guidance_scale: float = 1.0,
    num_per_class: int = 100,
    batch_size: int = 250,
    seed: int = 0,
    log: Log = print,
) -> dict[str, Any]:
    """One row per (sampler, budget, predictor or predictor-corrector), all on the same seeds; at w = 1 (the
    default) one network evaluation per predictor or corrector step, so NFE per image = the budget. JSON-able."""
    from condiff.models import scheduler_for

    own = pipe.scheduler
    rows = []
    try:
        for name in samplers:
            pipe.scheduler = scheduler_for(name, own.config)
            for steps, corrector in pc_settings(budgets, corrector_steps):
                kwargs = {"corrector_steps": corrector, "corrector_snr": snr} if corrector else {}
                result = evaluate_pipeline(pipe, guidance_scale, num_per_class, steps, batch_size, seed, **kwargs)
                row = {"sampler": name, "predictor_steps": steps, "corrector_steps": corrector,
                       "snr": snr if corrector else None} | {k: result[k] for k in RESULT_KEYS}  # fmt: skip
                rows.append(row)
                log(f"{name} {steps} steps + {corrector} corrector: NFE {row['nfe_per_image']:.0f}, "
                    f"accuracy {row['accuracy']:.1%}, FD/floor {row['fd_ratio_matched']:.3f}")  # fmt: skip
    finally:
        pipe.scheduler = own
    settings = {"samplers": list(samplers), "budgets": list(budgets), "corrector_steps": corrector_steps, "snr": snr,
                "guidance_scale": guidance_scale, "num_per_class": num_per_class, "seed": seed}  # fmt: skip
    return {"benchmark": "predictor_corrector", "settings": settings, "machine": machine_info("cpu"), "rows": rows}


RESULT_KEYS = ("accuracy", "frechet_distance", "fd_ratio_matched", "nfe_per_image", "images_per_second")
COLUMNS = (
    ("sampler", "sampler", ""),
    ("predictor steps", "predictor_steps", "d"),
    ("corrector steps each", "corrector_steps", "d"),
    ("NFE/img", "nfe_per_image", ".0f"),
    ("accuracy", "accuracy", ".1%"),
    ("FD / same-N floor", "fd_ratio_matched", ".3f"),
    ("img/s", "images_per_second", ".1f"),
)


def corrector_markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    return "\n".join([
        "# Predictor-corrector sampling at equal network evaluations",
        "",
        describe_machine(report["machine"]),
        "",
        f"{s['num_per_class'] * 10} samples per row (seed {s['seed']}), guidance scale {s['guidance_scale']:g}, "
        f"Langevin corrector with signal-to-noise ratio {s['snr']:g}; each corrector step costs one network "
        "evaluation, counted in NFE.",
        "",
        markdown_table(report["rows"], COLUMNS),
        "",
    ])  # fmt: skip


def plot_corrector(report: dict[str, Any], path: str | Path) -> Path:
    """FD over the floor against NFE per image: one line for each sampler alone and one with the corrector."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in report["settings"]["samplers"]:
        for corrected in (False, True):
            mine = [r for r in report["rows"] if r["sampler"] == name and bool(r["corrector_steps"]) == corrected]
            if mine:
                label = f"{name}{' + corrector' if corrected else ''}"
                ax.plot([r["nfe_per_image"] for r in mine], [r["fd_ratio_matched"] for r in mine], marker="o",
                        linestyle="--" if corrected else "-", label=label)  # fmt: skip
    ax.set_xlabel("network evaluations per image")
    ax.set_ylabel("FD / same-N floor")
    ax.legend()
    return save_figure(fig, path)


def build_parser(default_out_dir: str | Path = "benchmarks/results") -> argparse.ArgumentParser:
    p = report_parser("Predictor vs predictor-corrector sampling at equal NFE.", default_out_dir, "predictor_corrector")
    p.add_argument("--samplers", nargs="+", choices=sorted(SAMPLERS), default=["ddpm", "dpm++2m"])
    p.add_argument("--budgets", type=int_in(2), nargs="+", default=[20, 50], help="NFE per image of each pair")
    p.add_argument("--corrector-steps", type=int_in(1, 100), default=1)
    p.add_argument("--snr", type=float_in(0.0, 1.0), default=0.16)
    p.add_argument("--guidance-scale", type=float_in(0.0), default=1.0)
    p.add_argument("--num-per-class", type=int_in(1), default=100)
    return p


QUICK = {"budgets": [4], "num_per_class": 2}


def main(argv: list[str] | None = None, default_out_dir: str | Path = "benchmarks/results") -> int:
    parser = build_parser(default_out_dir)
    args = parser.parse_args(argv)
    if args.quick:
        apply_quick(args, QUICK, parser)

    def run() -> dict[str, Any]:
        from condiff.loading import load_pipeline

        pipe = load_pipeline(args.model, None, args.device)
        pipe.set_progress_bar_config(disable=True)
        return run_corrector_benchmark(pipe, args.samplers, args.budgets, args.corrector_steps, args.snr,
                                       args.guidance_scale, args.num_per_class, args.batch_size, args.seed)  # fmt: skip

    return report_main(args, run, corrector_markdown, plot_corrector)


if __name__ == "__main__":
    sys.exit(main())
