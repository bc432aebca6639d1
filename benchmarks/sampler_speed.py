"""Benchmark 2, sampler speed and quality: the textbook sampler (1000 DDPM steps, two separate forward passes per
step) against condiff's default path and DDIM, DPM-Solver++ 2M, UniPC and Euler at 5, 10, 15 and 25 steps, in one
run: images/s (and the ratio to the textbook sampler), NFE/image, accuracy, Frechet distance.

    python benchmarks/sampler_speed.py                       # the shipped model
    python benchmarks/sampler_speed.py --quick               # smoke run
    python benchmarks/sampler_speed.py --textbook-timed-steps 1000 --textbook-quality-per-class 10

Writes benchmarks/results/sampler_speed.{json,md,png}. The code is `lib/sampler_benchmark.py`.
"""

import sys
from pathlib import Path

from lib.sampler_benchmark import main

if __name__ == "__main__":
    sys.exit(main(default_out_dir=Path(__file__).resolve().parent / "results"))
