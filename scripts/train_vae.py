"""Train the vae task on condiff's engine (see `--help`).

accelerate launch scripts/train_vae.py --output_dir out/vae
"""

import sys

from condiff.train import main

if __name__ == "__main__":
    main(["vae", *sys.argv[1:]])
