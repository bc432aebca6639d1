"""The guidance frontier on the shipped class-conditional model: accuracy against Frechet distance / same-N floor for
CFG, CFG on an interval, autoguidance (with the shipped guide_unet), autoguidance on an interval, autoguidance + CFG,
diffusers' APG and CFG-Zero*, and classifier guidance + CFG (the shipped noise-aware classifier), each over a sweep of
its scale; 1,000 samples per point (100 per class), seed 0 for every point, the model's DPM-Solver++ at 10 steps and
CFG's interval (0.3, 0.6) (its defaults until gated CFG, measured here too at its own 14 steps, became the default).

    python benchmarks/guidance_frontier.py                 # the published run (resumes from the .jsonl file)
    python benchmarks/guidance_frontier.py --num-per-class 10 --out-dir /tmp/frontier   # smoke run

Writes <out-dir>/guidance_frontier.{jsonl,json,md,png}. The code is `condiff.evaluation.frontier`.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from condiff.pipelines.noise_aware_classifier import NoiseAwareClassifier

from condiff import ClassConditionalDDPMPipeline, ClassifierGuidedPipeline, shipped_model_path
from condiff.evaluation import evaluate_pipeline
from condiff.evaluation.frontier import default_methods, frontier_markdown, measure, plot_frontier, step_window

FRONTIER_STEPS, FRONTIER_INTERVAL = 10, (0.3, 0.6)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--num-per-class", type=int, default=100)
    p.add_argument("--methods", nargs="*", default=None, help="names of the methods to run (default: all)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ClassConditionalDDPMPipeline.from_pretrained(shipped_model_path())
    if cfg.guide_unet is None:
        print("error: the shipped model has no guide_unet", file=sys.stderr)
        return 2
    # the 214k-parameter noise-aware classifier the published frontier used (alone; the shipped classifier-guided
    # folder has guided with a product of two classifiers since issue 22)
    classifier_folder = shipped_model_path().parent / "mnist-noisy-classifier"
    classifier = NoiseAwareClassifier.from_pretrained(classifier_folder).eval()
    # the published frontier's sampler and interval (the model's defaults until gated CFG became its default); a
    # method that names its own steps (gated CFG, CFG at 14 steps) keeps them
    steps, interval = FRONTIER_STEPS, FRONTIER_INTERVAL
    cg = ClassifierGuidedPipeline(cfg.unet, cfg.scheduler, classifier, default_num_inference_steps=steps)
    for pipe in (cfg, cg):
        pipe.set_progress_bar_config(disable=True)
    # autoguidance's own interval and the CFG scale on top: the best of the probes before this run (issue 20 note)
    cfg.scheduler.set_timesteps(steps)
    window = step_window(cfg.scheduler.timesteps, cfg.scheduler.config.num_train_timesteps, interval)
    methods = default_methods(interval, ag_interval=(0.3, 0.6), ag_cfg=2.0, window=window)
    methods = [m for m in methods if args.methods is None or m.name in args.methods]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    points = args.out_dir / "guidance_frontier.jsonl"
    rows = []

    def evaluate(pipe, **call):
        return evaluate_pipeline(pipe, **{"num_inference_steps": steps, **call})

    for row in measure({"cfg": cfg, "cg": cg}, methods, points, evaluate, args.num_per_class):
        rows.append(row)
        print(json.dumps(row), flush=True)
    scheduler = type(cfg.scheduler).__name__
    header = (f"# Guidance frontier: shipped MNIST model, {scheduler} {steps} steps, {10 * args.num_per_class} "
              "samples per point, seed 0 (`python benchmarks/guidance_frontier.py`)")  # fmt: skip
    (args.out_dir / "guidance_frontier.md").write_text(frontier_markdown(rows, header))
    (args.out_dir / "guidance_frontier.json").write_text(json.dumps(rows, indent=1) + "\n")
    plot_frontier(rows, args.out_dir / "guidance_frontier.png")
    print((args.out_dir / "guidance_frontier.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
