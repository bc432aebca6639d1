"""Guidance math for every condiff pipeline: the single place where the formulas live.

The guidance methods that use them are objects in `guiders.py`; diffusers' own guiders plug in through
`diffusers_guiders.py`. Part of the Hub-loadable pipeline code: imports only torch.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch

from .checks import check_scale

Condition = Any  # a tensor, a dict of tensors, or None; see `concat_conditions`


def cfg_combine(
    uncond: torch.Tensor, cond: torch.Tensor, guidance_scale: float, guidance_rescale: float = 0.0
) -> torch.Tensor:
    """Classifier-free guidance: uncond + w * (cond - uncond) (Ho & Salimans 2022), optionally rescaled.

    w = 0 gives the unconditional prediction, w = 1 the conditional one. Works for eps, v and x0 outputs.
    """
    guided = uncond + guidance_scale * (cond - uncond)
    if guidance_rescale > 0:
        guided = rescale_guided(guided, cond, guidance_rescale)
    return guided


def rescale_guided(guided: torch.Tensor, cond: torch.Tensor, guidance_rescale: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2023, eq. 15-16): match the per-sample std of the conditional prediction."""
    dims = tuple(range(1, guided.ndim))
    std_cond = cond.std(dim=dims, keepdim=True)
    std_guided = guided.std(dim=dims, keepdim=True).clamp_min(1e-12)
    rescaled = guided * (std_cond / std_guided)
    return guidance_rescale * rescaled + (1.0 - guidance_rescale) * guided


def in_guidance_interval(timestep: torch.Tensor | float, num_train_timesteps: int, interval: tuple) -> bool:
    """Whether guidance applies at `timestep` (Kynkaanniemi et al. 2024).

    `interval` = (lo, hi) as fractions of the training noise range: guidance is applied where
    lo <= t / num_train_timesteps <= hi; (0, 1) means every step.
    """
    lo, hi = interval
    if lo <= 0.0 and hi >= 1.0:
        return True
    frac = float(timestep) / num_train_timesteps
    return lo <= frac <= hi


def guidance_scale_embedding(guidance_scale: torch.Tensor, embedding_dim: int) -> torch.Tensor:
    """The sinusoidal embedding of the CFG scale w that a guidance-distilled UNet takes as `timestep_cond` (Meng et al.
    2023): the formula of diffusers' LCM pipelines (`get_guidance_scale_embedding`, w scaled by 1000), applied to w
    itself: condiff's students are trained so that w = 0 is the unconditional and w = 1 the conditional prediction.

    Written here because diffusers has it only as a method of its LCM pipelines, which this Hub-loadable file
    cannot import. `guidance_scale`: shape (N,); returns (N, embedding_dim) float32.
    """
    w = guidance_scale.float() * 1000.0
    half = embedding_dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=w.device) * -(math.log(10000.0) / (half - 1)))
    angles = w[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return torch.nn.functional.pad(emb, (0, embedding_dim % 2))


def concat_conditions(a: Condition, b: Condition) -> Condition:
    """Stack two conditions along the batch axis (tensors, dicts of tensors, or None)."""
    if a is None:
        return None
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b])
    if isinstance(a, dict):
        return {k: concat_conditions(a[k], b[k]) for k in a}
    raise TypeError(f"cannot batch conditions of type {type(a).__name__}")


def guided_prediction(
    model: Callable[[torch.Tensor, Condition], torch.Tensor],
    sample: torch.Tensor,
    cond: Condition,
    uncond: Condition,
    guidance_scale: torch.Tensor | float,
    guidance_rescale: float = 0.0,
) -> tuple[torch.Tensor, int]:
    """Both CFG branches of `model(sample, condition)` as one batched pass of 2N rows, combined; returns (prediction,
    rows). `guidance_scale` may hold one scale per row (shape (N,)), as guidance distillation's teacher draws them.
    The samplers pick the branches a step needs through `guiders.ClassifierFreeGuidance` instead."""
    n = sample.shape[0]
    pred_cond, pred_uncond = model(torch.cat([sample, sample]), concat_conditions(cond, uncond)).chunk(2)
    if isinstance(guidance_scale, torch.Tensor):
        guidance_scale = guidance_scale.to(pred_cond.dtype).view(-1, *([1] * (pred_cond.ndim - 1)))
    return cfg_combine(pred_uncond, pred_cond, guidance_scale, guidance_rescale), 2 * n


def check_guidance_arguments(guidance_scale: float, guidance_rescale: float, guidance_interval: tuple) -> None:
    """Raise a ValueError naming the argument when a guidance setting is out of range."""
    check_scale("guidance_scale", guidance_scale)
    if isinstance(guidance_rescale, bool) or not isinstance(guidance_rescale, (int, float)):
        raise TypeError(f"guidance_rescale must be a number in [0, 1], got {type(guidance_rescale).__name__}")
    if not 0.0 <= guidance_rescale <= 1.0:
        raise ValueError(f"guidance_rescale must be in [0, 1], got {guidance_rescale}")
    if (
        not isinstance(guidance_interval, (tuple, list))
        or len(guidance_interval) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in guidance_interval)
        or not 0.0 <= guidance_interval[0] <= guidance_interval[1] <= 1.0
    ):
        raise ValueError(f"guidance_interval must be a pair (lo, hi) with 0 <= lo <= hi <= 1, got {guidance_interval}")


GUIDANCE_NAMES = ("cfg", "autoguidance", "gated_cfg")


def resolve_default_guidance_scale(scale: float | None, scale_range: tuple | list | None) -> float:
    """The scale of a call that gives none: the configured default, else 3 (clamped into a trained range)."""
    if scale is not None:
        return float(scale)
    return 3.0 if scale_range is None else min(max(3.0, scale_range[0]), scale_range[1])


# ---------------------------------------------------------------------------------------------- classifier guidance
# Dhariwal & Nichol (2021). g = grad_x log p(y | x_t, t) of a noise-aware classifier.


# a learned Sigma is known per pixel once the UNet has predicted it (the variance values of the step's prediction)
MEAN_SHIFT_VARIANCES = ("fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range")


def supports_mean_shift(scheduler: Any) -> bool:
    """Whether `scheduler.step` is an ancestral step x_{t-1} ~ N(mu, Sigma) with a known Sigma (DDPM, fixed or
    learned variance): only then can the mean shift be honoured."""
    # Read the option only from a scheduler that takes it: a DDIM made `from_config` of a DDPM config carries
    # DDPM's `variance_type` in its config without using it.
    if "variance_type" not in inspect.signature(type(scheduler).__init__).parameters:
        return False
    kind = scheduler.config.variance_type
    if kind is None and {c.__name__ for c in type(scheduler).__mro__} & {"DDPMScheduler", "DDPMParallelScheduler"}:
        kind = "fixed_small"  # diffusers' DDPM step, given no variance_type, samples with the posterior variance
    return hasattr(scheduler, "_get_variance") and kind in MEAN_SHIFT_VARIANCES


def ancestral_variance(scheduler: Any, timestep: Any, predicted_variance: torch.Tensor | None = None) -> torch.Tensor:
    """Sigma of the ancestral step that a `supports_mean_shift` scheduler takes at `timestep` (after set_timesteps):
    per pixel for a learned variance, from the UNet's variance values `predicted_variance`."""
    if int(timestep) == 0:  # the last step adds no noise, so there is no Sigma to shift by
        return torch.zeros(())
    kind = scheduler.config.variance_type
    if kind in ("learned", "learned_range"):
        if predicted_variance is None:
            raise ValueError(f"variance_type={kind!r} needs the UNet's variance values (a UNet with learned variance)")
        variance = scheduler._get_variance(int(timestep), predicted_variance=predicted_variance.float())
        return variance.exp() if kind == "learned_range" else variance  # "learned_range" gives log Sigma
    variance = scheduler._get_variance(int(timestep))  # diffusers' own Sigma, the one its step() samples with
    return variance**2 if kind == "fixed_small_log" else variance  # "_log" gives the std


def signal_and_noise_scales(alpha_prod_t: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) = (sqrt(abar_t), sqrt(1 - abar_t)): x_t = a x0 + b eps."""
    a = torch.as_tensor(alpha_prod_t, dtype=torch.float32, device=device).sqrt()
    return a, (1 - a**2).clamp_min(0).sqrt()


def alpha_prod_at(scheduler: Any, timestep: Any) -> torch.Tensor:
    """abar_t of a discrete VP scheduler at a possibly fractional `timestep` (Euler's spacings), interpolated in
    sigma = sqrt((1 - abar) / abar) as Euler interpolates its sigmas; exact at integer timesteps."""
    abar = scheduler.alphas_cumprod.float()
    t = min(max(float(timestep), 0.0), len(abar) - 1.0)
    lo, hi = math.floor(t), math.ceil(t)
    sigmas = ((1 - abar[[lo, hi]]) / abar[[lo, hi]]).sqrt()
    sigma = sigmas[0] + (t - lo) * (sigmas[1] - sigmas[0])
    return 1 / (1 + sigma**2)


def classifier_log_prob_grad(
    classifier: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sample: torch.Tensor,
    timestep: torch.Tensor | int,
    labels: torch.Tensor,
) -> torch.Tensor:
    """g = grad_x log p(y | x_t, t), per image, for the requested `labels`.

    Differentiates only the classifier, on a detached copy of x_t, under `torch.enable_grad()`: callable from an
    otherwise gradient-free (`torch.no_grad()`) sampling loop. The sum over the batch separates per image, since
    each image's log-probability depends on that image alone.
    """
    with torch.enable_grad():
        x = sample.detach().requires_grad_(True)
        log_probs = torch.log_softmax(classifier(x, timestep).float(), dim=-1)
        chosen = log_probs.gather(1, labels.reshape(-1, 1).to(log_probs.device)).sum()
        (grad,) = torch.autograd.grad(chosen, x)
    return grad.to(sample.dtype)


def score_correction(
    prediction: torch.Tensor,
    grad: torch.Tensor,
    alpha_prod_t: torch.Tensor | float,
    classifier_scale: float,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """Algorithm 2: eps_hat = eps - s * sqrt(1 - abar_t) * g, i.e. the score grad log p(x_t) + s * g expressed as
    noise, for any scheduler; the same shift of x_t's noise converted for v- and x0-predicting networks.

    With x_t = a x0 + b eps (a = sqrt(abar_t), b = sqrt(1 - abar_t)) fixed: v = (eps - b x_t) / a, so a change of eps
    by d changes v by d / a; x0 = (x_t - b eps) / a changes by -b d / a. Scale 0 returns `prediction` unchanged.
    """
    if classifier_scale == 0:
        return prediction
    a, b = signal_and_noise_scales(alpha_prod_t, prediction.device)
    delta_eps = -classifier_scale * b * grad.float()
    if prediction_type == "epsilon":
        delta = delta_eps
    elif prediction_type == "v_prediction":
        delta = delta_eps / a
    elif prediction_type == "sample":
        delta = -b * delta_eps / a
    else:
        raise ValueError(f"prediction_type must be epsilon, v_prediction or sample, got {prediction_type!r}")
    return (prediction.float() + delta).to(prediction.dtype)


def mean_shift(
    prev_sample: torch.Tensor, grad: torch.Tensor, variance: torch.Tensor | float, classifier_scale: float
) -> torch.Tensor:
    """Algorithm 1: x_{t-1} ~ N(mu + s * Sigma * g, Sigma). Added to an ancestral step's sample mu + sigma z, the
    shift moves the step's mean by exactly s * Sigma * g; `variance` is the step's posterior variance Sigma."""
    if classifier_scale == 0:
        return prev_sample
    return prev_sample + classifier_scale * variance * grad.to(prev_sample.dtype)


def predicted_original(
    sample: torch.Tensor, prediction: torch.Tensor, alpha_prod_t: torch.Tensor | float, prediction_type: str
) -> torch.Tensor:
    """Tweedie's estimate of x0 from x_t = a x0 + b eps and the network's eps, v or x0 output."""
    a, b = signal_and_noise_scales(alpha_prod_t, sample.device)
    if prediction_type == "epsilon":
        return (sample - b * prediction) / a
    if prediction_type == "v_prediction":
        return a * sample - b * prediction
    if prediction_type == "sample":
        return prediction
    raise ValueError(f"prediction_type must be epsilon, v_prediction or sample, got {prediction_type!r}")


def step_denoised(scheduler: Any, model_input: torch.Tensor, prediction: torch.Tensor, timestep: Any) -> torch.Tensor:
    """The denoised estimate x0 of a sampling step: Tweedie's x0 from the step's (guided) network prediction, on
    x_t after `scale_model_input` (the variance-preserving x_t for every scheduler with `alphas_cumprod`, Euler's
    included), in the state's dtype. What `callback_on_step_end` gets as "denoised" (diffusers' LCM name)."""
    abar = alpha_prod_at(scheduler, timestep)
    x0 = predicted_original(model_input.float(), prediction.float(), abar, scheduler.config.prediction_type)
    return x0.to(model_input.dtype)


def predicted_noise(
    sample: torch.Tensor, prediction: torch.Tensor, alpha_prod_t: torch.Tensor | float, prediction_type: str
) -> torch.Tensor:
    """The noise eps of x_t = a x0 + b eps implied by the network's eps, v or x0 output (`predicted_original`'s
    companion: together they give a DDIM step a' x0 + b' eps)."""
    a, b = signal_and_noise_scales(alpha_prod_t, sample.device)
    if prediction_type == "epsilon":
        return prediction
    if prediction_type == "v_prediction":
        return a * prediction + b * sample
    if prediction_type == "sample":
        return (sample - a * prediction) / b
    raise ValueError(f"prediction_type must be epsilon, v_prediction or sample, got {prediction_type!r}")


def x0_difference_rms(
    sample: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    alpha_prod_t: torch.Tensor | float,
    prediction_type: str,
) -> torch.Tensor:
    """Per image, the root mean square of x0(cond) - x0(uncond): how far the condition moves the denoised estimate
    at this step (the size of the CFG difference in image space, comparable across parametrisations)."""
    x0 = [predicted_original(sample.float(), p.float(), alpha_prod_t, prediction_type) for p in (cond, uncond)]
    return (x0[0] - x0[1]).flatten(1).pow(2).mean(1).sqrt()


def gate_curve_at(curve: Any, timestep: Any) -> float:
    """`curve`, a list of (timestep, value > 0) pairs, log-interpolated at `timestep` (held flat outside its range)."""
    points = sorted((float(t), math.log(float(v))) for t, v in curve)
    t = min(max(float(timestep), points[0][0]), points[-1][0])
    for (t0, v0), (t1, v1) in zip(points, points[1:]):
        if t0 <= t <= t1:
            return math.exp(v0 if t1 == t0 else v0 + (t - t0) / (t1 - t0) * (v1 - v0))
    return math.exp(points[0][1])


def prediction_for_original(
    sample: torch.Tensor, original: torch.Tensor, alpha_prod_t: torch.Tensor | float, prediction_type: str
) -> torch.Tensor:
    """The eps, v or x0 output under which x_t = `sample` denoises to `original` (`predicted_original` inverted)."""
    a, b = signal_and_noise_scales(alpha_prod_t, sample.device)
    if prediction_type == "epsilon":
        return (sample - a * original) / b
    if prediction_type == "v_prediction":
        return (a * sample - original) / b
    if prediction_type == "sample":
        return original
    raise ValueError(f"prediction_type must be epsilon, v_prediction or sample, got {prediction_type!r}")


def denoised_log_prob_grad(
    predict: Callable[[torch.Tensor], torch.Tensor],
    classifier: Callable[[torch.Tensor], torch.Tensor],
    sample: torch.Tensor,
    alpha_prod_t: torch.Tensor | float,
    prediction_type: str,
    labels: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-free guidance (Universal Guidance, Bansal et al. 2023; DPS, Chung et al. 2023): a classifier of clean
    images judges the denoiser's Tweedie estimate x0_hat(x_t), and g = grad_x log p(y | x0_hat(x_t)) is taken through
    the denoiser. Returns (the denoiser's prediction, detached, for the sampler to use; g).

    One forward and one backward pass of the denoiser per step, under `torch.enable_grad()`; the graph is freed
    before returning, so memory does not grow across steps.
    """
    with torch.enable_grad():
        x = sample.detach().requires_grad_(True)
        prediction = predict(x)
        x0 = predicted_original(x, prediction.float(), alpha_prod_t, prediction_type)
        log_probs = torch.log_softmax(classifier(x0).float(), dim=-1)
        chosen = log_probs.gather(1, labels.reshape(-1, 1).to(log_probs.device)).sum()
        (grad,) = torch.autograd.grad(chosen, x)
    return prediction.detach(), grad.to(sample.dtype)
