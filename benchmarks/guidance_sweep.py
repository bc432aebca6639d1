"""Benchmark 1, guidance sweep: accuracy, Frechet distance, diversity, NFE/image and images/s for each guidance
scale (and the guidance-rescale and guidance-interval variants) of a saved pipeline.

    python benchmarks/guidance_sweep.py                      # the shipped model, 1,000 samples per setting
    python benchmarks/guidance_sweep.py --quick              # smoke run
    python benchmarks/guidance_sweep.py --model out/mnist-cfg --scales 1 3 5 --num-per-class 20

Writes benchmarks/results/guidance_sweep.{json,md,png} and guidance_sweep_grid.png (the published figures: an
existing file is refused before any model work unless `--overwrite` is given; `condiff sweep` writes into
./condiff-sweep/ instead). The code is `condiff.evaluation.sweep`.
"""

import sys
from pathlib import Path

from condiff.evaluation.sweep import main

if __name__ == "__main__":
    sys.exit(main(default_out_dir=Path(__file__).resolve().parent / "results"))
