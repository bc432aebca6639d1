"""Classifier-guidance benchmark (issue 8): a `classifier_scale` sweep per sampler, then CFG, classifier guidance,
training-free guidance and CG + CFG side by side in one run, and memory across steps.

    python benchmarks/classifier_guidance.py --part sweep     # DDPM (mean shift), DDIM and DPM-Solver++ (score)
    python benchmarks/classifier_guidance.py --part compare   # four methods at matched accuracy
    python benchmarks/classifier_guidance.py --part memory    # memory after each step, guided calls
    python benchmarks/classifier_guidance.py --part sweep --quick   # 5 per class: a smoke run, not a result

Writes benchmarks/results/classifier_guidance_<part>.{json,md,png} (`--out-dir`, `--name`); existing files are
refused before any model work unless `--overwrite` is given. The code is
`condiff.evaluation.guidance_methods`; the models are condiff's shipped ones, and training-free guidance uses a clean
MNIST classifier trained apart from the evaluator that scores the samples (`--guide-classifier`), since guiding with
the judge itself would be graded by the classifier it was optimised against.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from condiff.evaluation.cli_args import check_name, check_new_outputs
from condiff.evaluation.guidance_methods import (
    Setting,
    memory_by_step,
    plot_settings,
    run_settings,
    settings_markdown,
)
from condiff.evaluation.reports import publish, write_report

RESULTS = Path(__file__).resolve().parent / "results"


SWEEP_METHODS = {"ddpm": "mean_shift", "ddim": "score", "dpm++2m": "score"}


def sweep_settings(scales: dict[str, list[float]], steps: dict[str, int]) -> list[Setting]:
    """Each sampler's scales with its method named in the call, so a row labelled "mean shift" cannot silently run
    the score correction (the pipeline refuses a mean shift its scheduler cannot take)."""
    names = {"ddpm": "DDPM, mean shift", "ddim": "DDIM, score", "dpm++2m": "DPM-Solver++, score"}
    return [
        Setting(
            f"CG {names[sampler]}",
            names[sampler],
            "cg",
            sampler,
            steps[sampler],
            {"classifier_scale": s, "guidance_method": SWEEP_METHODS[sampler]},
        )
        for sampler in ("ddpm", "ddim", "dpm++2m")
        for s in scales[sampler]
    ]


def compare_settings(args: argparse.Namespace) -> list[Setting]:
    """Each method at two strengths, on the sampler and step count it is shipped or swept with."""
    cfg_steps, cg = args.compare_steps, args.compare_sampler
    rows = [Setting("CFG (shipped model)", "CFG", "cfg", None, cfg_steps, {"guidance_scale": w}) for w in args.cfg]
    rows += [
        Setting("CG, noise-aware", "CG noise-aware", "cg", cg, args.cg_steps, {"classifier_scale": s}) for s in args.cg
    ]
    rows += [
        Setting("training-free, clean", "training-free", "tfg", cg, args.cg_steps, {"classifier_scale": s})
        for s in args.tfg
    ]
    rows += [
        Setting("CG + CFG", "CG + CFG", "cg_cfg", None, cfg_steps, {"classifier_scale": s, "guidance_scale": w})
        for s, w in args.cg_cfg
    ]
    return rows


def load_pipes(args: argparse.Namespace) -> dict:
    from condiff.pipelines import ClassifierGuidedPipeline

    from condiff.evaluator import MnistClassifier
    from condiff.loading import load_pipeline

    cg = load_pipeline(args.model, pipeline="classifier-guided")
    cfg = load_pipeline(args.cfg_model)
    guide = MnistClassifier.from_pretrained(args.guide_classifier).eval()
    pipes = {"cg": cg, "cfg": cfg}
    pipes["tfg"] = ClassifierGuidedPipeline(cg.unet, cg.scheduler, guide, id2label=cg.id2label)
    pipes["cg_cfg"] = ClassifierGuidedPipeline(cfg.unet, cfg.scheduler, cg.classifier, id2label=cfg.id2label)
    pipes["cg_cfg"].register_to_config(default_guidance_interval=list(cfg.config.default_guidance_interval))
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    return pipes


def memory_report(pipes: dict, steps: int) -> dict:
    from condiff.models import scheduler_for

    rows = []
    for name, key, sampler in (("CG noise-aware, DDPM", "cg", None), ("training-free, DDIM", "tfg", "ddim")):
        pipe = pipes[key]
        original = pipe.scheduler
        pipe.scheduler = scheduler_for(sampler, original.config) if sampler else original
        kwargs = dict(label=list(range(10)) * 10, classifier_scale=2.0, num_inference_steps=steps)
        memory_by_step(pipe, **kwargs | {"num_inference_steps": 3})  # warm-up: allocator pools
        mb = memory_by_step(pipe, generator=torch.Generator().manual_seed(0), **kwargs)
        pipe.scheduler = original
        rows.append({"name": name, "steps": steps, "first_mb": mb[0], "last_mb": mb[-1], "max_mb": max(mb)})
    return {"settings": {"batch": 100, "steps": steps}, "rows": rows}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("sweep", "compare", "memory"), required=True)
    p.add_argument("--model", default=None, help="classifier-guided pipeline folder (default: shipped)")
    p.add_argument("--cfg-model", default=None, help="class-conditional pipeline folder (default: shipped)")
    p.add_argument("--guide-classifier", default="benchmarks/results/guide-classifier")
    p.add_argument("--num-per-class", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--quick", action="store_true", help="5 images per class: a smoke run")
    p.add_argument("--ddpm-scales", type=float, nargs="*", default=[0.0, 10.0, 20.0, 40.0])
    p.add_argument("--ddim-scales", type=float, nargs="*", default=[10.0, 20.0, 40.0])
    p.add_argument("--dpm-scales", type=float, nargs="*", default=[10.0, 20.0, 40.0])
    p.add_argument("--ddpm-steps", type=int, default=25)
    p.add_argument("--ddim-steps", type=int, default=25)
    p.add_argument("--dpm-steps", type=int, default=15)
    p.add_argument("--cfg", type=float, nargs="+", default=[3.0])
    p.add_argument("--cg", type=float, nargs="+", default=[0.0, 20.0])
    p.add_argument("--tfg", type=float, nargs="+", default=[40.0])
    p.add_argument("--cg-cfg", type=lambda t: tuple(map(float, t.split(","))), nargs="+", default=[(10.0, 1.0)])
    p.add_argument("--compare-sampler", default="dpm++2m")
    p.add_argument("--compare-steps", type=int, default=10, help="steps of the CFG rows (the shipped default)")
    p.add_argument("--cg-steps", type=int, default=15, help="steps of the CG and training-free rows")
    p.add_argument("--name", default=None, help="file stem (default: classifier_guidance_<part>[_quick])")
    p.add_argument("--out-dir", type=Path, default=RESULTS, help="where the outputs go (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files (without it: refuse)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    per_class = 5 if args.quick else args.num_per_class
    suffixes = ("json", "md") if args.part == "memory" else ("json", "md", "png")
    try:  # before any model work
        name = check_name(args.name or f"classifier_guidance_{args.part}" + ("_quick" if args.quick else ""))
        check_new_outputs([args.out_dir / f"{name}.{ext}" for ext in suffixes], args.overwrite)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    pipes = load_pipes(args)
    if args.part == "memory":
        report = memory_report(pipes, args.ddpm_steps)
        text = "\n".join(json.dumps(r) for r in report["rows"])
        print(text)
        write_report(args.out_dir, name, report, f"# Memory after each step (MB)\n\n{text}\n")
        return 0
    if args.part == "sweep":
        scales = {"ddpm": args.ddpm_scales, "ddim": args.ddim_scales, "dpm++2m": args.dpm_scales}
        steps = {"ddpm": args.ddpm_steps, "ddim": args.ddim_steps, "dpm++2m": args.dpm_steps}
        settings, title = sweep_settings(scales, steps), "Classifier guidance: classifier_scale sweep"
    else:
        settings, title = compare_settings(args), "CFG vs classifier guidance vs training-free guidance vs CG + CFG"
    report = run_settings(pipes, settings, per_class, args.batch_size)
    report["settings"] |= {
        "quick": args.quick,
        "command": "python benchmarks/classifier_guidance.py " + " ".join(argv or sys.argv[1:]),
    }
    publish(args.out_dir, name, report, settings_markdown(report, title), plot_settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
