"""Train a diffusion model conditioned by concatenation: super-resolution or layout maps (see `--help`).

accelerate launch scripts/train_spatial.py --condition super_resolution --output_dir out/mnist-sr
"""

import sys

from condiff.train import main

if __name__ == "__main__":
    main(["spatial", *sys.argv[1:]])
