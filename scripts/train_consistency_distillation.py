"""Distil a CFG teacher into a guidance-embedded consistency model (LCM, 1-8 steps) (see `--help`).

accelerate launch scripts/train_consistency_distillation.py --teacher <teacher folder> --output_dir out/mnist-lcm
"""

import sys

from condiff.train import main

if __name__ == "__main__":
    main(["consistency_distillation", *sys.argv[1:]])
