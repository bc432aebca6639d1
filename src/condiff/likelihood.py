"""The variational bound of a diffusion model (Ho et al. 2020; Nichol & Dhariwal 2021): its term at one timestep
(the KL between q(x_{t-1} | x_t, x0) and the model's Gaussian, or at t = 0 the discretised Gaussian decoder's
negative log-likelihood of 8-bit pixels), the hybrid loss's L_vlb, and the negative log-likelihood in bits per
dimension over all T steps. Formulas: docs/theory.md, "Variance and parametrisations"."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from condiff.pipelines.guidance import predicted_original
from condiff.pipelines.networks import unet_extra_inputs
from condiff.pipelines.variance import (
    LEARNED_VARIANCE_TYPES,
    epsilon_from_target,
    learned_log_variance,
    posterior_log_variances,
    posterior_mean,
    split_variance,
)


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, exp logvar1) || N(mean2, exp logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) elementwise for `x` 8-bit pixels in [-1, 1] under N(mean, exp(log_scale)^2) integrated over each
    pixel's bin of width 2/255 (the edge bins extend to +-infinity)."""
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = cdf_plus.clamp(min=1e-12).log()
    log_one_minus_cdf_min = (1.0 - cdf_min).clamp(min=1e-12).log()
    log_delta = (cdf_plus - cdf_min).clamp(min=1e-12).log()
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def model_mean_from_x0(alphas_cumprod: torch.Tensor, x0_pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
    """The model's mean mu_theta(x_t, t) = mu~(x_t, x0_pred)."""
    return posterior_mean(alphas_cumprod, x0_pred, x_t, t)


def vlb_term(
    alphas_cumprod: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    model_mean: torch.Tensor,
    model_log_variance: torch.Tensor,
) -> torch.Tensor:
    """The bound's term at `t` per image, in nats per dimension (mean over pixels): KL(q(x_{t-1}|x_t,x0) ||
    N(model_mean, Sigma)) for t > 0, the decoder's -log p(x0 | x_1) for t = 0."""
    true_mean = posterior_mean(alphas_cumprod, x0, x_t, t)
    _, true_log_var = posterior_log_variances(alphas_cumprod, t)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    kl = normal_kl(true_mean, true_log_var.view(shape), model_mean, model_log_variance).flatten(1).mean(1)
    decoder = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_variance).flatten(1).mean(1)
    return torch.where(t == 0, decoder, kl)


def fixed_log_variance(alphas_cumprod: torch.Tensor, t: torch.Tensor, like: torch.Tensor, kind: str) -> torch.Tensor:
    """log Sigma of a fixed-variance model: "fixed_small" (beta~_t, clipped at t = 0) or "fixed_large" (beta_t)."""
    log_beta, log_posterior = posterior_log_variances(alphas_cumprod, t)
    chosen = log_beta if kind == "fixed_large" else log_posterior
    return chosen.view((-1,) + (1,) * (like.ndim - 1)).expand_as(like)


def prior_kl(alphas_cumprod: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T | x0) || N(0, I)) per image in nats per dimension (no parameters; ~0 for a schedule ending at
    noise)."""
    abar = alphas_cumprod[-1]
    mean, log_var = abar.sqrt() * x0, torch.log(1 - abar).expand_as(x0)
    return normal_kl(mean, log_var, torch.zeros_like(x0), torch.zeros_like(x0)).flatten(1).mean(1)


def x0_from_prediction(
    prediction_type: str, alphas_cumprod: torch.Tensor, prediction: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """Tweedie's x0 from an "epsilon", "v_prediction" or "sample" prediction at (x_t, t), per row of `t`."""
    abar = alphas_cumprod[t].view((-1,) + (1,) * (x_t.ndim - 1))
    return predicted_original(x_t, prediction, abar, prediction_type)


NATS_TO_BITS = 1.0 / math.log(2.0)


# --- the negative log-likelihood over all T steps --------------------------------------------------------------------


@dataclass
class BitsPerDim:
    """`bits_per_dim`'s result. `per_image`: the bound in bits per dimension of each image; `terms`: the bound's term
    at each of `timesteps` in bits/dim, averaged over the images (unweighted: with a stride, each KL term stands for
    `kl_weight` timesteps in `per_image`); `prior`: L_T averaged over the images."""

    per_image: torch.Tensor
    timesteps: list[int]
    terms: torch.Tensor
    prior: float
    kl_weight: float
    variance: str
    prediction_type: str
    clip_denoised: bool
    conditional: bool
    num_train_timesteps: int

    @property
    def mean(self) -> float:
        return float(self.per_image.mean())

    @property
    def standard_error(self) -> float | None:
        """The standard error of `mean` over the images (None for one image)."""
        n = len(self.per_image)
        return float(self.per_image.std() / math.sqrt(n)) if n > 1 else None

    @property
    def exact(self) -> bool:
        """Whether every term was evaluated (no stride): then `per_image` is the bound itself, not an estimate."""
        return len(self.timesteps) == self.num_train_timesteps

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: the mean, its standard error, the settings and the per-image and per-timestep values."""
        return {
            "bits_per_dim": self.mean,
            "standard_error": self.standard_error,
            "num_images": len(self.per_image),
            "variance": self.variance,
            "prediction_type": self.prediction_type,
            "clip_denoised": self.clip_denoised,
            "conditional": self.conditional,
            "num_train_timesteps": self.num_train_timesteps,
            "num_timesteps_evaluated": len(self.timesteps),
            "kl_weight": self.kl_weight,
            "exact": self.exact,
            "decoder_bits_per_dim": float(self.terms[0]),
            "prior_bits_per_dim": self.prior,
            "per_image": self.per_image.tolist(),
            "timesteps": list(self.timesteps),
            "terms_bits_per_dim": self.terms.tolist(),
        }


def evaluation_timesteps(num_train_timesteps: int, stride: int = 1) -> tuple[list[int], float]:
    """(timesteps, weight of each KL term): t = 0 (the decoder) and every `stride`-th t >= 1, each KL term weighted so
    that their sum estimates the sum over all t = 1..T-1 (weight 1 at stride 1: the exact sum)."""
    if not 1 <= stride < max(num_train_timesteps, 2):
        raise ValueError(f"the timestep stride must be in 1..{num_train_timesteps - 1}, got {stride}")
    kl = list(range(1, num_train_timesteps)) if stride == 1 else list(range(stride, num_train_timesteps, stride))
    return [0, *kl], ((num_train_timesteps - 1) / len(kl) if kl else 1.0)


def fixed_variance_kind(scheduler: Any) -> str:
    """The variance a scheduler's config names: "fixed_large" (beta_t), a learned kind, else "fixed_small" (beta~_t,
    diffusers' default; also for schedulers without a variance_type, such as DPM-Solver's)."""
    kind = scheduler.config.get("variance_type") or "fixed_small"
    if kind in LEARNED_VARIANCE_TYPES:
        return kind
    return "fixed_large" if kind.startswith("fixed_large") else "fixed_small"


@dataclass
class _Model:
    """What `_timestep_terms` needs besides the data: the network and how to read its output."""

    unet: Any
    alphas_cumprod: torch.Tensor
    prediction_type: str
    target: str | None
    variance: str
    clip_denoised: bool
    extra: dict[str, Any]


def _timestep_terms(
    m: _Model, x0: torch.Tensor, labels: torch.Tensor | None, t: torch.Tensor, generator: torch.Generator | None
) -> tuple[torch.Tensor, str]:
    """The bound's terms (nats/dim) of the images `x0` at each timestep of `t`, timestep-major ([len(t) * n]), from one
    forward pass; x_t ~ q(x_t | x0) drawn per timestep in order. Also the variance actually used."""
    abar, n, channels = m.alphas_cumprod, x0.shape[0], x0.shape[1]
    gen_device = generator.device if generator is not None else "cpu"
    noise = torch.cat([torch.randn(x0.shape, generator=generator, device=gen_device) for _ in range(len(t))])
    x0_rows, t_rows = x0.repeat(len(t), 1, 1, 1), t.repeat_interleave(n)
    a = abar[t_rows].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0_rows + (1 - a).sqrt() * noise.to(x0.device)
    kwargs = dict(m.extra) | ({} if labels is None else {"class_labels": labels.repeat(len(t))})
    out = m.unet(x_t, t_rows, **kwargs)
    out = (out.sample if hasattr(out, "sample") else out).float()
    if out.shape[1] not in (channels, 2 * channels):
        raise ValueError(f"the UNet outputs {out.shape[1]} channels for {channels}-channel images (want 1x or 2x)")
    pred, v = split_variance(out, channels)
    if v is not None:
        variance = m.variance if m.variance in LEARNED_VARIANCE_TYPES else "learned_range"
        log_var = learned_log_variance(v, abar, t_rows)
    elif m.variance in LEARNED_VARIANCE_TYPES:
        raise ValueError(f"the scheduler's variance_type is {m.variance} but the UNet outputs no variance channels")
    else:
        variance, log_var = m.variance, fixed_log_variance(abar, t_rows, pred, m.variance)
    kind = m.prediction_type
    if m.target is not None:
        pred, kind = epsilon_from_target(m.target, abar, pred, x_t, t_rows), "epsilon"
    x0_pred = x0_from_prediction(kind, abar, pred, x_t, t_rows)
    if m.clip_denoised:
        x0_pred = x0_pred.clamp(-1, 1)
    mean = model_mean_from_x0(abar, x0_pred, x_t, t_rows)
    return vlb_term(abar, x0_rows, x_t, t_rows, mean, log_var), variance


def _module_device(module: Any) -> torch.device:
    param = next(iter(module.parameters()), None) if hasattr(module, "parameters") else None
    return param.device if param is not None else torch.device("cpu")


def _network_inputs(unet: Any, labels: torch.Tensor | None) -> dict[str, Any]:
    config = getattr(unet, "config", None) or {}
    if labels is None and config.get("num_class_embeds") is not None:
        raise ValueError("a class-conditional UNet needs labels (its null class for the unconditional likelihood)")
    return unet_extra_inputs(unet) if config else {}


@torch.inference_mode()
def bits_per_dim(
    unet: Any,
    scheduler: Any,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    batch_size: int = 64,
    stride: int = 1,
    generator: torch.Generator | None = None,
    clip_denoised: bool = True,
    prediction_target: str | None = None,
    progress: bool = False,
) -> BitsPerDim:
    """The variational bound on -log2 p(x0) per dimension of each of `images` (8-bit pixels in [-1, 1], [N, C, H, W]):
    (sum over t = 0..T-1 of L_t, each at one x_t ~ q(x_t | x0) drawn from `generator`, + L_T) / ln 2.

    The model's variance: learned when the UNet outputs 2C channels, else the scheduler's fixed one (fixed_small:
    beta~_t, clipped at t = 0; fixed_large: beta_t). Its mean: mu~(x_t, x0_pred), x0_pred from the prediction (the
    scheduler's prediction_type, or `prediction_target` "mean"/"score"), clipped to [-1, 1] with `clip_denoised`.
    `labels`: the classes a class-conditional UNet is given (the true ones: log p(x | y)). `batch_size`: rows per
    forward pass, min(N, batch_size) images at batch_size // that many timesteps each; the noise depends on the
    image groups but not on how many timesteps share a pass. `stride` > 1: every stride-th KL term only, weighted to
    estimate the full sum (a smoke run, not a measurement). The UNet runs as it is (eval mode expected)."""
    device = _module_device(unet)
    abar = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    num_t = len(abar)
    timesteps, weight = evaluation_timesteps(num_t, stride)
    prediction_type = prediction_target or scheduler.config.prediction_type
    model = _Model(unet, abar, scheduler.config.prediction_type, prediction_target, fixed_variance_kind(scheduler),
                   clip_denoised, _network_inputs(unet, labels))  # fmt: skip
    group = min(len(images), batch_size)
    per_pass = max(1, batch_size // group)
    chunks = [torch.tensor(timesteps[i : i + per_pass], device=device) for i in range(0, len(timesteps), per_pass)]
    totals, term_sums, prior_sum, variance = [], torch.zeros(len(timesteps), dtype=torch.float64), 0.0, ""
    bar = _progress(progress, len(chunks) * math.ceil(len(images) / group))
    for start in range(0, len(images), group):
        x0 = images[start : start + group].to(device=device, dtype=torch.float32)
        y = None if labels is None else labels[start : start + group].to(device)
        terms = []
        for t in chunks:
            nats, variance = _timestep_terms(model, x0, y, t, generator)
            terms.append(nats.double().view(len(t), -1).cpu())
            bar.update()
        terms = torch.cat(terms)  # [timesteps, images]
        prior = prior_kl(abar, x0).double().cpu()
        totals.append(terms[0] + weight * terms[1:].sum(0) + prior)
        term_sums += terms.sum(1)
        prior_sum += float(prior.sum())
    bar.close()
    n = len(images)
    return BitsPerDim(
        torch.cat(totals) * NATS_TO_BITS, timesteps, term_sums / n * NATS_TO_BITS, prior_sum / n * NATS_TO_BITS,
        weight, variance, prediction_type, clip_denoised, labels is not None, num_t,
    )  # fmt: skip


def _progress(enabled: bool, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc="bits/dim", unit="pass")
