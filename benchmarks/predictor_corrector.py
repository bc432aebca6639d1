"""Predictor-corrector sampling (issue 22): the shipped class-conditional model with each sampler alone and with
Langevin corrector steps, at equal network evaluations per image.

    python benchmarks/predictor_corrector.py --samplers ddpm dpm++2m --budgets 20 50

Writes benchmarks/results/predictor_corrector.{json,md,png}. The code is `lib/corrector_benchmark.py`.
"""

import sys
from pathlib import Path

from lib.corrector_benchmark import main

if __name__ == "__main__":
    sys.exit(main(default_out_dir=Path(__file__).resolve().parent / "results"))
