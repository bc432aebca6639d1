"""The scheduler side of sampling: the starting noise, the arguments of `scheduler.step`, schedules refused up front.

Part of the Hub-loadable pipeline code: imports only torch, diffusers and the standard library.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor

from .checks import check_latents


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
    check_distinct_timesteps(scheduler)
    if name == "EulerAncestralDiscreteScheduler":
        check_ancestral_split(scheduler)
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


def check_distinct_timesteps(scheduler: Any) -> None:
    """A step count near the training schedule's length can round two steps onto one timestep (DPM-Solver++'s
    linspace spacing at 1,000 of 1,000): a zero-length step, which multistep solvers divide by (NaN images).
    Second-order schedulers that visit each timestep twice by design (Heun, KDPM2) are exempt."""
    timesteps = getattr(scheduler, "timesteps", None)
    if timesteps is None or hasattr(scheduler, "state_in_first_order") or len(timesteps) < 2:
        return
    steps = torch.as_tensor(timesteps).flatten()
    repeated = (steps[1:] == steps[:-1]).nonzero().flatten()
    if len(repeated):
        raise ValueError(
            f"num_inference_steps={len(steps)} gives {type(scheduler).__name__} the timestep "
            f"{float(steps[int(repeated[0])]):g} twice (more steps than this spacing can place apart): a zero-length "
            f"step that gives NaN images; use fewer steps"
        )


def check_ancestral_split(scheduler: Any) -> None:
    """Euler Ancestral splits each step into sigma_down and sigma_up; for some step counts on a schedule that starts
    at nearly pure noise, float rounding makes sigma_to^2 - sigma_up^2 negative and its square root NaN (measured:
    4 steps on the shipped cosine schedule). The split is computed here exactly as the scheduler computes it."""
    sigmas = scheduler.sigmas
    s_from, s_to = sigmas[:-1], sigmas[1:]
    sigma_up = (s_to**2 * (s_from**2 - s_to**2) / s_from**2) ** 0.5
    sigma_down = (s_to**2 - sigma_up**2) ** 0.5
    bad = (~torch.isfinite(sigma_down) | ~torch.isfinite(sigma_up)).nonzero().flatten()
    if len(bad):
        i = int(bad[0])
        raise ValueError(
            f"EulerAncestralDiscreteScheduler would give NaN images with num_inference_steps={len(sigmas) - 1}: its "
            f"ancestral split of step {i + 1} (sigma {float(s_from[i]):.4g} -> {float(s_to[i]):.4g}) is not finite in "
            f"{sigmas.dtype}; use another num_inference_steps or another scheduler"
        )
