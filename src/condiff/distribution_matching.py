"""Distribution matching distillation (DMD, Yin et al. 2024; DMD2's two time-scale updates) of a CFG teacher into a
one-step generator that takes the guidance scale as an input.

The generator G(z, y, w) is a guidance-embedded UNet sampled with one deterministic DDIM step from pure noise (the
"trailing" step at the last training timestep, what `DDIMScheduler` does with one step). Its samples x are pushed
towards the teacher's guided distribution by the gradient of KL(p_fake || p_real) at noised copies x_t of them:
s_fake(x_t) - s_real(x_t), proportional to x0_fake(x_t) - x0_real(x_t), where x0_real is the teacher's CFG estimate
uncond + w (cond - uncond) of the clean image and x0_fake that of a "fake score" network trained by plain denoising
on the generator's own samples. Like DMD, the gradient is divided by the mean |x - x0_real| of each sample. An
optional regression term keeps G close to a few-step student's output for the same noise (DMD's regression loss,
with a few-step student as the cheap stand-in for the teacher's ODE), which guards against mode collapse.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from condiff.diffusion import diffusion_target, drop_labels
from condiff.distillation import draw_guidance_scales, embedded_prediction, guided_teacher_prediction
from condiff.pipelines.guidance import predicted_noise, predicted_original


def is_generator_turn(step: int, fake_warmup_steps: int, fake_updates_per_generator_update: int) -> bool:
    """Whether optimizer update number `step` (0-based) trains the generator; the others train the fake score (K
    fake-score updates, then one generator update, after `fake_warmup_steps` fake-score-only updates)."""
    if step < fake_warmup_steps:
        return False
    return (step - fake_warmup_steps) % (fake_updates_per_generator_update + 1) == fake_updates_per_generator_update


def _abar(scheduler, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    view = (-1, *([1] * (like.ndim - 1)))
    return scheduler.alphas_cumprod.to(like.device)[timesteps].view(view)


def one_step_sample(generator_net, scheduler, noise: torch.Tensor, labels: torch.Tensor, w: torch.Tensor):
    """The generator's image for `noise`: x0 of one DDIM step from the last training timestep (unclipped; the
    pipeline's `DDIMScheduler` also clips it to [-1, 1])."""
    last = torch.full((noise.shape[0],), scheduler.config.num_train_timesteps - 1, device=noise.device)
    prediction = embedded_prediction(generator_net, noise, last, labels, w).float()
    kind = scheduler.config.prediction_type
    return predicted_original(noise.float(), prediction, _abar(scheduler, last, noise), kind)


@torch.no_grad()
def few_step_sample(net, scheduler, noise: torch.Tensor, labels: torch.Tensor, w: torch.Tensor, steps: int):
    """A guidance-embedded student's image for `noise` after `steps` DDIM steps on the "trailing" grid with
    `set_alpha_to_one` and x0 clipped to [-1, 1] at every step (the path its pipeline samples)."""
    total, kind = scheduler.config.num_train_timesteps, scheduler.config.prediction_type
    stride, sample = total // steps, noise.float()
    abar = torch.cat([torch.ones(1), scheduler.alphas_cumprod]).to(noise.device)  # abar[t + 1]; abar[0] = 1
    for index in range(steps, 0, -1):
        start = torch.full((noise.shape[0],), index * stride - 1, device=noise.device)
        prediction = embedded_prediction(net, sample.to(noise.dtype), start, labels, w).float()
        a_from, a_to = abar[index * stride].view(-1, 1, 1, 1), abar[(index - 1) * stride].view(-1, 1, 1, 1)
        original = predicted_original(sample, prediction, a_from, kind).clamp(-1, 1)
        sample = a_to.sqrt() * original + (1 - a_to).sqrt() * predicted_noise(sample, prediction, a_from, kind)
    return sample


def generator_inputs(clean: torch.Tensor, labels, null_class: int, scale_range, p_uncond: float, generator):
    """(noise z, guidance scales w, labels with dropout) for one batch, drawn from `generator` in that order."""
    noise = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    w = draw_guidance_scales(clean.shape[0], scale_range, generator, clean.device)
    return noise, w, drop_labels(labels, null_class, p_uncond, generator)


def draw_timesteps(n: int, timestep_range: tuple[float, float], total: int, generator, device) -> torch.Tensor:
    """n integer timesteps uniform in [lo T, hi T)."""
    lo, hi = int(timestep_range[0] * total), max(int(timestep_range[1] * total), int(timestep_range[0] * total) + 1)
    return torch.randint(lo, hi, (n,), generator=generator, device=device)


def distribution_matching_loss(images: torch.Tensor, real_original: torch.Tensor, fake_original: torch.Tensor):
    """DMD's generator loss: its gradient with respect to `images` is (x0_fake - x0_real) / mean|x - x0_real| per
    sample, divided by the number of elements (a mean-reduced MSE against a detached target one such step away)."""
    with torch.no_grad():
        scale = (images - real_original).abs().mean(dim=tuple(range(1, images.ndim)), keepdim=True)
        gradient = torch.nan_to_num((fake_original - real_original) / scale.clamp_min(1e-5))
    return 0.5 * F.mse_loss(images.float(), (images - gradient).detach().float())


def generator_loss(
    generator_net, fake_score, teacher, scheduler, noise, labels, w, null_class: int, timestep_range, generator
):
    """(DMD generator loss, generated images): the images noised at t ~ U[timestep_range T), scored by the frozen
    teacher's CFG estimate and by the fake score (both without gradient)."""
    images = one_step_sample(generator_net, scheduler, noise, labels, w)
    total, kind = scheduler.config.num_train_timesteps, scheduler.config.prediction_type
    t = draw_timesteps(images.shape[0], timestep_range, total, generator, images.device)
    noise = torch.randn(images.shape, generator=generator, device=images.device)
    noisy = scheduler.add_noise(images.detach(), noise, t)
    abar = _abar(scheduler, t, noisy)
    with torch.no_grad():
        real = guided_teacher_prediction(teacher, noisy, t, labels, null_class, w)
        fake = embedded_prediction(fake_score, noisy, t, labels, w).float()
        real, fake = (predicted_original(noisy, p, abar, kind) for p in (real, fake))
    return distribution_matching_loss(images, real, fake), images


def fake_score_loss(fake_score, scheduler, images: torch.Tensor, labels, w, generator) -> torch.Tensor:
    """Plain denoising loss of the fake score on the generator's (detached) images, conditioned on (y, w)."""
    images = images.detach()
    t = torch.randint(0, scheduler.config.num_train_timesteps, (images.shape[0],), generator=generator,
                      device=images.device)  # fmt: skip
    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    prediction = embedded_prediction(fake_score, scheduler.add_noise(images, noise, t), t, labels, w).float()
    return F.mse_loss(prediction, diffusion_target(scheduler, images, noise, t).float())
