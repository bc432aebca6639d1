"""Distillation of a class-conditional CFG teacher into students that sample faster.

Consistency distillation (Latent Consistency Models, Luo et al. 2023, in pixel space): a guidance-embedded student
f(x_t, t, y, w) learns to map any point of the teacher's guided probability-flow ODE to the same clean image, so that
`LCMScheduler` samples in 1-8 steps. The target is the student itself (no gradient) one guided DDIM step of the
teacher further along the ODE, computed by a target network: an EMA of the student (decay 0.95 as in LCM; measured
here, the student itself as target collapsed to blank images within 250 steps).

Guidance distillation (Meng et al. 2023, stage 1): a student that takes the CFG scale w as an input matches the
teacher's guided prediction uncond + w (cond - uncond), so that guided sampling costs one network evaluation per
step instead of two. The student is the teacher's `UNet2DConditionModel` plus diffusers' `time_cond_proj_dim` input
(a zero-initialised projection of `guidance_scale_embedding(w)`), so it starts as the teacher's conditional model.
The CFG and embedding formulas live in `condiff.pipelines.guidance`; this module only assembles the training target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from condiff.diffusion import drop_labels, noisy_batch
from condiff.pipelines.guidance import (
    guidance_scale_embedding,
    guided_prediction,
    predicted_noise,
    predicted_original,
    prediction_for_original,
)
from condiff.pipelines.networks import unet_extra_inputs

STUDENT_ONLY_WEIGHTS = {"time_embedding.cond_proj.weight"}


def guidance_embedded_student(teacher, guidance_embedding_dim: int = 64):
    """A copy of `teacher` (a `UNet2DConditionModel`) that also takes w: `time_cond_proj_dim` set, every shared
    weight copied, the new projection zeroed, so the student's output equals the teacher's for any w at the start."""
    from diffusers import UNet2DConditionModel

    if not isinstance(teacher, UNet2DConditionModel):
        raise ValueError(
            f"the teacher's UNet must be a UNet2DConditionModel (train it with --architecture UNet2DConditionModel), "
            f"got {type(teacher).__name__}"
        )
    if teacher.config.time_cond_proj_dim is not None:
        raise ValueError("the teacher already takes a guidance embedding (time_cond_proj_dim is set)")
    config = dict(teacher.config) | {"time_cond_proj_dim": guidance_embedding_dim}
    student = UNet2DConditionModel.from_config(config)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    if set(missing) != STUDENT_ONLY_WEIGHTS or unexpected:
        raise RuntimeError(f"student and teacher differ beyond the guidance input: {missing}, {unexpected}")
    torch.nn.init.zeros_(student.time_embedding.cond_proj.weight)
    return student.to(device=teacher.device, dtype=teacher.dtype)


def draw_guidance_scales(n: int, scale_range: tuple[float, float], generator, device) -> torch.Tensor:
    """n guidance scales drawn uniformly from [lo, hi] with `generator`."""
    lo, hi = scale_range
    return lo + (hi - lo) * torch.rand(n, generator=generator, device=device)


@torch.no_grad()
def guided_teacher_prediction(
    teacher, noisy: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor, null_class: int, w: torch.Tensor
) -> torch.Tensor:
    """The teacher's CFG prediction uncond + w (cond - uncond), per row, no grad: one 2N-row forward pass, or one
    N-row pass of a guidance-embedded teacher (a guidance-distilled student), which takes w as an input."""
    if teacher.config.get("time_cond_proj_dim") is not None:
        return embedded_prediction(teacher, noisy, timesteps, labels, w).float()
    extra = unet_extra_inputs(teacher)

    def model(sample: torch.Tensor, condition: dict) -> torch.Tensor:
        return teacher(sample, condition["t"], class_labels=condition["y"], **extra).sample.float()

    cond, uncond = {"y": labels, "t": timesteps}, {"y": torch.full_like(labels, null_class), "t": timesteps}
    return guided_prediction(model, noisy, cond, uncond, w.float())[0]


def embedded_prediction(unet, noisy: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor, w: torch.Tensor):
    """A guidance-embedded UNet's output at scales `w` (one per row)."""
    w_emb = guidance_scale_embedding(w, unet.config.time_cond_proj_dim).to(noisy.dtype)
    return unet(noisy, timesteps, encoder_hidden_states=None, class_labels=labels, timestep_cond=w_emb).sample


def guidance_distillation_loss(
    student,
    teacher,
    scheduler,
    clean: torch.Tensor,
    labels: torch.Tensor,
    null_class: int,
    scale_range: tuple[float, float],
    p_uncond: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """|| student(x_t, t, y, w) - teacher_cfg(x_t, t, y, w) ||^2 on one batch, in the teacher's prediction space.

    x_t and t as in `denoising_loss` (from `generator`, first), then w ~ U[scale_range] per row and labels dropped to
    the null class with `p_uncond` (those rows learn the unconditional prediction, whatever w).
    """
    noisy, _, timesteps = noisy_batch(scheduler, clean, generator)
    w = draw_guidance_scales(clean.shape[0], scale_range, generator, clean.device)
    labels = drop_labels(labels, null_class, p_uncond, generator)
    target = guided_teacher_prediction(teacher, noisy, timesteps, labels, null_class, w)
    return F.mse_loss(embedded_prediction(student, noisy, timesteps, labels, w).float(), target)


def skipping_timesteps(num_train_timesteps: int, num_ddim_timesteps: int, device=None) -> torch.Tensor:
    """LCM's skipping schedule: k-1, 2k-1, ..., T-1 with k = T / N (`LCMScheduler`'s origin timesteps for
    `original_inference_steps` = N)."""
    k = num_train_timesteps // num_ddim_timesteps
    return torch.arange(1, num_ddim_timesteps + 1, device=device) * k - 1


def consistency_output(lcm_scheduler, sample: torch.Tensor, prediction: torch.Tensor, timesteps: torch.Tensor):
    """f(x_t, t) = c_skip(t) x_t + c_out(t) x0_hat(x_t): the parameterisation `LCMScheduler.step` samples with
    (its own boundary scalings; f = x_0 at t = 0)."""
    c_skip, c_out = lcm_scheduler.get_scalings_for_boundary_condition_discrete(timesteps.float())
    view = (-1, *([1] * (sample.ndim - 1)))
    abar = lcm_scheduler.alphas_cumprod.to(sample.device)[timesteps].view(view)
    x0 = predicted_original(sample, prediction.float(), abar, lcm_scheduler.config.prediction_type)
    return c_skip.view(view) * sample + c_out.view(view) * x0


def ddim_step(sample, prediction, abar_from, abar_to, prediction_type: str, clip: bool = False) -> torch.Tensor:
    """One deterministic DDIM step a' x0_hat + b' eps_hat from noise level `abar_from` to `abar_to` (per row);
    `clip` clips x0_hat to [-1, 1] as `DDIMScheduler(clip_sample=True)` does (eps_hat from the unclipped output)."""
    x0 = predicted_original(sample, prediction, abar_from, prediction_type)
    x0 = x0.clamp(-1, 1) if clip else x0
    eps = predicted_noise(sample, prediction, abar_from, prediction_type)
    return abar_to.sqrt() * x0 + (1 - abar_to).sqrt() * eps


def noised_guided_batch(scheduler, clean, timesteps, labels, null_class, scale_range, p_uncond, generator):
    """(x_t at `timesteps`, w ~ U[scale_range], labels with dropout), drawn from `generator` in that order."""
    noise = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    noisy = scheduler.add_noise(clean, noise, timesteps)
    w = draw_guidance_scales(clean.shape[0], scale_range, generator, clean.device)
    return noisy, w, drop_labels(labels, null_class, p_uncond, generator)


@torch.no_grad()
def guided_ddim_step(teacher, lcm_scheduler, noisy, start, prev, labels, null_class, w) -> torch.Tensor:
    """x_prev: one DDIM step of the teacher's guided ODE from `start` to `prev` (the solver LCM distils)."""
    view = (-1, *([1] * (noisy.ndim - 1)))
    abar = lcm_scheduler.alphas_cumprod.to(noisy.device)
    guided = guided_teacher_prediction(teacher, noisy, start, labels, null_class, w)
    kind = lcm_scheduler.config.prediction_type
    return ddim_step(noisy, guided, abar[start].view(view), abar[prev].view(view), kind)


def consistency_distillation_loss(
    student,
    teacher,
    lcm_scheduler,
    clean: torch.Tensor,
    labels: torch.Tensor,
    null_class: int,
    scale_range: tuple[float, float],
    p_uncond: float,
    generator: torch.Generator | None,
    target_net=None,
) -> torch.Tensor:
    """|| f_student(x_{t+k}, t+k) - f_target(x_t, t) ||^2 (f_target: `target_net`, default the student; no grad),
    with x_t one guided teacher DDIM step from x_{t+k}
    (t on `skipping_timesteps`; t = 0 at the first index, where f is the identity). Draws, from `generator`: the
    index, the noise, w, then the label dropout."""
    n = clean.shape[0]
    cfg = lcm_scheduler.config
    skips = skipping_timesteps(cfg.num_train_timesteps, cfg.original_inference_steps, clean.device)
    index = torch.randint(0, len(skips), (n,), generator=generator, device=clean.device)
    start = skips[index]
    prev = (start - (cfg.num_train_timesteps // cfg.original_inference_steps)).clamp(min=0)
    batch = noised_guided_batch(lcm_scheduler, clean, start, labels, null_class, scale_range, p_uncond, generator)
    noisy, w, labels = batch
    online = consistency_output(lcm_scheduler, noisy, embedded_prediction(student, noisy, start, labels, w), start)
    x_prev = guided_ddim_step(teacher, lcm_scheduler, noisy, start, prev, labels, null_class, w)
    with torch.no_grad():
        target_net = student if target_net is None else target_net
        target_pred = embedded_prediction(target_net, x_prev.to(noisy.dtype), prev, labels, w)
        target = consistency_output(lcm_scheduler, x_prev, target_pred, prev)
    return F.mse_loss(online.float(), target.float())


@torch.no_grad()
def update_target(target_net, student, decay: float) -> None:
    """target <- decay * target + (1 - decay) * student, parameter by parameter."""
    for t, s in zip(target_net.parameters(), student.parameters(), strict=True):
        t.mul_(decay).add_(s.detach().to(t.dtype), alpha=1 - decay)


def student_step_timesteps(num_train_timesteps: int, student_steps: int, index: torch.Tensor):
    """(t, t_mid, t_end) of the student's step number `index` (1..N, counted from the clean end) on DDIMScheduler's
    "trailing" grid of N steps, t = index T/N - 1 and t_end = t - T/N (-1: the clean image); the teacher takes two
    steps, through t_mid."""
    stride = num_train_timesteps // student_steps
    start = index * stride - 1
    return start, start - stride // 2, start - stride


@torch.no_grad()
def two_teacher_steps_target(teacher, scheduler, noisy, timesteps, labels, null_class, w) -> torch.Tensor:
    """Progressive distillation's target x0~ (Salimans & Ho 2022, eq. 8): the clean image from which one DDIM step
    t -> t_end lands where two guided DDIM steps of the teacher (t -> t_mid -> t_end) land. `timesteps` is
    (t, t_mid, t_end); t_end = -1 is the clean end (noise level 0, as DDIMScheduler's `set_alpha_to_one`)."""
    view = (-1, *([1] * (noisy.ndim - 1)))
    abar = torch.cat([torch.ones(1), scheduler.alphas_cumprod]).to(noisy.device)  # abar[t + 1], abar[0] = 1
    kind = scheduler.config.prediction_type
    (a_t, a_mid, a_end), sample = (abar[t + 1].view(view) for t in timesteps), noisy.float()
    for step_from, a_from, a_to in ((timesteps[0], a_t, a_mid), (timesteps[1], a_mid, a_end)):
        guided = guided_teacher_prediction(teacher, sample.to(noisy.dtype), step_from, labels, null_class, w)
        sample = ddim_step(sample, guided, a_from, a_to, kind)
    ratio = ((1 - a_end) / (1 - a_t)).sqrt()
    return (sample - ratio * noisy.float()) / (a_end.sqrt() - ratio * a_t.sqrt())


def progressive_distillation_loss(
    student,
    teacher,
    scheduler,
    clean: torch.Tensor,
    labels: torch.Tensor,
    null_class: int,
    scale_range: tuple[float, float],
    p_uncond: float,
    generator: torch.Generator | None,
    student_steps: int,
) -> torch.Tensor:
    """|| student(x_t, t, y, w) - target ||^2 in the prediction space (for v-prediction: Salimans & Ho's
    "SNR + 1" weighting of the x0 error), target = the output that denoises x_t to `two_teacher_steps_target`.
    Draws, from `generator`: the student step (1..N), the noise, w, then the label dropout."""
    n = clean.shape[0]
    index = torch.randint(1, student_steps + 1, (n,), generator=generator, device=clean.device)
    timesteps = student_step_timesteps(scheduler.config.num_train_timesteps, student_steps, index)
    batch = noised_guided_batch(scheduler, clean, timesteps[0], labels, null_class, scale_range, p_uncond, generator)
    noisy, w, labels = batch
    original = two_teacher_steps_target(teacher, scheduler, noisy, timesteps, labels, null_class, w)
    abar_t = scheduler.alphas_cumprod.to(clean.device)[timesteps[0]].view(-1, *([1] * (clean.ndim - 1)))
    target = prediction_for_original(noisy.float(), original, abar_t, scheduler.config.prediction_type)
    return F.mse_loss(embedded_prediction(student, noisy, timesteps[0], labels, w).float(), target)
