"""Train a class-conditional diffusion model with classifier-free guidance.

    accelerate launch scripts/train_cfg.py --output_dir out/mnist-cfg

All options: `python scripts/train_cfg.py --help`. The code lives in `condiff.training`.
"""

from condiff.training import main

if __name__ == "__main__":
    main()
