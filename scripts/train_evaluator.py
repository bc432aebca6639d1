"""Train the MNIST evaluator, the clean-image classifier behind condiff's accuracy and Frechet distance (`--help`).

python scripts/train_evaluator.py --output_dir out/evaluator
"""

import sys

from condiff.train import main

if __name__ == "__main__":
    main(["evaluator", *sys.argv[1:]])
