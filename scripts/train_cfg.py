"""Train a class-conditional diffusion model with classifier-free guidance (see `--help`).

accelerate launch scripts/train_cfg.py --output_dir out/mnist-cfg
"""

import sys

from condiff.train import main

if __name__ == "__main__":
    main(["cfg", *sys.argv[1:]])
