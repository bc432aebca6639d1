"""Train the classifier task on condiff's engine (see `--help`).

accelerate launch scripts/train_classifier.py --output_dir out/classifier
"""

import sys

from condiff.train import main

if __name__ == "__main__":
    main(["classifier", *sys.argv[1:]])
