"""The reverse process's variance and the network parametrisations beyond the schedulers' own (docs/theory.md,
"Variance and parametrisations").

- Learned variance (Nichol & Dhariwal 2021): a UNet with twice the image's output channels predicts, after the
  usual prediction, v in [-1, 1] per pixel; Sigma = exp(frac log beta_t + (1 - frac) log beta~_t), frac = (v + 1) / 2,
  as diffusers' `DDPMScheduler(variance_type="learned_range")` samples it.
- The mean (mu of q(x_{t-1} | x_t, x0)) and the score (-eps / sqrt(1 - abar_t)) as what the network predicts: no
  diffusers scheduler knows them, so the pipelines convert them to epsilon before `scheduler.step`.

Part of the Hub-loadable pipeline code: imports only torch and the standard library.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

LEARNED_VARIANCE_TYPES = ("learned", "learned_range")
NETWORK_TARGETS = ("mean", "score")  # predictions converted to epsilon (the schedulers' own: epsilon, v, sample)
PREDICTION_TARGETS = (None, *NETWORK_TARGETS)  # a pipeline's `prediction_target`: None = the scheduler's own
# DPM-Solver (multistep, singlestep, inverse) and SA-Solver keep `model_output[:, :3]` when their config names a
# learned variance: right for a prediction of at most this many channels, which the pipelines hand them alone.
STRIPPED_CHANNELS = 3


def has_learned_variance(unet_config: Any, channels: int | None = None) -> bool:
    """Whether a UNet predicts a variance too: twice the output channels of the image it denoises (`channels`:
    the image's, default the UNet's `in_channels`; a spatially conditioned UNet takes more than it denoises)."""
    channels = unet_config.in_channels if channels is None else channels
    return unet_config.out_channels == 2 * channels


def split_variance(output: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(prediction, variance values v or None) of a UNet output with `channels` or 2 x `channels` channels."""
    if output.shape[1] == 2 * channels:
        return output[:, :channels], output[:, channels:]
    return output, None


def _schedule(alphas_cumprod: torch.Tensor, t: torch.Tensor, prev_t: torch.Tensor | None):
    abar_t = alphas_cumprod[t]
    prev = t - 1 if prev_t is None else prev_t
    abar_prev = torch.where(prev >= 0, alphas_cumprod[prev.clamp(min=0)], torch.ones_like(abar_t))
    return abar_t, abar_prev


def posterior_log_variances(
    alphas_cumprod: torch.Tensor, t: torch.Tensor, prev_t: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log beta_t, log beta~_t) for the step t -> prev_t (default t - 1), per entry of `t`. beta~ at the last step
    (prev_t < 0, where it is 0) takes the value of the step from the next timestep, as guided-diffusion clips it."""
    t = torch.as_tensor(t, device=alphas_cumprod.device).long().reshape(-1)
    abar_t, abar_prev = _schedule(alphas_cumprod, t, prev_t)
    beta = 1 - abar_t / abar_prev
    posterior = beta * (1 - abar_prev) / (1 - abar_t)
    nxt = (t + 1).clamp(max=len(alphas_cumprod) - 1)  # beta~ of step 1 -> 0, for the clipped last step
    abar_next = alphas_cumprod[nxt]
    posterior_next = (1 - abar_next / abar_t) * (1 - abar_t) / (1 - abar_next)
    posterior = torch.where(posterior > 0, posterior, posterior_next)
    return beta.clamp(min=1e-20).log(), posterior.clamp(min=1e-20).log()


def learned_log_variance(
    v: torch.Tensor, alphas_cumprod: torch.Tensor, t: Any, prev_t: torch.Tensor | None = None
) -> torch.Tensor:
    """log Sigma = frac log beta_t + (1 - frac) log beta~_t, frac = (v + 1) / 2, for the step t -> prev_t."""
    log_beta, log_posterior = posterior_log_variances(alphas_cumprod, t, prev_t)
    shape = (-1,) + (1,) * (v.ndim - 1)
    frac = (v.float() + 1) / 2
    return frac * log_beta.view(shape) + (1 - frac) * log_posterior.view(shape)


def posterior_mean(
    alphas_cumprod: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: Any, prev_t: torch.Tensor | None = None
) -> torch.Tensor:
    """mu~(x_t, x0), the mean of q(x_prev | x_t, x0) for the step t -> prev_t (default t - 1)."""
    t = torch.as_tensor(t, device=alphas_cumprod.device).long().reshape(-1)
    abar_t, abar_prev = _schedule(alphas_cumprod, t, prev_t)
    alpha = abar_t / abar_prev
    shape = (-1,) + (1,) * (x_t.ndim - 1)
    c0 = (abar_prev.sqrt() * (1 - alpha) / (1 - abar_t)).view(shape)
    ct = (alpha.sqrt() * (1 - abar_prev) / (1 - abar_t)).view(shape)
    return c0 * x0 + ct * x_t


def target_from_epsilon(
    kind: str, alphas_cumprod: torch.Tensor, eps: torch.Tensor, x_t: torch.Tensor, t: Any
) -> torch.Tensor:
    """The mean or the score that epsilon `eps` at (x_t, t) stands for (one training step t -> t - 1)."""
    t = torch.as_tensor(t, device=alphas_cumprod.device).long().reshape(-1)
    shape = (-1,) + (1,) * (x_t.ndim - 1)
    abar = alphas_cumprod[t].view(shape)
    if kind == "score":
        return -eps / (1 - abar).sqrt()
    if kind == "mean":
        x0 = (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()
        return posterior_mean(alphas_cumprod, x0, x_t, t)
    raise ValueError(f"the network target must be one of {NETWORK_TARGETS}, got {kind!r}")


def epsilon_from_target(
    kind: str, alphas_cumprod: torch.Tensor, output: torch.Tensor, x_t: torch.Tensor, t: Any
) -> torch.Tensor:
    """Epsilon from a network that predicts the mean or the score at (x_t, t), the inverse of `target_from_epsilon`:
    eps = -sqrt(1 - abar_t) s, and eps = (x_t - sqrt(alpha_t) mu) sqrt(1 - abar_t) / beta_t (t >= 1; at t = 0 the
    mean is x0 itself)."""
    t = torch.as_tensor(t, device=alphas_cumprod.device).long().reshape(-1)
    if t.numel() == 1 and x_t.shape[0] > 1:
        t = t.expand(x_t.shape[0])
    shape = (-1,) + (1,) * (x_t.ndim - 1)
    abar = alphas_cumprod[t].view(shape).to(output.dtype)
    if kind == "score":
        return -(1 - abar).sqrt() * output
    if kind == "mean":
        abar_prev = torch.where(t > 0, alphas_cumprod[(t - 1).clamp(min=0)], torch.ones_like(alphas_cumprod[t]))
        alpha = (alphas_cumprod[t] / abar_prev).view(shape).to(output.dtype)
        last = (t == 0).view(shape)
        from_mean = (x_t - alpha.sqrt() * output) * (1 - abar).sqrt() / (1 - alpha).clamp(min=1e-12)
        from_x0 = (x_t - abar.sqrt() * output) / (1 - abar).sqrt()
        return torch.where(last, from_x0, from_mean)
    raise ValueError(f"the network target must be one of {NETWORK_TARGETS}, got {kind!r}")


# ------------------------------------------------------------------------------------------------------ sampling


def _takes_variance_type(scheduler: Any) -> bool:
    # Read the option only from a scheduler that takes it: a DDIM made `from_config` of a DDPM config carries DDPM's
    # `variance_type` in its config without using it.
    return "variance_type" in inspect.signature(type(scheduler).__init__).parameters


def steps_with_learned_variance(scheduler: Any) -> bool:
    """Whether `scheduler.step` samples with a learned Sigma: an ancestral scheduler (DDPM, UnCLIP) whose
    `variance_type` is "learned" or "learned_range"; it takes the prediction and the variance values stacked along
    the channels."""
    return (
        _takes_variance_type(scheduler)
        and hasattr(scheduler, "_get_variance")
        and scheduler.config.get("variance_type") in LEARNED_VARIANCE_TYPES
    )


def check_variance_setup(scheduler: Any, out_channels: int, channels: int) -> None:
    """Refuse, before sampling, a UNet whose `out_channels` is neither the sample's `channels` nor twice them, a
    scheduler that samples with a learned variance given a UNet that predicts none, and a DPM-type scheduler that
    would cut a prediction of more than 3 channels because its config names a learned variance."""
    if out_channels not in (channels, 2 * channels):
        raise ValueError(
            f"unet has out_channels={out_channels} but denoises {channels}-channel samples: its output must have "
            f"{channels} channels (the prediction) or {2 * channels} (the prediction and a learned variance)"
        )
    name, kind = type(scheduler).__name__, scheduler.config.get("variance_type")
    if steps_with_learned_variance(scheduler) and out_channels != 2 * channels:
        raise ValueError(
            f"scheduler {name} with variance_type={kind!r} samples with the variance the UNet predicts, but this "
            f"unet has out_channels={out_channels} (no variance): use {name}.from_config(pipe.scheduler.config, "
            "variance_type='fixed_small'), or another scheduler"
        )
    stripping = _takes_variance_type(scheduler) and not hasattr(scheduler, "_get_variance")
    if stripping and kind in LEARNED_VARIANCE_TYPES and channels > STRIPPED_CHANNELS:
        raise ValueError(
            f"scheduler {name} with variance_type={kind!r} keeps only the first {STRIPPED_CHANNELS} channels of the "
            f"prediction, but the samples have {channels}: use {name}.from_config(pipe.scheduler.config, "
            "variance_type=None)"
        )


def scheduler_model_output(scheduler: Any, prediction: torch.Tensor, values: torch.Tensor | None) -> torch.Tensor:
    """What `scheduler.step` takes: [prediction, variance values] for a scheduler that samples with the learned
    variance (`steps_with_learned_variance`), else the prediction alone (every other scheduler ignores a variance)."""
    if values is None or not steps_with_learned_variance(scheduler):
        return prediction
    return torch.cat([prediction, values.to(prediction.dtype)], dim=1)


def check_prediction_target(target: Any, scheduler: Any = None) -> None:
    """`prediction_target`: None, "mean" or "score"; a mean or score network needs an epsilon-predicting scheduler
    with `alphas_cumprod` (the pipeline converts the network's output to epsilon)."""
    if not (target is None or (isinstance(target, str) and target in NETWORK_TARGETS)):
        raise ValueError(f"prediction_target must be one of {PREDICTION_TARGETS}, got {target!r:.80}")
    if target is None or scheduler is None:
        return
    ptype = scheduler.config.get("prediction_type")
    if ptype != "epsilon" or not hasattr(scheduler, "alphas_cumprod"):
        has = f"prediction_type={ptype!r}" if ptype != "epsilon" else "no alphas_cumprod"
        raise ValueError(
            f"prediction_target={target!r} needs a scheduler with prediction_type='epsilon' and a discrete "
            f"variance-preserving schedule (the network's {target} is converted to epsilon); "
            f"{type(scheduler).__name__} has {has}"
        )


def epsilon_output(
    kind: str | None, alphas_cumprod: torch.Tensor, output: torch.Tensor, x_t: torch.Tensor, t: Any
) -> torch.Tensor:
    """A network's output at (x_t, t) with its mean or score prediction converted to epsilon (`epsilon_from_target`;
    `kind` None: unchanged); variance values it carries (twice x_t's channels) stay as they are."""
    if kind is None:
        return output
    prediction, values = split_variance(output, x_t.shape[1])
    eps = epsilon_from_target(kind, alphas_cumprod.to(output.device), prediction, x_t, t)
    return eps if values is None else torch.cat([eps, values], dim=1)
