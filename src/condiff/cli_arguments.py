"""The model and guidance flags that `condiff generate` and `condiff evaluate` share (parsed before torch loads)."""

from __future__ import annotations

import argparse

from condiff.argtypes import float_in, int_in
from condiff.options import PIPELINES, SAMPLERS


def add_model_arguments(s: argparse.ArgumentParser) -> None:
    """Options shared by generate and evaluate."""
    s.add_argument(
        "--pipeline",
        choices=PIPELINES,
        default=None,
        help="class-conditional (CFG), classifier-guided (an unconditional model steered by a classifier), latent "
        "(text-to-image latent diffusion), super-resolution or layout (generate only, from --image); default: latent "
        "with --prompt, else class-conditional",
    )
    s.add_argument(
        "--model", default=None, help="saved pipeline folder or Hub id (default: the shipped MNIST model of --pipeline)"
    )
    s.add_argument(
        "--fast",
        action="store_true",
        help="the shipped one-step generator of the class-conditional model (one network evaluation per image; "
        "guidance scales 1-2) instead of --model",
    )
    s.add_argument("--scheduler", choices=sorted(SAMPLERS), default=None, help="sampler (default: the model's own)")
    s.add_argument(
        "--steps", type=int_in(1, 10_000), default=None, help="inference steps (default: the model's own, 14 shipped)"
    )
    s.add_argument(
        "--guidance",
        choices=("cfg", "autoguidance", "gated_cfg"),
        default=None,
        help="cfg (classifier-free guidance), autoguidance (the model guided by its smaller guide_unet; Karras et "
        "al. 2024) or gated_cfg (CFG only for the images whose condition still pulls hard; needs the model's gate "
        "curve); default: the model's own",
    )
    s.add_argument(
        "--guidance-interval",
        nargs=2,
        type=float_in(0.0, 1.0),
        default=None,
        metavar=("LO", "HI"),
        help="fractions of the noise range where guidance applies, e.g. 0.3 0.6 (default: the model's own; 0.45 0.75 "
        "for the shipped model)",
    )
    s.add_argument(
        "--guidance-scale",
        type=float_in(0.0),
        default=None,
        help="guidance scale w: CFG 0 unconditional, 1 conditional, > 1 guided; autoguidance 1 = the model alone "
        "(default: the model's own, 2.5 for the shipped model; for classifier-guided only with a class-conditional "
        "UNet)",
    )
    s.add_argument(
        "--classifier-scale",
        type=float_in(0.0),
        default=None,
        help="classifier guidance scale s (classifier-guided; default: the model's own)",
    )
    s.add_argument(
        "--guidance-method",
        choices=("mean_shift", "score"),
        default=None,
        help="classifier-guided: mean_shift (DDPM) or score (any sampler); default: by the sampler",
    )
    s.add_argument("--seed", type=int_in(0, 2**64 - 1), default=0, help="random seed")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out file (without it: refuse)")
    s.add_argument("--quiet", action="store_true", help="no progress bars or diffusers log messages")
