"""Train the unconditional task on condiff's engine (see `--help`).

accelerate launch scripts/train_unconditional.py --output_dir out/unconditional
"""

import sys

from condiff.train import main

if __name__ == "__main__":
    main(["unconditional", *sys.argv[1:]])
