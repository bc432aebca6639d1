"""The model and guidance flags that `condiff generate` and `condiff evaluate` share (parsed before torch loads)."""

from __future__ import annotations

import argparse

from condiff.argtypes import float_in, int_in
from condiff.options import PIPELINES, SAMPLERS

# pipelines whose call takes corrector_steps / corrector_snr (condiff.pipelines.corrector)
CORRECTOR_PIPELINES = ("class-conditional", "classifier-guided")


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


def positive_snr(text: str) -> float:
    """argparse type: a number in (0, 1]."""
    value = float_in(0.0, 1.0)(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text[:40]!r}")
    return value


def add_corrector_arguments(s: argparse.ArgumentParser) -> None:
    """The Langevin corrector's flags (`condiff generate`)."""
    s.add_argument(
        "--corrector-steps",
        type=int_in(0, 100),
        default=None,
        help="Langevin corrector steps before each sampler step (predictor-corrector, Song et al. 2021; "
        f"{' and '.join(CORRECTOR_PIPELINES)}); each costs one guided network evaluation (default: the model's own, 0)",
    )
    s.add_argument(
        "--corrector-snr",
        type=positive_snr,
        default=None,
        help="the corrector's signal-to-noise ratio in (0, 1] (default: the model's own, 0.16)",
    )


def corrector_kwargs(args: argparse.Namespace) -> dict:
    """The pipeline's corrector arguments from the command line (after --pipeline is resolved), refused for a
    pipeline without a corrector."""
    given = {name: getattr(args, name, None) for name in ("corrector_steps", "corrector_snr")}
    given = {name: value for name, value in given.items() if value is not None}
    if given and args.pipeline not in CORRECTOR_PIPELINES:
        flags = " and ".join(f"--{name.replace('_', '-')}" for name in given)
        need = "need" if len(given) > 1 else "needs"
        raise ValueError(f"{flags} {need} --pipeline {' or '.join(CORRECTOR_PIPELINES)}, not {args.pipeline}")
    return given
