"""Distribution matching distillation (DMD, Yin et al. 2024; DMD2's two time-scale updates) of a CFG teacher into a
one-step generator that takes the guidance scale as an input.

The generator G(z, y, w) is a guidance-embedded UNet sampled with one deterministic DDIM step from pure noise (the
"trailing" step at the last training timestep, what `DDIMScheduler` does with one step). Its samples x are pushed
towards the teacher's guided distribution by the gradient of KL(p_fake || p_real) at noised copies x_t of them:
s_fake(x_t) - s_real(x_t), proportional to x0_fake(x_t) - x0_real(x_t), where x0_real is the teacher's CFG estimate
uncond + w (cond - uncond) of the clean image and x0_fake that of a "fake score" network trained by plain denoising
on the generator's own samples. Like DMD, the gradient is divided by the mean |x - x0_real| of each sample. An
optional regression term keeps G close to a few-step student's output for the same noise (DMD's regression loss,
with a few-step student as the cheap stand-in for the teacher's ODE), which guards against mode collapse. An
optional GAN term (DMD2) trains a small classifier head on the fake score's bottleneck to tell noised real images
from noised generated ones, and adds its non-saturating loss to the generator's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from condiff.diffusion import diffusion_target, drop_labels
from condiff.distillation import ddim_step, draw_guidance_scales, embedded_prediction, guided_teacher_prediction
from condiff.pipelines.checks import unet_sample_size
from condiff.pipelines.guidance import predicted_original


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
        sample = ddim_step(sample, prediction, a_from, a_to, kind, clip=True)
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
    generator_net, fake_score, teacher, scheduler, noise, labels, w, null_class: int, timestep_range, generator,
    head=None, gan_weight: float = 0.0,
):  # fmt: skip
    """(loss, generated images, logs): DMD's loss with the images noised at t ~ U[timestep_range T), scored by the
    frozen teacher's CFG estimate and by the fake score (both without gradient); with a discriminator `head` and
    `gan_weight` > 0, plus DMD2's non-saturating GAN loss on the fake score's features of the same noised images."""
    images = one_step_sample(generator_net, scheduler, noise, labels, w)
    total, kind = scheduler.config.num_train_timesteps, scheduler.config.prediction_type
    t = draw_timesteps(images.shape[0], timestep_range, total, generator, images.device)
    noisy = scheduler.add_noise(images, torch.randn(images.shape, generator=generator, device=images.device), t)
    abar = _abar(scheduler, t, noisy)
    with torch.no_grad():
        scored = noisy.detach()
        real = guided_teacher_prediction(teacher, scored, t, labels, null_class, w)
        fake = embedded_prediction(fake_score, scored, t, labels, w).float()
        real, fake = (predicted_original(scored, p, abar, kind) for p in (real, fake))
    loss = distribution_matching_loss(images, real, fake)
    logs = {"dmd_loss": loss.item()}
    if head is not None and gan_weight > 0:
        surrogate, value = generator_gan_surrogate(fake_score, head, noisy, t, labels, w)
        loss, logs["generator_gan_loss"] = loss + gan_weight * surrogate, value.item()
    return loss, images, logs


def fake_score_loss(
    fake_score,
    scheduler,
    images: torch.Tensor,
    labels,
    w,
    generator,
    head=None,
    real_images=None,
    gan_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """(loss, logs): plain denoising loss of the fake score on the generator's (detached) images, conditioned on
    (y, w); with a discriminator `head`, `real_images` and `gan_weight` > 0, plus the head's logistic loss on real
    and generated images noised to the same t (it trains the head and the fake score's features, as in DMD2)."""
    images = images.detach()
    t = torch.randint(0, scheduler.config.num_train_timesteps, (images.shape[0],), generator=generator,
                      device=images.device)  # fmt: skip
    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    noisy = scheduler.add_noise(images, noise, t)
    gan = head is not None and gan_weight > 0
    if gan:
        prediction, fake_features = prediction_and_features(fake_score, noisy, t, labels, w)
    else:
        prediction = embedded_prediction(fake_score, noisy, t, labels, w)
    loss = F.mse_loss(prediction.float(), diffusion_target(scheduler, images, noise, t).float())
    logs = {"denoising_loss": loss.item()}
    if gan:
        real_noise = torch.randn(real_images.shape, generator=generator, device=images.device, dtype=images.dtype)
        real_noisy = scheduler.add_noise(real_images, real_noise, t)
        _, real_features = prediction_and_features(fake_score, real_noisy, t, labels, w)
        classifier = discriminator_loss(head, real_features, fake_features)
        loss, logs["discriminator_loss"] = loss + gan_weight * classifier, classifier.item()
    return loss, logs


class DiscriminatorHead(torch.nn.Module):
    """DMD2's GAN classifier: a small head on the fake score's bottleneck (its mid block's output) that tells real
    images from generated ones, both noised to the same level; one logit per image."""

    def __init__(self, channels: int, norm_num_groups: int = 8):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Conv2d(channels, channels, 3, padding=1),
            torch.nn.GroupNorm(norm_num_groups, channels),
            torch.nn.SiLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(channels, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features.float()).squeeze(1)


def prediction_and_features(unet, noisy, timesteps, labels, w) -> tuple[torch.Tensor, torch.Tensor]:
    """A guidance-embedded UNet's output and its mid block's output (the bottleneck features) in one forward."""
    captured = []
    hook = unet.mid_block.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        prediction = embedded_prediction(unet, noisy, timesteps, labels, w)
    finally:
        hook.remove()
    return prediction, captured[0]


def discriminator_loss(head, real_features: torch.Tensor, fake_features: torch.Tensor) -> torch.Tensor:
    """The classifier's logistic loss: softplus(-D(real)) + softplus(D(fake)), each a mean over images."""
    return F.softplus(-head(real_features)).mean() + F.softplus(head(fake_features)).mean()


def generator_gan_surrogate(fake_score, head, noisy: torch.Tensor, timesteps, labels, w):
    """(surrogate, GAN loss value): the generator's non-saturating loss softplus(-D(x_t)) passed to `noisy` (x_t as a
    function of the generator's images) as a detached gradient, so that neither the fake score nor the head gets a
    gradient from it (the generator's update must not move them)."""
    leaf = noisy.detach().requires_grad_(True)
    with torch.enable_grad():
        _, features = prediction_and_features(fake_score, leaf, timesteps, labels, w)
        loss = F.softplus(-head(features)).mean()
        (gradient,) = torch.autograd.grad(loss, leaf)
    return (noisy.float() * gradient.float()).sum(), loss.detach()


@torch.no_grad()
def teacher_ode_pairs(
    pipe, num_pairs: int, scale_range: tuple[float, float], num_inference_steps: int, seed: int = 0,
    batch_size: int = 50,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """DMD's paired dataset: (noise z, label, w, the teacher's image from z) for `num_pairs` draws, the image from
    the teacher's deterministic ODE path (its scheduler, `num_inference_steps` steps, CFG with w at every step),
    in [-1, 1]. Labels cycle through the classes; w is drawn once per batch, uniform in `scale_range`."""
    g = torch.Generator().manual_seed(seed)
    unet = pipe.unet
    shape = (unet.config.in_channels, *unet_sample_size(unet.config))
    parts: dict[str, list[torch.Tensor]] = {"noise": [], "labels": [], "w": [], "images": []}
    for start in range(0, num_pairs, batch_size):
        n = min(batch_size, num_pairs - start)
        noise = torch.randn((n, *shape), generator=g)
        w = float(draw_guidance_scales(1, scale_range, g, "cpu")[0])
        labels = (torch.arange(start, start + n) % pipe.num_classes).long()
        images = pipe(label=labels.tolist(), latents=noise.clone(), guidance_scale=w, guidance_interval=(0.0, 1.0),
                      num_inference_steps=num_inference_steps, output_type="pt").images  # fmt: skip
        for key, value in (("noise", noise), ("labels", labels), ("w", torch.full((n,), w)), ("images", images)):
            parts[key].append(value.cpu().float() if key != "labels" else value)
    pairs = {k: torch.cat(v) for k, v in parts.items()}
    pairs["images"] = pairs["images"] * 2 - 1
    return pairs
