"""Pieces of the sampling loop every condiff pipeline shares: initial noise and the scheduler's step arguments.

Part of the Hub-loadable pipeline code: imports only torch, diffusers and the standard library.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor

from .checks import check_latents
from .labels import normalize_id2label


def initial_noise(
    shape: tuple[int, ...],
    generator: Any,
    latents: torch.Tensor | None,
    device: torch.device,
    dtype: torch.dtype,
    init_noise_sigma: float | torch.Tensor,
) -> torch.Tensor:
    """Starting noise of `shape` on `device` in `dtype` (drawn from `generator`, or the caller's checked
    `latents`), scaled by the scheduler's `init_noise_sigma`."""
    if latents is None:
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    else:
        latents = check_latents(latents, shape).to(device=device, dtype=dtype)
    return latents * init_noise_sigma


def scheduler_step_kwargs(scheduler: Any, generator: Any) -> dict[str, Any]:
    """Keyword arguments for `scheduler.step` that this scheduler accepts."""
    # Not every scheduler's step() takes a generator (UniPC, DPM-Solver++ 2M do not: they are deterministic).
    step_params = inspect.signature(scheduler.step).parameters
    step_kwargs = {"generator": generator} if "generator" in step_params else {}
    if "use_clipped_model_output" in step_params:
        # DDIM clips x0 (clip_sample / thresholding) but, unless told, keeps the unclipped eps, which makes
        # its update inconsistent: conditional accuracy fell to 25% at 20 steps on the shipped model.
        step_kwargs["use_clipped_model_output"] = True
    return step_kwargs


def step_callback(pipe: Any, callback: Any, step: int, t: Any, latents: torch.Tensor, names: Any) -> torch.Tensor:
    """diffusers' `callback_on_step_end` protocol: hand the callback the named tensors, take back a replacement
    "latents" if it returns one."""
    if callback is None:
        return latents
    available = {"latents": latents}
    outputs = callback(pipe, step, t, {name: available[name] for name in names}) or {}
    return outputs.get("latents", latents)


def unet_extra_inputs(unet: Any) -> dict[str, Any]:
    """What a class-conditional UNet's forward needs beyond (sample, t, class_labels): a `UNet2DConditionModel`
    without cross-attention still requires `encoder_hidden_states` (None)."""
    return {"encoder_hidden_states": None} if "cross_attention_dim" in unet.config else {}


def micro_batched(forward: Any, size: int | None, *rows: torch.Tensor | None) -> torch.Tensor:
    """`forward(*rows)` run on consecutive slices of at most `size` rows (None: all at once), concatenated.

    For networks whose rows are independent (condiff's UNets: GroupNorm normalises each image alone), the result
    equals one big forward pass; smaller slices keep activations in cache, which is faster on CPUs at large batches
    (benchmarks/micro_batching.py measures the size). Entries of `rows` that are None are passed as None.
    """
    n = next(r.shape[0] for r in rows if r is not None)
    if size is None or n <= size:
        return forward(*rows)
    parts = [forward(*(None if r is None else r[i : i + size] for r in rows)) for i in range(0, n, size)]
    return torch.cat(parts)


class GuidedPipelineState:
    """The per-call state diffusers pipelines expose as properties (`guidance_scale`, `num_timesteps`, `interrupt`)
    and the class names of the config, shared by condiff's pipelines. The sampling loop reads the underscored
    attributes at every step, so a `callback_on_step_end` may change them mid-call."""

    _guidance_scale: float = 1.0
    _guidance_rescale: float = 0.0
    _num_timesteps: int = 0
    _interrupt: bool = False

    @property
    def id2label(self) -> dict[int, str] | None:
        return normalize_id2label(self.config.id2label)

    @property
    def guidance_scale(self) -> float:
        """CFG's w of the running call (0 = unconditional, 1 = conditional); read from `_guidance_scale` each step."""
        return self._guidance_scale

    @property
    def guidance_rescale(self) -> float:
        return self._guidance_rescale

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether a step inside the guidance interval runs both branches (scales 0 and 1 need only one)."""
        return self._guidance_scale not in (0.0, 1.0)

    @property
    def num_timesteps(self) -> int:
        """Denoising steps of the running call."""
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set `pipe._interrupt = True` in a callback to skip the remaining steps (the output is the current state)."""
        return self._interrupt
