"""Distribution matching distillation: a one-step generator of a CFG teacher (see `--help`).

accelerate launch scripts/train_distribution_matching.py --teacher <CFG teacher folder> \
    --student_init <1-step student folder> --output_dir out/mnist-dmd
"""

import sys

from condiff.train import main

if __name__ == "__main__":
    main(["distribution_matching", *sys.argv[1:]])
