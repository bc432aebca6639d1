"""Smoke check of diffusers schedulers on the shipped CFG model: accuracy (condiff's evaluator) of 100 samples, 10 per
digit, for each scheduler made with `Scheduler.from_config(the shipped config, **options)`, 10 steps, seed 0.

    python benchmarks/scheduler_smoke.py DDIMScheduler,HeunDiscreteScheduler:use_exponential_sigmas=True 1.0

100 samples is a smoke test, not a quality figure. A scheduler the pipeline refuses up front (see
`condiff.pipelines.schedules.check_schedule`) prints its refusal. Results: benchmarks/results/scheduler_smoke.txt.
"""

from __future__ import annotations

import argparse
import time

import diffusers
import torch

from condiff import ClassConditionalDDPMPipeline, shipped_model_path
from condiff.evaluator import classifier_accuracy, load_evaluator


def scheduler_spec(spec: str) -> tuple[str, dict]:
    """ "Name:key=value:..." -> (class name, from_config options)."""
    name, *options = spec.split(":")
    parse = lambda v: v == "True" if v in ("True", "False") else v  # noqa: E731
    return name, {k: parse(v) for k, v in (option.split("=", 1) for option in options)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("schedulers", help="comma-separated diffusers scheduler class names, each with :key=value options")
    p.add_argument("guidance_scales", help='comma-separated w, or "default"')
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    pipe = ClassConditionalDDPMPipeline.from_pretrained(shipped_model_path())
    pipe.set_progress_bar_config(disable=True)
    evaluator, base, labels = load_evaluator(), pipe.scheduler.config, list(range(10)) * 10
    for spec in args.schedulers.split(","):
        name, options = scheduler_spec(spec)
        for w in [None if w == "default" else float(w) for w in args.guidance_scales.split(",")]:
            pipe.scheduler = getattr(diffusers, name).from_config(base, **options)
            start = time.time()
            try:
                out = pipe(label=labels, guidance_scale=w, num_inference_steps=args.steps, output_type="pt",
                           generator=torch.Generator().manual_seed(0))  # fmt: skip
            except ValueError as err:
                print(f"{spec} w={w or 'default'} refused: {err}", flush=True)
                continue
            accuracy = classifier_accuracy(evaluator, (out.images * 2 - 1).nan_to_num(0), labels)
            print(f"{spec} w={w or 'default'} acc={accuracy:.2f} nan={bool(out.images.isnan().any())} "
                  f"nfe={out.nfe_per_image:.0f} s={time.time() - start:.1f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
