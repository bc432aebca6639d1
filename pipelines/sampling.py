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


Pair = tuple[torch.Tensor, torch.Tensor]


def step_callback(
    pipe: Any, callback: Any, step: int, t: Any, latents: torch.Tensor, names: Any, condition: Pair | None = None
) -> tuple[torch.Tensor, Pair | None]:
    """diffusers' `callback_on_step_end` protocol; returns (latents, condition), each replaced if the callback hands
    one back.

    `condition` is the (null/negative, conditional) pair of N rows each; a callback asking for "prompt_embeds" gets
    them concatenated as [negative; positive] (2N rows), the way Stable Diffusion pipelines pass them under CFG, and
    "negative_prompt_embeds" the negative half. A callback that sets `pipe._guidance_scale = 0.0` during a call whose
    scale was not 0 means what diffusers' CFG cut-off callbacks mean by it, "guidance off": the conditional
    prediction alone from the next step, stored as scale 1 (a call's `guidance_scale=0` argument stays unconditional).
    """
    if callback is None:
        return latents, condition
    available = {"latents": latents}
    if condition is not None and "prompt_embeds" in names:
        available["prompt_embeds"] = torch.cat(condition)
    if condition is not None and "negative_prompt_embeds" in names:
        available["negative_prompt_embeds"] = condition[0]
    scale_before = pipe._guidance_scale
    outputs = callback(pipe, step, t, {name: available[name] for name in names}) or {}
    if scale_before != 0 and pipe._guidance_scale == 0:
        pipe._guidance_scale = 1.0
    if condition is not None:
        condition = callback_condition(outputs, available, condition)
    return outputs.get("latents", latents), condition


def callback_condition(outputs: dict, given: dict, condition: Pair) -> Pair:
    """The (negative, positive) pair after a callback: "prompt_embeds" handed back with 2N rows replaces both
    halves, with N rows (or 1, for every image) the positive half; the last row of what it was given, alone, is
    diffusers' `SDCFGCutoffCallback` keeping "the conditional half" (`prompt_embeds[-1:]`): the positive half is kept.
    "negative_prompt_embeds" (N rows) replaces the negative half."""
    negative, positive = condition
    n = len(positive)
    returned = outputs.get("prompt_embeds")
    if returned is not None and returned is not given.get("prompt_embeds"):
        returned = returned.to(positive.device, positive.dtype)
        rows = len(returned)
        if rows == 2 * n:
            negative, positive = returned[:n], returned[n:]
        elif rows == n:
            positive = returned
        elif rows == 1 and torch.equal(returned[0], positive[-1]):
            pass  # SDCFGCutoffCallback's prompt_embeds[-1:]: the conditional half, as given
        elif rows == 1:
            positive = returned.expand(n, *returned.shape[1:])
        else:
            raise ValueError(
                f"callback_on_step_end returned prompt_embeds with {rows} rows; expected {2 * n} "
                f"([negative; positive]), {n} (positive) or 1"
            )
    returned = outputs.get("negative_prompt_embeds")
    if returned is not None and returned is not given.get("negative_prompt_embeds"):
        if len(returned) != n:
            raise ValueError(f"callback_on_step_end returned negative_prompt_embeds with {len(returned)} rows, not {n}")
        negative = returned.to(negative.device, negative.dtype)
    return negative, positive


# A schedule whose last training timestep is nearly pure noise (the cosine schedule: sigma_max ~ 2e4 on condiff's
# models) starts with one very long step. Measured on the shipped MNIST model (10 steps, w = 1, 100 images, condiff's
# evaluator; README "Schedulers"): Heun 51% (its trapezoid correction multiplies the model's error on that step by
# (sigma_0 - sigma_1) / (2 sigma_1), ~1,800x), 97% with use_exponential_sigmas; KDPM2 Ancestral NaN (Karras sigmas
# too), 100% with use_exponential_sigmas on 10 images.
HEUN_MAX_AMPLIFICATION = 10.0
KDPM2_ANCESTRAL_MAX_SIGMA = 1000.0


def check_schedule(scheduler: Any) -> None:
    """Refuse, after `set_timesteps` and before any model work, a scheduler that is known to give noise on this
    schedule, naming the reason and the setting that works."""
    name, sigmas = type(scheduler).__name__, getattr(scheduler, "sigmas", None)
    if sigmas is None or len(sigmas) < 2:
        return
    first, second = float(sigmas[0]), float(sigmas[1])
    fix = f"use {name}.from_config(pipe.scheduler.config, use_exponential_sigmas=True), or another scheduler"
    if name == "HeunDiscreteScheduler" and second > 0 and (first - second) / (2 * second) > HEUN_MAX_AMPLIFICATION:
        raise ValueError(
            f"{name} would give noise here: its first step goes from sigma {first:.4g} to {second:.4g} (the schedule "
            f"ends nearly at pure noise), and Heun's second-order correction multiplies the model's error on that "
            f"step by {(first - second) / (2 * second):.0f}x; {fix}"
        )
    if name == "KDPM2AncestralDiscreteScheduler" and first > KDPM2_ANCESTRAL_MAX_SIGMA:
        if not scheduler.config.get("use_exponential_sigmas"):
            raise ValueError(
                f"{name} gives NaN images on a schedule that starts at sigma {first:.4g} (nearly pure noise); {fix}"
            )


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
        """CFG's w of the running call (0 = unconditional, 1 = conditional); read from `_guidance_scale` each step.
        A callback that sets `_guidance_scale = 0.0` mid-call turns guidance off as in diffusers: the conditional
        prediction alone from the next step (stored as 1.0; see `step_callback`)."""
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
