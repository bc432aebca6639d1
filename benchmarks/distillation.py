"""Distillation benchmark (issue 10): the textbook sampler, the teacher (default path and plain CFG at fewer steps),
the guidance-distilled and the consistency-distilled students at 1, 2, 4, 8 and 14 network evaluations per image,
in one run: images/s and the ratios to the textbook sampler and to the teacher's default path, accuracy, Frechet
distance; the headline is the fastest row with accuracy >= 0.99 and FD <= 2x the real floor.

    python benchmarks/distillation.py --teacher <folder> --guided <folder> --lcm <folder> --progressive <stage folders>
    python benchmarks/distillation.py --quick --guided <folder> --lcm <folder>      # smoke run

Writes benchmarks/results/distillation.{json,md,png}; the code is `lib/distillation_benchmark.py`.
"""

import sys
from pathlib import Path

from lib.distillation_benchmark import main

if __name__ == "__main__":
    sys.exit(main(default_out_dir=Path(__file__).resolve().parent / "results"))
