"""The denoising objective shared by every diffusion training task (and the bare benchmark loop).

One place for: what the network learns to predict (`diffusion_target`), label dropout for classifier-free
guidance (`drop_labels`) and the loss on one batch (`denoising_loss`: Ho et al.'s simple loss, plus Nichol &
Dhariwal's L_vlb for a UNet that learns its variance), with all randomness drawn from the generator the caller passes,
so that a resumed run draws the same noise as an uninterrupted one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from condiff.pipelines.variance import (
    NETWORK_TARGETS,
    epsilon_from_target,
    learned_log_variance,
    split_variance,
    target_from_epsilon,
)


def diffusion_target(
    scheduler,
    clean: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    target: str | None = None,
    noisy: torch.Tensor | None = None,
) -> torch.Tensor:
    """What the network learns to predict: `target` ("mean" or "score", which need `noisy` = x_t), else the
    scheduler's prediction type."""
    kind = scheduler.config.prediction_type if target is None else target
    if kind in NETWORK_TARGETS:
        abar = scheduler.alphas_cumprod.to(clean.device)
        return target_from_epsilon(kind, abar, noise, noisy, timesteps)
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(clean, noise, timesteps)
    if kind == "sample":
        return clean
    raise ValueError(f"unsupported prediction_type {kind!r}")


def drop_labels(
    labels: torch.Tensor, null_class: int, p_uncond: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Replace each label by the null class with probability p_uncond, per sample (CFG training)."""
    drop = torch.rand(labels.shape, device=labels.device, generator=generator) < p_uncond
    return torch.where(drop, torch.full_like(labels, null_class), labels)


def noisy_batch(
    scheduler, clean: torch.Tensor, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy, noise, timesteps): x_t = add_noise(x0, eps, t) with eps ~ N(0, I) and t ~ U{0..T-1} from `generator`."""
    noise = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    num_train_timesteps = scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, num_train_timesteps, (clean.shape[0],), generator=generator, device=clean.device)
    return scheduler.add_noise(clean, noise, timesteps), noise, timesteps


def denoising_loss(
    unet,
    scheduler,
    clean: torch.Tensor,
    generator: torch.Generator | None = None,
    concat: torch.Tensor | None = None,
    target: str | None = None,
    vlb_weight: float = 0.001,
    **model_kwargs,
) -> torch.Tensor:
    """Ho et al.'s simple loss E ||target - model(x_t, t, **model_kwargs)||^2 on one batch (a differentiable tensor).

    The target follows the scheduler's prediction type (epsilon, v_prediction or sample), or `target`: "mean" (plain
    MSE on mu~(x_t, x0)) or "score" (-eps / sigma_t, with NCSN's weighting sigma_t^2). A UNet with twice the image's
    channels learns its variance too: the hybrid loss L_simple + `vlb_weight` T L_vlb(t) (Nichol & Dhariwal; the
    mean's gradient stopped inside L_vlb). Noise and timesteps come from `generator`, in that order; the loss is
    computed in float32 whatever the autocast dtype. `concat`: a spatial condition concatenated to x_t on the
    channel axis (the model's input; the target keeps x_0's channels).
    """
    noisy, noise, timesteps = noisy_batch(scheduler, clean, generator)
    model_input = noisy if concat is None else torch.cat([noisy, concat.to(noisy.dtype)], dim=1)
    output = unet(model_input, timesteps, **model_kwargs).sample.float()
    pred, v = split_variance(output, clean.shape[1])
    goal = diffusion_target(scheduler, clean, noise, timesteps, target, noisy).float()
    if target == "score":
        sigma2 = (1 - scheduler.alphas_cumprod.to(clean.device)[timesteps]).view(-1, 1, 1, 1)
        loss = (sigma2 * (pred - goal) ** 2).mean()
    else:
        loss = F.mse_loss(pred, goal)
    if v is None:
        return loss
    return loss + vlb_weight * scheduler.config.num_train_timesteps * hybrid_vlb(
        scheduler, clean.float(), noisy.float(), timesteps, pred.detach(), v, target
    )


def hybrid_vlb(scheduler, clean, noisy, timesteps, pred, v, target: str | None = None) -> torch.Tensor:
    """L_vlb(t) in bits per dimension, batch mean, for a prediction `pred` (detached by the caller: only the
    variance values `v` learn from it)."""
    from condiff.likelihood import NATS_TO_BITS, model_mean_from_x0, vlb_term, x0_from_prediction

    abar = scheduler.alphas_cumprod.to(clean.device)
    kind = scheduler.config.prediction_type
    if target in NETWORK_TARGETS:
        pred, kind = epsilon_from_target(target, abar, pred, noisy, timesteps), "epsilon"
    x0 = x0_from_prediction(kind, abar, pred, noisy, timesteps)
    mean = model_mean_from_x0(abar, x0, noisy, timesteps)
    log_var = learned_log_variance(v, abar, timesteps)
    return vlb_term(abar, clean, noisy, timesteps, mean, log_var).mean() * NATS_TO_BITS
