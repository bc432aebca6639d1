"""Train the MNIST evaluator (conditional accuracy + Frechet-distance features) and save it.

The defaults reproduce the shipped evaluator in `src/condiff/assets/evaluator`:

    python scripts/train_evaluator.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from condiff.evaluator import train_evaluator

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "src" / "condiff" / "assets" / "evaluator"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight_decay", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_augment", action="store_true", help="disable the random-affine augmentation")
    parser.add_argument("--num_threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    return train_evaluator(
        args.output_dir,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        augment=not args.no_augment,
    )


if __name__ == "__main__":
    main()
