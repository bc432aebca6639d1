"""Latent text-to-image benchmark (issue 9): prompt adherence over a guidance sweep, attribute control (thick vs
thin, left vs right slant, negative prompts) and speed against the pixel-space CFG pipeline, all in one run.

    python benchmarks/latent_cfg.py --model <LatentCFGPipeline folder>            # default: the shipped one
    python benchmarks/latent_cfg.py --quick                                        # a smoke run, not a result

Prompts are held-out phrasings (`condiff.captions.evaluation_prompts` / `attribute_prompts`), never seen verbatim in
training. Writes benchmarks/results/latent_cfg.{json,md,png}; the code is `condiff.evaluation.text_report`. One
setting of a text model, from an install: `condiff evaluate --pipeline latent [--attributes N]`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from condiff.evaluation.text_report import run_benchmark

RESULTS = Path(__file__).resolve().parent / "results"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="LatentCFGPipeline folder (default: shipped)")
    p.add_argument(
        "--cfg-model", default=None, help="pixel-space CFG pipeline folder for the speed row (default: shipped)"
    )
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 3.0, 5.0, 7.5])
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--num-per-class", type=int, default=100)
    p.add_argument("--attribute-per-digit", type=int, default=50, help="images per digit and attribute word")
    p.add_argument("--attribute-scale", type=float, default=None, help="guidance scale of the attribute runs (default: "
                   "the model's default)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--quick", action="store_true", help="5 per class, 5 per attribute word: a smoke run")
    p.add_argument("--name", default="latent_cfg")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    run_benchmark(parse(argv), RESULTS, "python benchmarks/latent_cfg.py " + " ".join(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
