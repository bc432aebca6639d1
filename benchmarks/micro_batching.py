"""Micro-batching benchmark (issue 10): one large request (default 1,000 images) at several `micro_batch_size`
values and as one batch, in one run: images/s, the ratio to one batch, and the largest pixel difference to the
one-batch images (per-image generators: every size must give the same images).

    python benchmarks/micro_batching.py                    # the shipped CFG model, its default path
    python benchmarks/micro_batching.py --quick            # smoke run

Writes benchmarks/results/micro_batching.{json,md,png}; the code is `condiff.evaluation.micro_batching`.
"""

import sys
from pathlib import Path

from condiff.evaluation.micro_batching import main

if __name__ == "__main__":
    sys.exit(main(default_out_dir=Path(__file__).resolve().parent / "results"))
