"""Prompt adherence of the shipped text-to-image model across held-out phrasing styles, per guidance setting:
accuracy, Frechet distance and FD / same-N floor for each style (`condiff.evaluation.text_prompts.held_out_styles`),
1,000 samples per cell (100 per digit), seed 0, the model's sampler and steps.

    python benchmarks/text_guidance_styles.py                                  # default, w=3 and w=4 on (0.2, 0.7)
    python benchmarks/text_guidance_styles.py --settings 2:0:1 3.5:0.2:0.7 --num-per-class 10   # smoke run

A setting is W:LO:HI (CFG scale W on the noise interval (LO, HI)). Writes JSON lines to
benchmarks/results/text_guidance_styles.jsonl (an existing cell is kept, so a run resumes).
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from condiff import LatentCFGPipeline, shipped_model_path
from condiff.evaluation import evaluate_pipeline
from condiff.evaluation.text_prompts import PromptedPipeline, held_out_styles

KEYS = ("accuracy", "frechet_distance", "floor_matched", "fd_ratio_matched", "nfe_per_image")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", default=["2:0:1", "3:0.2:0.7", "4:0.2:0.7"])
    p.add_argument("--num-per-class", type=int, default=100)
    p.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "text_guidance_styles.jsonl"
    )
    args = p.parse_args()
    settings = [tuple(float(v) for v in s.split(":")) for s in args.settings]
    if any(len(s) != 3 for s in settings):
        p.error("--settings: each setting is W:LO:HI")
    torch.set_num_threads(2)
    pipe = LatentCFGPipeline.from_pretrained(shipped_model_path("latent"))
    pipe.set_progress_bar_config(disable=True)
    done = {(r["w"], tuple(r["interval"]), r["style"], r["num_per_class"]) for r in map(json.loads, _lines(args.out))}
    for w, lo, hi in settings:
        for style, phrasings in held_out_styles().items():
            if (w, (lo, hi), style, args.num_per_class) in done:
                continue
            result = evaluate_pipeline(PromptedPipeline(pipe, phrasings), num_per_class=args.num_per_class, seed=0,
                                       guidance_scale=w, guidance_interval=(lo, hi))  # fmt: skip
            row = {"w": w, "interval": [lo, hi], "style": style, "num_per_class": args.num_per_class}
            row |= {k: result.get(k) for k in KEYS}
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    return 0


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


if __name__ == "__main__":
    sys.exit(main())
