"""Learned vs fixed variance (issue 22): unguided ancestral DDPM FD at 25 and 50 steps and classifier guidance's
default path (DDPM mean shift) for unconditional UNets with fixed and with learned variance.

    python benchmarks/learned_variance.py --models benchmarks/models/mnist-classifier-guided-fixed:fixed \
        out/mnist-uncond-lv:learned

Writes benchmarks/results/learned_variance.{json,md,png}. The code is `lib/variance_benchmark.py`.
"""

import sys
from pathlib import Path

from lib.variance_benchmark import main

if __name__ == "__main__":
    sys.exit(main(default_out_dir=Path(__file__).resolve().parent / "results"))
