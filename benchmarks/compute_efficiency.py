"""Benchmark 3, compute efficiency: FLOPs per UNet forward, the measured fp32 matmul peak, the achieved fraction
of it while sampling and training, and train_cfg.py's steady-state training throughput against a bare PyTorch loop
over the same UNet, batch and data (target: overhead <= 10%).

    python benchmarks/compute_efficiency.py                  # the shipped model's UNet
    python benchmarks/compute_efficiency.py --quick          # smoke run
    python benchmarks/compute_efficiency.py --train-steps 20 80 --train-repeats 5

Writes benchmarks/results/compute_efficiency.{json,md,png}. The code is `lib/compute_benchmark.py`.
"""

import sys
from pathlib import Path

from lib.compute_benchmark import main

if __name__ == "__main__":
    sys.exit(main(default_out_dir=Path(__file__).resolve().parent / "results"))
