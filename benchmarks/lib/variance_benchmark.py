"""Benchmark of issue 22, learned vs fixed variance in sampling: for unconditional UNets (the shipped classifier-guided
model's until issue 22, with DDPM's fixed posterior variance, and one that learned its variance), the Frechet distance
of unguided ancestral DDPM sampling at a few step counts, and classifier guidance's default path (DDPM mean shift with
the `--guide` folder's noise-aware classifier, whose Sigma is the learned one when the UNet has it). Its command line:
`benchmarks/learned_variance.py`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from condiff.argtypes import float_in, int_in
from condiff.evaluation.cli_args import apply_quick, report_parser
from condiff.evaluation.likelihood_cli import inspect_model
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
from lib.likelihood_benchmark import parse_model_spec

# the guided rows' classifier, scale and steps: the classifier-guided folder shipped until issue 22 (fixed variance,
# the 214k-parameter classifier, s 5, 25 steps), kept so that the published table reproduces
REFERENCE_CG = Path(__file__).resolve().parents[1] / "models" / "mnist-classifier-guided-fixed"


def guided_pipeline(folder: Path, base: Any) -> Any:
    """A `ClassifierGuidedPipeline` of `folder`'s UNet with ancestral DDPM on its own schedule and variance (fixed
    or learned_range), and `base`'s classifier and class names."""
    import diffusers
    from condiff.pipelines import ClassifierGuidedPipeline

    from condiff.models import scheduler_for

    info = inspect_model(str(folder), None, "--models")
    unet = getattr(diffusers, info.unet_config["_class_name"]).from_pretrained(
        folder, subfolder="unet", use_safetensors=True
    )
    scheduler = scheduler_for("ddpm", diffusers.DDPMScheduler.load_config(folder, subfolder="scheduler"))
    pipe = ClassifierGuidedPipeline(
        unet=unet.eval().to(base.device), scheduler=scheduler, classifier=base.classifier, id2label=base.id2label,
        default_num_inference_steps=base.config.default_num_inference_steps,
        default_classifier_scale=base.config.default_classifier_scale,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_variance_benchmark(
    models: Sequence[tuple[str, str]],
    steps: Sequence[int] = (25, 50),
    num_per_class: int = 100,
    batch_size: int = 250,
    seed: int = 0,
    classifier_scale: float | None = None,
    guided_steps: int | None = None,
    device: str | None = None,
    log: Log = print,
    guide: str | Path = REFERENCE_CG,
) -> dict[str, Any]:
    """Rows per (model, setting): unguided DDPM at each of `steps` (FD over the same-N floor) and the classifier-
    guided default (accuracy, FD ratio) with `guide`'s classifier (and its scale and steps unless given).
    `models`: (folder, label) pairs. JSON-able."""
    from condiff.loading import load_pipeline

    base = load_pipeline(str(guide), None, device, pipeline="classifier-guided")
    scale = base.config.default_classifier_scale if classifier_scale is None else classifier_scale
    guided = guided_steps or base.config.default_num_inference_steps
    rows = []
    for folder, label in models:
        pipe = guided_pipeline(Path(folder), base)
        variance = pipe.scheduler.config.variance_type
        settings = [(f"unguided, DDPM {n} steps", n, 0.0) for n in steps]
        settings.append((f"classifier guidance s {scale:g}, DDPM {guided} steps, mean shift", guided, scale))
        for name, n, s in settings:
            result = evaluate_pipeline(pipe, None, num_per_class, n, batch_size, seed, classifier_scale=s)
            row = {"model": label, "folder": str(folder), "variance": variance, "setting": name, "steps": n,
                   "classifier_scale": s, "guided": s > 0} | {k: result[k] for k in RESULT_KEYS}  # fmt: skip
            rows.append(row)
            log(f"{label} {name}: accuracy {row['accuracy']:.1%}, FD/floor {row['fd_ratio_matched']:.3f}")
    settings = {"steps": list(steps), "num_per_class": num_per_class, "batch_size": batch_size, "seed": seed,
                "classifier_scale": scale, "guided_steps": guided, "guide": str(guide)}  # fmt: skip
    return {"benchmark": "learned_variance", "settings": settings, "machine": machine_info(device or "cpu"),
            "rows": rows}  # fmt: skip


RESULT_KEYS = ("accuracy", "frechet_distance", "fd_ratio_matched", "nfe_per_image", "images_per_second")
COLUMNS = (
    ("model", "model", ""),
    ("variance", "variance", ""),
    ("setting", "setting", ""),
    ("accuracy (guided rows)", "shown_accuracy", ".1%"),
    ("FD", "frechet_distance", ".3f"),
    ("FD / same-N floor", "fd_ratio_matched", ".3f"),
    ("NFE", "nfe_per_image", ".0f"),
)


def variance_markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    rows = [r | {"shown_accuracy": r["accuracy"] if r["guided"] else None} for r in report["rows"]]
    return "\n".join([
        "# Learned vs fixed variance: ancestral sampling and classifier guidance",
        "",
        describe_machine(report["machine"]),
        "",
        f"{s['num_per_class'] * 10} samples per row (seed {s['seed']}), condiff's MNIST evaluator. Unguided rows: "
        "accuracy is not meaningful (the labels are not used), FD is. Guided rows: the noise-aware classifier of "
        f"{Path(s.get('guide', 'the shipped folder')).name}, scale {s['classifier_scale']:g}, DDPM mean shift "
        "(x_(t-1) ~ N(mu + s Sigma g, Sigma), with the UNet's Sigma when it learned one).",
        "",
        markdown_table(rows, COLUMNS),
        "",
    ])  # fmt: skip


def plot_variance(report: dict[str, Any], path: str | Path) -> Path:
    """FD over the floor of the unguided rows against DDPM steps, one line per model."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for model in dict.fromkeys(r["model"] for r in report["rows"]):
        mine = [r for r in report["rows"] if r["model"] == model and not r["guided"]]
        ax.plot([r["steps"] for r in mine], [r["fd_ratio_matched"] for r in mine], marker="o", label=model)
    ax.set_xlabel("ancestral DDPM steps")
    ax.set_ylabel("FD / same-N floor (unguided)")
    ax.legend()
    return save_figure(fig, path)


def build_parser(default_out_dir: str | Path = "benchmarks/results") -> argparse.ArgumentParser:
    p = report_parser("Learned vs fixed variance: ancestral DDPM FD and classifier guidance.", default_out_dir,
                      "learned_variance")  # fmt: skip
    p.add_argument("--models", nargs="+", required=True, help="FOLDER[:LABEL] of unconditional models (a saved "
                   "DDPMPipeline or classifier-guided pipeline folder)")  # fmt: skip
    p.add_argument("--steps", type=int_in(1, 1000), nargs="+", default=[25, 50])
    p.add_argument("--num-per-class", type=int_in(1), default=100)
    p.add_argument("--guide", type=Path, default=REFERENCE_CG, help="the classifier-guided folder whose classifier "
                   "guides (default: the one shipped before issue 22, benchmarks/models/)")  # fmt: skip
    p.add_argument("--classifier-scale", type=float_in(0.0), default=None, help="default: the --guide folder's")
    p.add_argument("--guided-steps", type=int_in(1, 1000), default=None, help="default: the --guide folder's")
    return p


QUICK = {"steps": [2], "num_per_class": 2, "guided_steps": 2}


def main(argv: list[str] | None = None, default_out_dir: str | Path = "benchmarks/results") -> int:
    parser = build_parser(default_out_dir)
    args = parser.parse_args(argv)
    if args.quick:
        apply_quick(args, QUICK, parser)

    def run() -> dict[str, Any]:
        models = [parse_model_spec(spec) for spec in args.models]
        for folder, _ in models:
            inspect_model(folder, None, "--models")  # every folder checked before any sampling
        inspect_model(str(args.guide), "classifier-guided", "--guide")
        return run_variance_benchmark(models, args.steps, args.num_per_class, args.batch_size, args.seed,
                                      args.classifier_scale, args.guided_steps, args.device,
                                      guide=args.guide)  # fmt: skip

    return report_main(args, run, variance_markdown, plot_variance)


if __name__ == "__main__":
    sys.exit(main())
