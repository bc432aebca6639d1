"""Benchmark of issue 22, negative log-likelihood: the variational bound in bits per dimension of saved models on
the MNIST test split, with each model's variance kind, prediction type and size, and the bound's per-timestep terms.

    python benchmarks/likelihood.py                                   # the shipped CFG and classifier-guided UNets
    python benchmarks/likelihood.py --models out/lv:learned out/fixed:fixed --num-images 1000
    python benchmarks/likelihood.py --quick                           # smoke run (strided: an estimate)

Cost: one UNet pass per image and training timestep (1000 per image). Writes benchmarks/results/likelihood.{json,md,
png}. The code is `lib/likelihood_benchmark.py`.
"""

import sys
from pathlib import Path

from lib.likelihood_benchmark import main

if __name__ == "__main__":
    sys.exit(main(default_out_dir=Path(__file__).resolve().parent / "results"))
