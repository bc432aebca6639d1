"""Argument checks shared by every condiff pipeline: counts, step numbers, output types, latents, generators,
callbacks. Each check raises a ValueError/TypeError naming the argument and the allowed values, before any model work.

Part of the Hub-loadable pipeline code: imports only torch, numpy and the standard library.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# Per-call limits, from what a call can finish: memory stays bounded (networks run on at most MAX_ROWS_PER_PASS rows at
# a time), time grows with the images (16,384 shipped-model images: about 2 minutes on 2 CPU cores), and a text
# model's self-attention grows with the square of its latent tokens (the shipped model: 3 s per step at 64x64 latent
# tokens, 41 s at 128x128; SDXL samples 128x128 latents on a GPU).
MAX_IMAGES_PER_CALL = 16384
MAX_ROWS_PER_PASS = 512
MAX_LATENT_TOKENS = 128 * 128
# Guidance and classifier scales beyond this are refused: the shipped models still give finite images at 1e6 (float32),
# none has a use above ~30, and from about 1e20 the sampling state overflows to NaN.
MAX_GUIDANCE_SCALE = 1e4
# Initial noise is about N(0, 1): a caller's latents beyond this magnitude overflow the float32 sampling state.
MAX_LATENT_MAGNITUDE = 1e4
_MAX_REPR = 80


def short_repr(value: Any) -> str:
    """repr() cut to a readable length (a 10 MB prompt must not end up in an error message)."""
    text = repr(value)
    return text if len(text) <= _MAX_REPR else f"{text[: _MAX_REPR - 20]}...<{len(text)} characters>"


def check_positive_int(name: str, value: Any, maximum: int | None = None) -> None:
    """`value` must be an int (not a bool) in 1..maximum."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= 1, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")


def check_scale(name: str, value: Any, maximum: float = MAX_GUIDANCE_SCALE) -> None:
    """A guidance weight: a finite real number in [0, maximum] (`MAX_GUIDANCE_SCALE` by default)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number >= 0, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    if value > maximum:
        raise ValueError(f"{name} must be <= {maximum:g}, got {value:g}")


def resolve_num_images(
    num_images_per_label: Any, num_images_per_prompt: Any, name: str = "num_images_per_label"
) -> int:
    """Images per condition, accepting diffusers' `num_images_per_prompt` as an alias of condiff's `name`.

    Every condiff pipeline behaves the same way: `num_images_per_prompt` (what diffusers users type) means `name`;
    giving both with different values is an error, unless `name` is left at its default of 1.
    """
    check_positive_int(name, num_images_per_label, MAX_IMAGES_PER_CALL)
    if num_images_per_prompt is None:
        return int(num_images_per_label)
    check_positive_int("num_images_per_prompt", num_images_per_prompt, MAX_IMAGES_PER_CALL)
    if num_images_per_label not in (1, num_images_per_prompt):
        raise ValueError(
            f"num_images_per_prompt={num_images_per_prompt} and {name}={num_images_per_label} disagree: "
            f"num_images_per_prompt is an alias of {name}; pass only {name}"
        )
    return int(num_images_per_prompt)


def check_output_type(output_type: Any) -> None:
    if not isinstance(output_type, str) or output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {short_repr(output_type)}")


def check_latents(latents: Any, shape: tuple[int, ...]) -> torch.Tensor:
    """Initial noise given by the caller: a finite floating-point tensor of exactly `shape`, holding values."""
    if not isinstance(latents, torch.Tensor):
        raise TypeError(f"latents must be a torch.Tensor of shape {shape}, got {type(latents).__name__}")
    if not latents.dtype.is_floating_point:
        raise TypeError(f"latents must be a floating-point tensor, got dtype {latents.dtype}")
    if tuple(latents.shape) != tuple(shape):
        raise ValueError(f"latents must have shape {tuple(shape)}, got {tuple(latents.shape)}")
    if latents.device.type == "meta":
        raise ValueError("latents is on the 'meta' device and holds no values")
    if not bool(torch.isfinite(latents).all()):
        raise ValueError("latents must be finite; it holds NaN or inf values")
    if latents.numel() and float(latents.abs().max()) > MAX_LATENT_MAGNITUDE:
        raise ValueError(
            f"latents must be starting noise (about N(0, 1)) with |values| <= {MAX_LATENT_MAGNITUDE:g}, got "
            f"{float(latents.abs().max()):.3g}"
        )
    return latents


def check_generators(generator: Any, batch_size: int) -> None:
    """`generator` is None, one `torch.Generator`, or a list of exactly `batch_size` of them."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, list) and all(isinstance(g, torch.Generator) for g in generator):
        if len(generator) != batch_size:
            raise ValueError(
                f"generator is a list of {len(generator)} generators but {batch_size} images are requested; "
                "pass one generator or exactly one per image"
            )
        return
    raise TypeError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")


CALLBACK_PROTOCOL = "fn(pipe, step, timestep, callback_kwargs) returning a dict of tensors by name, or None"


def check_callback_inputs(names: Any, allowed: Sequence[str], callback: Any = None) -> None:
    """`callback` is callable or None and takes diffusers' four arguments; `names` is a list of tensor names, each in
    `allowed`."""
    if callback is not None and not callable(callback):
        raise TypeError(f"callback_on_step_end must be callable or None, got {type(callback).__name__}")
    if callback is not None:
        try:
            signature = inspect.signature(callback)
        except (TypeError, ValueError):  # a builtin without a signature: accepted as it is
            signature = None
        if signature is not None:
            try:
                signature.bind(None, 0, 0, {})
            except TypeError:
                raise TypeError(
                    f"callback_on_step_end must be {CALLBACK_PROTOCOL}; {short_repr(callback)} cannot take those four "
                    f"arguments {signature}"
                ) from None
    if isinstance(names, (str, bytes)) or not isinstance(names, (list, tuple)):
        raise TypeError(
            f"callback_on_step_end_tensor_inputs must be a list of names such as ['latents'], got {short_repr(names)}"
        )
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ValueError(f"callback_on_step_end_tensor_inputs {unknown} are not allowed; allowed: {list(allowed)}")


def unet_sample_size(unet_config: Any) -> tuple[int, int]:
    """(height, width) of a UNet's samples: diffusers stores `sample_size` as an int or a pair."""
    size = unet_config.sample_size
    return tuple(size) if isinstance(size, (tuple, list)) else (size, size)


def check_guide_unet(unet: Any, guide: Any) -> None:
    """A guiding model (autoguidance) must make what the main UNet makes, for the same classes and text width; None
    is fine."""
    if guide is None:
        return
    main, other = unet.config, guide.config
    for key, what in (("num_class_embeds", "classes (+1 null)"), ("in_channels", "input channels"),
                      ("out_channels", "output channels"), ("cross_attention_dim", "text width")):  # fmt: skip
        if main.get(key) != other.get(key):
            raise ValueError(f"guide_unet has {key}={other.get(key)} but the unet has {main.get(key)}: both must "
                             f"take the same {what}")  # fmt: skip
    if unet_sample_size(main) != unet_sample_size(other):
        raise ValueError(f"guide_unet makes {unet_sample_size(other)} samples but the unet {unet_sample_size(main)}")
    if other.get("time_cond_proj_dim") is not None or main.get("time_cond_proj_dim") is not None:
        raise ValueError("autoguidance needs two ordinary class-conditional UNets, not guidance-embedded ones")


def latent_shape(unet_config: Any, factor: int, n: int, height: Any, width: Any) -> tuple[int, ...]:
    """(n, C, h, w) of the latents for images of `height` x `width` pixels (None: the UNet's size x `factor`), which
    must be multiples of the VAE's down-sampling `factor`."""
    default = [s * factor for s in unet_sample_size(unet_config)]
    height, width = default[0] if height is None else height, default[1] if width is None else width
    for name, value in (("height", height), ("width", width)):
        check_positive_int(name, value, 16384)
        if value % factor:
            raise ValueError(f"{name} must be divisible by the VAE's down-sampling factor {factor}, got {value}")
    tokens = (height // factor) * (width // factor)
    if tokens > MAX_LATENT_TOKENS:
        raise ValueError(
            f"height x width = {height} x {width} gives {tokens} latent positions per image; at most "
            f"{MAX_LATENT_TOKENS} (e.g. {128 * factor} x {128 * factor}): self-attention grows with their square"
        )
    return (n, unet_config.in_channels, height // factor, width // factor)


def check_callback_outputs(outputs: Any, latents: torch.Tensor) -> dict:
    """What `callback_on_step_end` returned: None or a dict; its "latents", if any, a finite floating-point tensor of
    the sampling state's shape."""
    if outputs is None:
        return {}
    if not isinstance(outputs, dict):
        raise TypeError(
            f"callback_on_step_end must return a dict of tensors by name (or None), got {short_repr(outputs)}"
        )
    new = outputs.get("latents", latents)
    if new is not latents:
        if not isinstance(new, torch.Tensor) or not new.dtype.is_floating_point or new.shape != latents.shape:
            got = (
                f"{new.dtype} tensor of shape {tuple(new.shape)}" if isinstance(new, torch.Tensor) else short_repr(new)
            )
            raise TypeError(f"callback_on_step_end returned latents that are not a floating-point tensor of shape "
                            f"{tuple(latents.shape)}: {got}")  # fmt: skip
        if not bool(torch.isfinite(new).all()):
            raise ValueError("callback_on_step_end returned latents holding NaN or inf values")
    return outputs


def check_finite_state(latents: torch.Tensor, step: int, num_steps: int, timestep: Any, scheduler: Any) -> None:
    """Raise FloatingPointError naming the step when sampling has produced NaN or inf values."""
    if not bool(torch.isfinite(latents).all()):
        raise FloatingPointError(
            f"sampling produced NaN or inf values at step {step + 1} of {num_steps} (timestep {float(timestep):g}) "
            f"with {type(scheduler).__name__}: the guidance scale, the step count or the scheduler is outside what "
            f"this model samples stably; no images are returned"
        )
