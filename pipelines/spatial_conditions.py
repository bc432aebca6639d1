"""Spatial conditions that enter the denoiser by concatenation (latent diffusion's third conditioning family): a
low-resolution image for super-resolution, a semantic layout map. One place for their math, shared by the training
task and the pipelines: resizing, noise augmentation of the low-resolution input, the layout map of a digit and its
one-hot encoding, the null (dropped) condition.

Part of the Hub-loadable pipeline code: imports only torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .guidance import guidance_scale_embedding


def downsample_area(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Area (box-filter) downsampling: each output pixel is the mean of the input pixels it covers."""
    return F.interpolate(images, size=size, mode="area")


def upsample_bicubic(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bicubic upsampling to `size`, clamped to the model range [-1, 1] (the super-resolution condition)."""
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False).clamp(-1.0, 1.0)


def augment_low_resolution(
    low: torch.Tensor,
    noise_level: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Noise augmentation of a low-resolution input (cascaded diffusion, Ho et al. 2021; the SD x4 upscaler):
    c_s = sqrt(abar_s) c_0 + sqrt(1 - abar_s) eps with the model's own schedule; level 0 is (nearly) clean.
    `noise_level`: (N,) integer levels in [0, len(alphas_cumprod)); `noise`: eps, drawn from `generator` if None."""
    if noise is None:
        noise = torch.randn(low.shape, generator=generator, device=low.device, dtype=low.dtype)
    abar = alphas_cumprod.to(low.device)[noise_level.long()].to(low.dtype).view(-1, *([1] * (low.ndim - 1)))
    return abar.sqrt() * low + (1.0 - abar).sqrt() * noise


def noise_level_embedding(noise_level: torch.Tensor, embedding_dim: int, num_levels: int = 1000) -> torch.Tensor:
    """The sinusoidal embedding of the augmentation level that the UNet takes as `timestep_cond` (the formula of the
    guidance-scale embedding, applied to level / `num_levels`)."""
    return guidance_scale_embedding(noise_level.float() / num_levels, embedding_dim)


def layout_map(images: torch.Tensor, labels: torch.Tensor, cell: int, background_id: int) -> torch.Tensor:
    """The semantic layout of labelled digits: (N, H / cell, W / cell) int64, the digit's class id in every cell that
    holds ink (a pixel above 0 in [-1, 1], i.e. brighter than mid-grey), `background_id` elsewhere. `labels`: (N,)
    one class per image, or (N, H, W) a class per pixel (composed canvases; constant within each cell)."""
    ink = (images > 0.0).any(dim=1, keepdim=True).float()
    covered = F.max_pool2d(ink, kernel_size=cell, stride=cell)[:, 0] > 0
    background = torch.full(covered.shape, background_id, device=labels.device)
    classes = labels.long().view(-1, 1, 1) if labels.ndim == 1 else labels.long()[:, ::cell, ::cell]
    return torch.where(covered, classes, background)


def one_hot_layout(layout: torch.Tensor, num_categories: int, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) category ids -> (N, num_categories, *size) one-hot channels in {0, 1}, nearest-resized to `size`:
    the layout condition concatenated to the denoiser's input (an all-zero map is the null condition)."""
    one_hot = F.one_hot(layout.long(), num_categories).permute(0, 3, 1, 2).float()
    return F.interpolate(one_hot, size=size, mode="nearest") if tuple(one_hot.shape[-2:]) != tuple(size) else one_hot


def drop_condition(condition: torch.Tensor, p_uncond: float, generator: torch.Generator | None) -> torch.Tensor:
    """Replace each row's spatial condition by the null condition (zeros) with probability `p_uncond` (CFG
    training); one uniform draw per row from `generator`."""
    keep = torch.rand(condition.shape[0], generator=generator, device=condition.device) >= p_uncond
    return condition * keep.view(-1, *([1] * (condition.ndim - 1))).to(condition.dtype)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-image peak signal-to-noise ratio in dB of two (N, C, H, W) batches (default range: [-1, 1])."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return 10.0 * torch.log10(torch.tensor(data_range**2) / mse)


def unet_downsampling(unet_config) -> int:
    """The factor a UNet's sample sides must be a multiple of: 2 per downsampling block."""
    return 2 ** (len(unet_config.block_out_channels) - 1)
