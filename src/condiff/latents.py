"""The VAE side of latent diffusion: its training loss, encoding a data set once, the scaling factor, and
reconstruction quality (Rombach et al. 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def vae_loss(vae, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean squared reconstruction error per pixel, KL to N(0, I) summed over latent elements, batch mean).

    The latent is sampled from the posterior with `generator`, as in training of the LDM autoencoders.
    """
    posterior = vae.encode(images).latent_dist
    latents = posterior.sample(generator=generator)
    reconstruction = vae.decode(latents).sample
    return F.mse_loss(reconstruction, images), posterior.kl().mean()


@torch.no_grad()
def encode_posterior(vae, images: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the VAE posterior of each image, unscaled, computed once (in eval mode, on the VAE's device).

    Latent training draws z = mean + std * noise from these each step instead of running the encoder every step.
    """
    vae.eval()
    device, dtype = vae.device, vae.dtype
    means, stds = [], []
    for i in range(0, len(images), batch_size):
        posterior = vae.encode(images[i : i + batch_size].to(device, dtype)).latent_dist
        means.append(posterior.mean.float().cpu())
        stds.append(posterior.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


def measure_scaling_factor(vae, images: torch.Tensor, seed: int = 0) -> float:
    """1 / std of sampled (unscaled) latents of `images`: the factor that gives diffusion unit-variance latents."""
    mean, std = encode_posterior(vae, images)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed))
    return float(1.0 / (mean + std * noise).std())


@torch.no_grad()
def reconstruct(vae, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Decode the posterior mean of each image: the deterministic reconstruction, in [-1, 1] (clamped), on CPU."""
    mean, _ = encode_posterior(vae, images, batch_size)
    out = [
        vae.decode(mean[i : i + batch_size].to(vae.device, vae.dtype)).sample for i in range(0, len(mean), batch_size)
    ]
    return torch.cat(out).float().cpu().clamp(-1, 1)


def psnr(reference: torch.Tensor, test: torch.Tensor) -> float:
    """Mean PSNR in dB over images in [-1, 1] (peak-to-peak 2), per image then averaged."""
    mse = ((reference.float() - test.float()) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return float((10 * torch.log10(4.0 / mse)).mean())


def reconstruction_report(vae, images: torch.Tensor, labels, evaluate: bool = True) -> dict:
    """PSNR of the reconstructions of `images` and, when `evaluate`, condiff's evaluator accuracy on the real
    images and on their reconstructions (a VAE that loses the class shows up here before any diffusion)."""
    from condiff.evaluator import classifier_accuracy, load_evaluator

    reconstructed = reconstruct(vae, images)
    report = {"num_images": len(images), "psnr": psnr(images, reconstructed)}
    if evaluate:
        evaluator = load_evaluator()
        report["accuracy_real"] = classifier_accuracy(evaluator, images, labels)
        report["accuracy_reconstructed"] = classifier_accuracy(evaluator, reconstructed, labels)
    return report


def vae_scale_factor(vae_config) -> int:
    """How much the VAE shrinks each side: 2 per down-sampling block (all blocks but the last)."""
    return 2 ** (len(vae_config.block_out_channels) - 1)


def sample_latents(mean: torch.Tensor, std: torch.Tensor, scaling_factor: float, generator) -> torch.Tensor:
    """Scaled latents z = (mean + std * noise) * scaling_factor with noise from `generator` (on CPU, moved)."""
    noise = torch.randn(mean.shape, generator=generator, device=generator.device).to(mean.device, mean.dtype)
    return (mean + std * noise) * scaling_factor
