"""The config entries condiff's pipelines share (a call's defaults and a few model settings), checked and normalised
in one place: a pipeline's `__init__` passes its own through `checked_defaults` and registers the result, so each
entry is refused with the same message, naming it, in every pipeline.

Part of the Hub-loadable pipeline code: imports only the standard library and its siblings.
"""

from __future__ import annotations

import math
from typing import Any

from .checks import MAX_IMAGES_PER_CALL, check_positive_int, check_scale
from .corrector import check_corrector_arguments
from .guidance import GUIDANCE_NAMES, check_guidance_arguments
from .labels import normalize_id2label

AUTOGUIDANCE_ENTRIES = ("default_guidance", "autoguidance_cfg_scale", "autoguidance_cfg_interval")
CORRECTOR_ENTRIES = ("default_corrector_steps", "default_corrector_snr")


def _floats(values: Any) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def _positive_int_or_none(name: str, value: Any) -> int | None:
    if value is not None:
        check_positive_int(name, value, MAX_IMAGES_PER_CALL)
    return value


def _scale(name: str, value: Any) -> float:
    check_scale(name, value)
    return float(value)


def _interval(name: str, value: Any) -> list[float]:
    try:
        check_guidance_arguments(1.0, 0.0, value)
    except ValueError as error:  # the shared check names the call's argument; say which config entry it was
        raise ValueError(f"{name}: {error}") from None
    return _floats(value)


def _steps(name: str, value: Any) -> int:
    check_positive_int(name, value)
    return value


def _gate_curve(name: str, curve: Any) -> list[list[float]] | None:
    if curve is not None:
        check_gate_curve(curve)
    return None if curve is None else [[float(t), float(v)] for t, v in curve]


SIMPLE_ENTRIES = {
    "id2label": lambda name, value: normalize_id2label(value),
    "default_num_inference_steps": _steps,
    "default_guidance_interval": _interval,
    "default_classifier_scale": _scale,
    "gated_cfg_threshold": _scale,
    "micro_batch_size": _positive_int_or_none,
    "guidance_scale_range": lambda name, value: _floats(value),
    "gated_cfg_curve": _gate_curve,
}


def checked_defaults(**given: Any) -> dict[str, Any]:
    """The config entries `given`, checked (a ValueError names the bad one) and normalised to JSON types. Known:
    `SIMPLE_ENTRIES`, `default_guidance_scale` (None allowed; inside `guidance_scale_range` when given), the three
    autoguidance entries (together) and the two corrector entries (together)."""
    out = {}
    for name, value in given.items():
        if name in SIMPLE_ENTRIES:
            out[name] = SIMPLE_ENTRIES[name](name, value)
    if "default_guidance_scale" in given:
        scale = given["default_guidance_scale"]
        check_default_guidance_scale(scale, given.get("guidance_scale_range"))
        out["default_guidance_scale"] = None if scale is None else float(scale)
    if "default_guidance" in given:
        out.update(autoguidance_defaults(*(given[k] for k in AUTOGUIDANCE_ENTRIES)))
    if "default_corrector_steps" in given:
        steps, snr = (given[k] for k in CORRECTOR_ENTRIES)
        check_corrector_arguments(steps, snr, prefix="default_")
        out.update(default_corrector_steps=int(steps), default_corrector_snr=float(snr))
    unknown = set(given) - set(out)
    if unknown:
        raise TypeError(f"checked_defaults does not know the config entries {sorted(unknown)}")
    return out


def autoguidance_defaults(default_guidance: str, cfg_scale: float, cfg_interval: tuple | list) -> dict[str, Any]:
    """The config entries of a pipeline that can be autoguided, checked: the call's default guidance (one of
    `GUIDANCE_NAMES`) and the CFG scale and interval added on top of autoguidance."""
    if default_guidance not in GUIDANCE_NAMES:
        raise ValueError(f"default_guidance must be one of {GUIDANCE_NAMES}, got {default_guidance!r}")
    check_scale("autoguidance_cfg_scale", cfg_scale)
    _interval("autoguidance_cfg_interval", cfg_interval)
    return {
        "default_guidance": default_guidance,
        "autoguidance_cfg_scale": float(cfg_scale),
        "autoguidance_cfg_interval": _floats(cfg_interval),
    }


def check_default_guidance_scale(scale: float | None, scale_range: tuple | list | None) -> None:
    """`default_guidance_scale`: None, or a finite number >= 0 inside the trained `guidance_scale_range`."""
    if scale is None:
        return
    check_scale("default_guidance_scale", scale)
    if scale_range is not None and not scale_range[0] <= scale <= scale_range[1]:
        raise ValueError(f"default_guidance_scale must lie in guidance_scale_range {list(scale_range)}, got {scale}")


def check_gate_curve(curve: Any) -> None:
    """A gated-CFG curve: at least two (timestep, value) pairs, timesteps >= 0, values finite and > 0."""
    try:
        pairs = [(float(t), float(v)) for t, v in curve]
    except (TypeError, ValueError):
        raise ValueError(f"gated_cfg_curve must be a list of (timestep, median rms) pairs, got {curve!r:.80}") from None
    if len(pairs) < 2 or any(t < 0 or not math.isfinite(v) or v <= 0 for t, v in pairs):
        raise ValueError("gated_cfg_curve needs >= 2 (timestep >= 0, value > 0) pairs")
