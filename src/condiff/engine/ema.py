"""The exponential moving average of the trained weights (diffusers' `EMAModel`, with warm-up)."""

from __future__ import annotations

from diffusers.training_utils import EMAModel


def make_ema(args, parameters) -> EMAModel | None:
    """The EMA that `args` asks for (`--use_ema`, `--ema_max_decay`, `--ema_inv_gamma`, `--ema_power`), or None."""
    if not args.use_ema:
        return None
    return EMAModel(
        list(parameters),
        decay=args.ema_max_decay,
        use_ema_warmup=True,
        inv_gamma=args.ema_inv_gamma,
        power=args.ema_power,
    )
