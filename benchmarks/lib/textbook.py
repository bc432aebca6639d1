"""The textbook CFG sampler (Ho & Salimans 2022, as the popular MNIST CFG scripts write it), the baseline of the
speed benchmarks: every one of the scheduler's training timesteps with DDPM, and per step a forward pass with the
labels and a second, separate one with the null class, combined with condiff's `cfg_combine`. It differs from the
pipeline only in that the two branches are never batched together and both run at every scale (also 0 and 1)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from condiff.pipelines.checks import unet_sample_size
from condiff.pipelines.guidance import cfg_combine
from condiff.pipelines.networks import unet_extra_inputs
from diffusers import DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

from condiff.evaluation.sampling import Samples, balanced_labels, pipeline_device, timed_generation


def textbook_scheduler(config) -> DDPMScheduler:
    """The DDPM scheduler of the textbook sampler, from a pipeline's scheduler config (the training schedule)."""
    return DDPMScheduler.from_config(config)


@torch.inference_mode()
def textbook_sample(
    unet,
    ddpm_scheduler: DDPMScheduler,
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    guidance_scale: float = 3.0,
    generator: torch.Generator | None = None,
    null_class: int | None = None,
    max_steps: int | None = None,
) -> tuple[torch.Tensor, float]:
    """Sample one image per label; returns (images [N, C, H, W] in [0, 1] on the CPU, network evaluations per
    image). `max_steps` stops after that many steps (speed measurements only: the result is not an image)."""
    device = next(unet.parameters()).device
    cfg = unet.config
    null_class = cfg.num_class_embeds - 1 if null_class is None else null_class
    cond = torch.as_tensor(labels, dtype=torch.long, device=device).reshape(-1)
    uncond = torch.full_like(cond, null_class)
    shape = (len(cond), cfg.in_channels, *unet_sample_size(cfg))
    x = randn_tensor(shape, generator=generator, device=device, dtype=unet.dtype)
    ddpm_scheduler.set_timesteps(ddpm_scheduler.config.num_train_timesteps, device=device)
    x = x * ddpm_scheduler.init_noise_sigma
    forwards, extra = 0, unet_extra_inputs(unet)
    for t in ddpm_scheduler.timesteps[:max_steps]:
        pred_cond = unet(x, t, class_labels=cond, **extra).sample
        pred_uncond = unet(x, t, class_labels=uncond, **extra).sample
        forwards += 2
        guided = cfg_combine(pred_uncond, pred_cond, guidance_scale)
        x = ddpm_scheduler.step(guided, t, x, generator=generator).prev_sample
    return (x.float().cpu() / 2 + 0.5).clamp(0, 1), float(forwards)


def generate_textbook_samples(
    pipe,
    num_images: int,
    guidance_scale: float = 3.0,
    batch_size: int = 250,
    seed: int = 0,
    max_steps: int | None = None,
    warmup: bool = True,
) -> Samples:
    """`num_images` textbook samples with `pipe`'s UNet and training schedule (labels cycling through the classes),
    timed like `condiff.evaluation.generate_samples` (same seeds per batch); `warmup`: one untimed step first."""
    labels = balanced_labels(pipe.num_classes, math.ceil(num_images / pipe.num_classes))[:num_images]
    scheduler = textbook_scheduler(pipe.scheduler.config)

    def sample(batch_labels: np.ndarray, generator: torch.Generator | None, steps: int | None = max_steps):
        return textbook_sample(pipe.unet, scheduler, batch_labels, guidance_scale, generator, pipe.null_class, steps)

    warm = (lambda batch_labels: sample(batch_labels, None, 1)) if warmup else None
    return timed_generation(sample, labels, batch_size, seed, pipeline_device(pipe), warm)
