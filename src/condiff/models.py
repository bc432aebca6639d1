"""Model and scheduler factories: the configurations condiff trains and ships, and schedulers by short name."""

from __future__ import annotations

from diffusers import DDPMScheduler, UNet2DModel
from diffusers.schedulers import SchedulerMixin

from condiff.options import NOISE_SCHEDULES, PREDICTION_TYPES, SAMPLERS, UNET_ARCHITECTURES  # noqa: F401 (re-exported)


def class_conditional_unet(
    num_classes: int | None,
    sample_size: int = 28,
    channels: int = 1,
    block_out_channels: tuple[int, ...] = (32, 64, 64),
    layers_per_block: int = 1,
    attention: bool = False,
    norm_num_groups: int = 8,
    out_channels: int | None = None,
) -> UNet2DModel:
    """A `UNet2DModel` with K + 1 class embeddings (the last is the null class) and AdaGN conditioning; with
    `num_classes=None`, the same UNet without a class embedding (an unconditional denoiser).

    Attention blocks are off by default: at MNIST sizes they cost a lot on CPU for little gain (measured).
    `out_channels` (default `channels`): 2 x `channels` for a UNet that learns its variance.
    """
    n = len(block_out_channels)
    down = ["AttnDownBlock2D" if attention and i > 0 else "DownBlock2D" for i in range(n)]
    up = ["AttnUpBlock2D" if attention and i < n - 1 else "UpBlock2D" for i in range(n)]
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=out_channels or channels,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=norm_num_groups,
        num_class_embeds=None if num_classes is None else num_classes + 1,
        resnet_time_scale_shift="scale_shift",
    )


def class_conditional_condition_unet(
    num_classes: int | None,
    sample_size: int = 28,
    channels: int = 1,
    block_out_channels: tuple[int, ...] = (32, 64, 64),
    layers_per_block: int = 1,
    norm_num_groups: int = 8,
    guidance_embedding_dim: int | None = None,
    condition_channels: int = 0,
    out_channels: int | None = None,
):
    """The class-conditional UNet as a `UNet2DConditionModel` without cross-attention (no text): the same down/up
    blocks and class embeddings as `class_conditional_unet`, a mid block of one ResNet. Its use is the
    `time_cond_proj_dim` input (diffusers' convention for guidance-embedded, LCM-distilled UNets): a student made
    with `guidance_embedding_dim` takes the CFG scale w as `timestep_cond` and shares every other weight with its
    teacher (`guidance_embedded_student`). `condition_channels`: channels of a spatial condition concatenated to the
    input (super-resolution, layout maps); the output keeps `channels` (`out_channels`: 2 x `channels` for a UNet that
    learns its variance).
    """
    from diffusers import UNet2DConditionModel

    n = len(block_out_channels)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=channels + condition_channels,
        out_channels=out_channels or channels,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        down_block_types=("DownBlock2D",) * n,
        up_block_types=("UpBlock2D",) * n,
        mid_block_type="UNetMidBlock2D",
        norm_num_groups=norm_num_groups,
        num_class_embeds=None if num_classes is None else num_classes + 1,
        resnet_time_scale_shift="scale_shift",
        time_cond_proj_dim=guidance_embedding_dim,
    )


def training_scheduler(
    noise_schedule: str = "squaredcos_cap_v2",
    prediction_type: str = "v_prediction",
    num_train_timesteps: int = 1000,
    clip_sample: bool = True,
    variance_type: str = "fixed_small",
) -> DDPMScheduler:
    """The DDPM noise schedule used for training (and for the 1000-step reference sampler). `clip_sample`: the data
    lives in [-1, 1] (pixels), so samplers may clip x0 to it; False for latents, which are not bounded.
    `variance_type`: DDPM's reverse variance, "learned_range" for a UNet that learns it."""
    if noise_schedule not in NOISE_SCHEDULES:
        raise ValueError(f"noise_schedule must be one of {NOISE_SCHEDULES}, got {noise_schedule!r}")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=noise_schedule,
        prediction_type=prediction_type,
        clip_sample=clip_sample,
        clip_sample_range=1.0,
        # only a non-default variance is passed: diffusers then leaves DDPM's default out of the configs of other
        # schedulers made from this one (DPM-Solver would read "fixed_small" as its own variance_type)
        **({} if variance_type == "fixed_small" else {"variance_type": variance_type}),
    )


# DPM-Solver++ (2M) with x0 clipped to the data range [-1, 1]. The clip matters: with the cosine schedule abar_T is
# ~0, so x0 predicted from eps at the first step can be huge; unclipped this gave salt-and-pepper images.
DPM_SOLVER_SETTINGS = {
    "algorithm_type": "dpmsolver++",
    "solver_order": 2,
    "thresholding": True,
    "sample_max_value": 1.0,
}


# DDPM's `variance_type` values. Other schedulers' configs carry a `variance_type` of their own meaning (DPM-Solver:
# None = the model predicts no variance), which a DDPM made from them would inherit as None.
DDPM_VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")


def scheduler_for(name: str, config) -> SchedulerMixin:
    """A diffusers scheduler by short name ("ddim", "dpm++2m", ...) built from another scheduler's config.

    "ddpm" always gets an explicit DDPM variance: "fixed_small" (the posterior variance, diffusers' default) unless the
    config names one, so the folder it is saved into says it supports classifier guidance's mean shift.
    """
    import diffusers

    if name not in SAMPLERS:
        raise ValueError(f"scheduler must be one of {sorted(SAMPLERS)}, got {name!r}")
    extra = DPM_SOLVER_SETTINGS if name == "dpm++2m" else {}
    if extra and not config.get("clip_sample", True):  # unbounded data (latents): x0 must not be clipped to [-1, 1]
        extra = extra | {"thresholding": False}
    if name == "ddpm" and config.get("variance_type") not in DDPM_VARIANCE_TYPES:
        extra = {"variance_type": "fixed_small"}
    return getattr(diffusers, SAMPLERS[name]).from_config(config, **extra)


def default_sampling_scheduler(train_scheduler: SchedulerMixin) -> SchedulerMixin:
    """The scheduler condiff ships with: DPM-Solver++ (2M) on the training schedule (`DPM_SOLVER_SETTINGS`)."""
    return scheduler_for("dpm++2m", train_scheduler.config)


def small_vae(
    channels: int = 1,
    block_out_channels: tuple[int, ...] = (32, 64, 64),
    latent_channels: int = 4,
    layers_per_block: int = 1,
    norm_num_groups: int = 8,
    sample_size: int = 28,
):
    """A small `AutoencoderKL`: each block after the first halves the size (28 -> 7 with three blocks).

    The mid-block attention is off: at these sizes it costs CPU time for no measurable gain (as for the UNets).
    """
    from diffusers import AutoencoderKL

    n = len(block_out_channels)
    return AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        latent_channels=latent_channels,
        norm_num_groups=norm_num_groups,
        sample_size=sample_size,
        mid_block_add_attention=False,
    )


def latent_text_unet(
    latent_channels: int,
    sample_size: int,
    cross_attention_dim: int,
    block_out_channels: tuple[int, ...] = (64, 128),
    layers_per_block: int = 1,
    attention_head_dim: int = 8,
    norm_num_groups: int = 32,
    num_classes: int | None = None,
):
    """A `UNet2DConditionModel` for latents: cross-attention to the text in every block, AdaGN ("scale_shift")
    conditioning on the timestep (and, with `num_classes`, on K + 1 class embeddings, the last the null class)."""
    from diffusers import UNet2DConditionModel

    n = len(block_out_channels)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * n,
        up_block_types=("CrossAttnUpBlock2D",) * n,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=attention_head_dim,
        norm_num_groups=norm_num_groups,
        resnet_time_scale_shift="scale_shift",
        num_class_embeds=None if num_classes is None else num_classes + 1,
    )
