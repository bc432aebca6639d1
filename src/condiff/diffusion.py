"""The denoising objective shared by every diffusion training task (and the bare benchmark loop).

One place for: what the network learns to predict (`diffusion_target`), label dropout for classifier-free
guidance (`drop_labels`) and the loss on one batch (`denoising_loss`), with all randomness drawn from the
generator the caller passes, so that a resumed run draws the same noise as an uninterrupted one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def diffusion_target(scheduler, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the network learns to predict, for the scheduler's prediction type."""
    kind = scheduler.config.prediction_type
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
    **model_kwargs,
) -> torch.Tensor:
    """Ho et al.'s simple loss E ||target - model(x_t, t, **model_kwargs)||^2 on one batch (a differentiable tensor).

    The target follows the scheduler's prediction type (epsilon, v_prediction or sample). Noise and timesteps come
    from `generator`, in that order; the loss is computed in float32 whatever the autocast dtype. `concat`: a spatial
    condition concatenated to x_t on the channel axis (the model's input; the target keeps x_0's channels).
    """
    noisy, noise, timesteps = noisy_batch(scheduler, clean, generator)
    model_input = noisy if concat is None else torch.cat([noisy, concat.to(noisy.dtype)], dim=1)
    pred = unet(model_input, timesteps, **model_kwargs).sample
    return F.mse_loss(pred.float(), diffusion_target(scheduler, clean, noise, timesteps).float())
