"""Train the latent_cfg task on condiff's engine (see `--help`).

accelerate launch scripts/train_latent_cfg.py --output_dir out/latent --vae out/vae
"""

import sys

from condiff.train import main

if __name__ == "__main__":
    main(["latent_cfg", *sys.argv[1:]])
