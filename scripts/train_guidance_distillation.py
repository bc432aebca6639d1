"""Distil a CFG teacher into a guidance-embedded student (see `--help`).

accelerate launch scripts/train_guidance_distillation.py --teacher <teacher folder> --output_dir out/mnist-guided
"""

import sys

from condiff.train import main

if __name__ == "__main__":
    main(["guidance_distillation", *sys.argv[1:]])
