"""Predictor-corrector sampling (Song et al. 2021): Langevin corrector steps at the current noise level before each
predictor step (the scheduler's), on the variance-preserving x_t, with the guided score of the same guidance object.

One corrector step, Song's VP corrector with the per-image norms: s = -eps / sqrt(1 - abar_t), z ~ N(0, I),
step size e = 2 alpha_t (snr ||z|| / ||s||)^2, x <- x + e s + sqrt(2 e) z, alpha_t = abar_t / abar_{t-1} of the
training schedule. Each step runs the network rows of one guided prediction, counted in `nfe_per_image`.

Part of the Hub-loadable pipeline code: imports only torch, diffusers and the standard library.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor

from .guidance import alpha_prod_at, predicted_noise
from .guiders import Evaluate, Guidance, Step

MAX_CORRECTOR_STEPS = 100
DEFAULT_CORRECTOR_SNR = 0.16  # Song et al.'s signal-to-noise ratio for the VP SDE on CIFAR-10


def check_corrector_arguments(steps: Any, snr: Any, prefix: str = "") -> None:
    """`steps`: an int in 0..MAX_CORRECTOR_STEPS; `snr`: a real number in (0, 1]. `prefix`: "default_" for the
    config entries."""
    name = f"{prefix}corrector_steps"
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or not 0 <= steps <= MAX_CORRECTOR_STEPS:
        raise ValueError(f"{name} must be an int in 0..{MAX_CORRECTOR_STEPS} (0: no corrector), got {steps!r:.80}")
    name = f"{prefix}corrector_snr"
    if isinstance(snr, bool) or not isinstance(snr, numbers.Real) or not 0 < snr <= 1:  # NaN fails 0 < snr
        raise ValueError(f"{name} must be a real number in (0, 1] (Song et al.: 0.16), got {snr!r:.80}")


def training_alpha(alphas_cumprod: torch.Tensor, timestep: Any) -> float:
    """alpha_t = abar_t / abar_{t-1} of the training schedule at the integer part of `timestep` (abar_{-1} = 1)."""
    t = min(max(int(timestep), 0), len(alphas_cumprod) - 1)
    previous = float(alphas_cumprod[t - 1]) if t > 0 else 1.0
    return float(alphas_cumprod[t]) / previous


def langevin_step(
    x: torch.Tensor, eps: torch.Tensor, abar_t: float, alpha_t: float, snr: float, z: torch.Tensor
) -> torch.Tensor:
    """One corrector step on the variance-preserving `x` given the network's noise `eps` at x and the noise `z`, in
    float32, returned in x's dtype. An image whose score is 0 does not move."""
    s = -eps.float() / math.sqrt(max(1.0 - abar_t, 1e-12))
    z = z.float()
    s_norm, z_norm = s.flatten(1).norm(dim=1), z.flatten(1).norm(dim=1)
    size = 2 * alpha_t * (snr * z_norm / s_norm.clamp_min(1e-30)) ** 2
    size = torch.where(s_norm > 0, size, torch.zeros_like(size)).view(-1, *[1] * (x.ndim - 1))
    return (x.float() + size * s + (2 * size).sqrt() * z).to(x.dtype)


@dataclasses.dataclass
class LangevinCorrector:
    """`steps` Langevin steps at signal-to-noise ratio `snr` before each predictor step (`CondiffPipeline._denoise`)."""

    steps: int
    snr: float = DEFAULT_CORRECTOR_SNR

    def correct(self, step: Step, guidance: Guidance, evaluate: Evaluate, generator: Any) -> Step:
        """`step` with its state moved by the corrector: both the scheduler's latents and the model input. The
        corrector works on the model input, the variance-preserving x_t for every scheduler with `alphas_cumprod`
        (Euler's latents are x_t sqrt(sigma^2 + 1)); z is drawn from the call's `generator`."""
        scheduler, t, x = step.scheduler, step.timestep, step.model_input
        abar, alpha = float(alpha_prod_at(scheduler, t)), training_alpha(scheduler.alphas_cumprod, t)
        # latents = model input / the scheduler's input scale, a number (1 for DDPM, DDIM, DPM-Solver, UniPC)
        scale = scheduler.scale_model_input(torch.ones((), device=x.device), t)
        ptype = scheduler.config.prediction_type
        for _ in range(self.steps):
            probe = dataclasses.replace(step, sample=(x / scale).to(x.dtype), model_input=x, notes={})
            eps = predicted_noise(x.float(), guidance.score_prediction(probe, evaluate).float(), abar, ptype)
            z = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = langevin_step(x, eps, abar, alpha, self.snr, z)
        return dataclasses.replace(step, sample=(x / scale).to(x.dtype), model_input=x, notes={})


def corrector_for_call(steps: Any, snr: Any, config: Any, scheduler: Any) -> LangevinCorrector | None:
    """The corrector of a call (None: none) from its `corrector_steps` and `corrector_snr` (None: the config's
    `default_corrector_steps`, `default_corrector_snr`), checked before any sampling."""
    steps = config.get("default_corrector_steps", 0) if steps is None else steps
    snr = config.get("default_corrector_snr", DEFAULT_CORRECTOR_SNR) if snr is None else snr
    check_corrector_arguments(steps, snr)
    if steps == 0:
        return None
    if not hasattr(scheduler, "alphas_cumprod"):
        raise ValueError(
            f"corrector_steps={steps} needs a discrete variance-preserving schedule (alphas_cumprod) for the score; "
            f"{type(scheduler).__name__} has none: use corrector_steps=0 or DDPM, DDIM, DPM-Solver++, UniPC, Euler"
        )
    return LangevinCorrector(int(steps), float(snr))
