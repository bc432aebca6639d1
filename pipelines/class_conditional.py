"""ClassConditionalDDPMPipeline: a class-conditional UNet2DModel sampled with classifier-free guidance.

Hub-loadable: this file and its siblings (`checks.py`, `guidance.py`, `labels.py`, `locking.py`, `outputs.py`) import
only torch and diffusers (and numpy, the standard library), so `DiffusionPipeline.from_pretrained(folder,
custom_pipeline="pipelines/class_conditional.py", trust_remote_code=True)` works without condiff installed.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel, UNet2DModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.schedulers import SchedulerMixin

from .checks import (
    MAX_IMAGES_PER_CALL,
    check_callback_inputs,
    check_generators,
    check_output_type,
    check_positive_int,
    resolve_num_images,
    unet_sample_size,
)
from .guidance import (
    check_default_guidance_scale,
    check_guidance_arguments,
    guidance_scale_embedding,
    guided_prediction,
    in_guidance_interval,
    resolve_default_guidance_scale,
)
from .labels import LabelInput, normalize_id2label, parse_labels
from .locking import serialized_call
from .outputs import CondiffPipelineOutput, to_output_type
from .sampling import (
    GuidedPipelineState,
    check_schedule,
    initial_noise,
    micro_batched,
    scheduler_step_kwargs,
    step_callback,
    unet_extra_inputs,
)
from .weights import refusing_unsafe_pickles

StepCallback = Callable[[Any, int, Any, dict], dict]


def channels_last(sample: torch.Tensor) -> torch.Tensor:
    """The UNet's input in channels_last memory format (same values). Convolutions follow the activations' layout, so
    a caller's UNet runs channels_last without being converted, up to the first upsampler at >= 64 rows (diffusers'
    `Upsample2D` makes large batches contiguous); a UNet loaded by `from_pretrained` is converted as well."""
    return sample.to(memory_format=torch.channels_last) if sample.ndim == 4 else sample


class ClassConditionalDDPMPipeline(GuidedPipelineState, DiffusionPipeline):
    r"""Class-conditional image generation with classifier-free guidance.

    Parameters:
        unet ([`UNet2DModel`] or [`UNet2DConditionModel`] without cross-attention): denoiser with
            `num_class_embeds = K + 1`; class K is the learned null class. A `UNet2DConditionModel` with
            `time_cond_proj_dim` is guidance-distilled: it takes w as an input (`guidance_scale_embedding`) and the
            pipeline runs one branch per step at any scale. The pipeline never modifies a UNet it is given (no
            dtype, device or memory-format change); for the fastest CPU sampling convert it yourself:
            `unet.to(memory_format=torch.channels_last)`.
        scheduler ([`SchedulerMixin`]): a diffusers scheduler (DDPM, DDIM, DPM-Solver++, UniPC, Euler, ...); Heun and
            KDPM2 Ancestral on a schedule that starts at nearly pure noise are refused (`sampling.check_schedule`).
        id2label (`dict[int, str]`, *optional*): class names, so `label="three"` works.
        guidance_scale_range (`(lo, hi)`, *optional*): the scales a guidance-embedded UNet was trained on; others
            are refused.
        default_guidance_scale (`float`, *optional*): the `guidance_scale` of a call that gives none (a few-step
            student guided at every step is best at a lower scale than a teacher guided on an interval). None: 3,
            clamped into `guidance_scale_range`.
        micro_batch_size (`int`, *optional*): the UNet runs on slices of at most this many rows (same results, faster
            on CPUs at large requests; `benchmarks/micro_batching.py` measures it). None: the whole batch at once.

    During a call, as in diffusers pipelines, `guidance_scale`, `guidance_rescale`, `num_timesteps` and `interrupt`
    are properties backed by state the loop reads at every step: a `callback_on_step_end` that sets
    `pipe._guidance_scale = 0.0` turns guidance off from the next step on as diffusers' CFG cut-off callbacks mean it
    (the conditional prediction alone, stored as 1.0; a call's `guidance_scale=0` is the unconditional one), one that
    sets `pipe._interrupt = True` skips the remaining steps. The callback tensor "prompt_embeds" holds the class ids
    [null; labels] (2N), the counterpart of Stable Diffusion's [negative; positive] embeddings, so diffusers'
    `SDCFGCutoffCallback` works unchanged. They describe the current (or, after it, the last) call; calls on one
    pipeline are serialized, so they never mix two calls.
    """

    model_cpu_offload_seq = "unet"
    _callback_tensor_inputs = ["latents", "prompt_embeds"]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> Any:
        """diffusers' `from_pretrained`. The UNet it loads (not one passed as `unet=`, and not a device-mapped or
        quantized one) belongs to this pipeline and is put in channels_last memory format: about 1.2x faster CPU
        sampling at batch 100 (benchmarks/), same values up to float rounding. Weights load as diffusers loads them:
        safetensors first, a `.bin` through torch's weights-only unpickler (`UnsafeWeightsError` if it holds more)."""
        with refusing_unsafe_pickles():
            pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if not {"unet", "device_map", "quantization_config"} & kwargs.keys():
            pipe.unet.to(memory_format=torch.channels_last)
        return pipe

    def __init__(
        self,
        unet: UNet2DModel | UNet2DConditionModel,
        scheduler: SchedulerMixin,
        id2label: dict | None = None,
        default_num_inference_steps: int = 20,
        default_guidance_interval: tuple | list = (0.0, 1.0),
        micro_batch_size: int | None = None,
        guidance_scale_range: tuple | list | None = None,
        default_guidance_scale: float | None = None,
    ):
        super().__init__()
        if unet.config.num_class_embeds is None or unet.config.num_class_embeds < 2:
            raise ValueError("unet must have num_class_embeds = number of classes + 1 (the null class)")
        if any("CrossAttn" in b for b in (*unet.config.down_block_types, *unet.config.up_block_types)):
            raise ValueError("unet must not use cross-attention (text conditioning): use LatentCFGPipeline for that")
        self.register_modules(unet=unet, scheduler=scheduler)
        check_positive_int("default_num_inference_steps", default_num_inference_steps)
        check_guidance_arguments(1.0, 0.0, default_guidance_interval)
        if micro_batch_size is not None:
            check_positive_int("micro_batch_size", micro_batch_size, MAX_IMAGES_PER_CALL)
        check_default_guidance_scale(default_guidance_scale, guidance_scale_range)
        self.register_to_config(
            id2label=normalize_id2label(id2label),
            default_num_inference_steps=default_num_inference_steps,
            default_guidance_interval=[float(v) for v in default_guidance_interval],
            micro_batch_size=micro_batch_size,
            guidance_scale_range=None if guidance_scale_range is None else [float(v) for v in guidance_scale_range],
            default_guidance_scale=None if default_guidance_scale is None else float(default_guidance_scale),
        )
        self._guidance_scale, self._guidance_rescale = 1.0, 0.0
        self._num_timesteps, self._interrupt = 0, False

    @property
    def default_guidance_scale(self) -> float:
        """The scale of a call that gives none: the config's `default_guidance_scale`, else 3 clamped into
        `guidance_scale_range`."""
        trained = self.config.get("guidance_scale_range")
        return resolve_default_guidance_scale(self.config.get("default_guidance_scale"), trained)

    @property
    def num_classes(self) -> int:
        """Number of real classes K (the null class K is not counted)."""
        return self.unet.config.num_class_embeds - 1

    @property
    def null_class(self) -> int:
        return self.num_classes

    @property
    def guidance_embedded(self) -> bool:
        """Whether the UNet takes the guidance scale as an input (a guidance-distilled student)."""
        return getattr(self.unet.config, "time_cond_proj_dim", None) is not None

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether a guided step runs two branches: never for a guidance-embedded UNet (w is an input)."""
        return not self.guidance_embedded and super().do_classifier_free_guidance

    def get_label_ids(self, label: LabelInput) -> list[int] | None:
        """Class ids for `label` (ints, names from `id2label`, a tensor, a list of these, or None)."""
        return parse_labels(label, self.num_classes, self.id2label)

    def check_inputs(self, label: LabelInput, num_images: int, num_inference_steps: int, generator: Any) -> list[int]:
        """Class ids, one per image; raises before any model work when `label`, the counts or `generator` are bad."""
        labels = self.get_label_ids(label)
        check_positive_int("num_inference_steps", num_inference_steps, self.scheduler.config.num_train_timesteps)
        class_ids = [self.null_class] if labels is None else labels
        batch_size = len(class_ids) * num_images
        if batch_size > MAX_IMAGES_PER_CALL:
            raise ValueError(f"label x num_images_per_label = {batch_size} images; at most {MAX_IMAGES_PER_CALL}")
        check_generators(generator, batch_size)
        return [c for c in class_ids for _ in range(num_images)]

    def prepare_latents(self, batch_size: int, generator: Any, latents: torch.Tensor | None) -> torch.Tensor:
        """Initial noise of shape (N, C, H, W) on the execution device in the UNet's dtype, scaled for the scheduler."""
        cfg = self.unet.config
        shape = (batch_size, cfg.in_channels, *unet_sample_size(cfg))
        device, dtype = self._execution_device, self.unet.dtype
        return initial_noise(shape, generator, latents, device, dtype, self.scheduler.init_noise_sigma)

    def _predict(
        self, sample: torch.Tensor, class_labels: torch.Tensor, t: torch.Tensor, scale: float | None = None
    ) -> torch.Tensor:
        """The UNet's output for `sample` (in micro-batches); `scale` is w for a guidance-embedded UNet."""
        extra = unet_extra_inputs(self.unet)
        w = None
        if self.guidance_embedded:
            w = guidance_scale_embedding(
                torch.full((sample.shape[0],), float(scale), device=sample.device), self.unet.config.time_cond_proj_dim
            ).to(self.unet.dtype)

        def forward(x: torch.Tensor, labels: torch.Tensor, w_emb: torch.Tensor | None) -> torch.Tensor:
            cond = {} if w_emb is None else {"timestep_cond": w_emb}
            return self.unet(channels_last(x), t, class_labels=labels, **extra, **cond).sample

        return micro_batched(forward, self.config.micro_batch_size, sample, class_labels, w)

    def _denoise(
        self,
        latents: torch.Tensor,
        cond: torch.Tensor,
        guidance_interval: Sequence[float],
        generator: Any,
        callback: StepCallback | None,
        tensor_inputs: Sequence[str],
    ) -> tuple[torch.Tensor, int]:
        """The sampling loop; returns (final latents, network rows evaluated). Reads the guidance state each step."""
        uncond = torch.full_like(cond, self.null_class)
        step_kwargs = scheduler_step_kwargs(self.scheduler, generator)
        num_train_timesteps = self.scheduler.config.num_train_timesteps
        rows = 0
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            if self.interrupt:
                continue
            model_input = self.scheduler.scale_model_input(latents, t)
            inside = in_guidance_interval(t, num_train_timesteps, guidance_interval)
            scale = self._guidance_scale if inside else 1.0
            if self.guidance_embedded:  # one branch: w is an input of the UNet (scale 0 and 1 included)
                pred, used = self._predict(model_input, cond, t, scale), len(cond)
            else:
                model = functools.partial(self._predict, t=t)
                pred, used = guided_prediction(model, model_input, cond, uncond, scale, self._guidance_rescale)
            rows += used
            latents = self.scheduler.step(pred, t, latents, **step_kwargs).prev_sample
            latents, (uncond, cond) = step_callback(self, callback, i, t, latents, tensor_inputs, (uncond, cond))
        return latents, rows

    @serialized_call  # schedulers are stateful: concurrent calls on one pipeline take turns (locking.py)
    @torch.inference_mode()
    def __call__(  # long: the documented argument list and its checks; the work is in the methods above
        self,
        label: LabelInput = None,
        num_images_per_label: int = 1,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        guidance_rescale: float = 0.0,
        guidance_interval: tuple[float, float] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        num_images_per_prompt: int | None = None,
    ) -> CondiffPipelineOutput | tuple:
        r"""Generate images of the requested classes.

        Args:
            label: class id(s) or name(s) (`3`, `[0, 1]`, `"three"`, a tensor); `None` samples unconditionally.
            num_images_per_label: images generated for each entry of `label`.
            guidance_scale: w in uncond + w (cond - uncond). 0 = unconditional, 1 = conditional, > 1 stronger
                (a callback setting 0 mid-call means "guidance off", see `callback_on_step_end`).
                Default: the model's `default_guidance_scale` (None: 3, clamped into its trained range).
            num_inference_steps: denoising steps; default: the model's `default_num_inference_steps`.
            generator: a `torch.Generator`, or one per image, for reproducible sampling.
            latents: initial noise of shape (N, C, H, W); drawn from `generator` when None.
            guidance_rescale: Lin et al. (2023) rescale factor in [0, 1].
            guidance_interval: (lo, hi) fractions of the noise range where guidance applies; elsewhere w = 1.
                Default: the model's `default_guidance_interval` ((0, 1) = every step).
            output_type: "pil", "np", "pt" (a [0, 1] tensor) or "latent" (the final model-space tensor, untouched).
            return_dict: return a `CondiffPipelineOutput` instead of a tuple.
            callback_on_step_end: called as `fn(pipe, step, timestep, {"latents": ...})` after each step; it may
                return a dict with a replacement "latents" (or "prompt_embeds": class ids, 2N = [null; labels], N or
                1 = the labels), and may set `pipe._guidance_scale` (0.0 = guidance off: conditional only, as in
                diffusers) or `pipe._interrupt`. A diffusers `PipelineCallback` (e.g. `SDCFGCutoffCallback`) or
                `MultiPipelineCallbacks` brings its own `tensor_inputs`.
            callback_on_step_end_tensor_inputs: tensors passed to the callback ("latents", "prompt_embeds").
            num_images_per_prompt: diffusers' name, accepted as an alias of `num_images_per_label` (as in every
                condiff pipeline); giving both with different values is an error, unless `num_images_per_label`
                is left at 1.

        Examples:
        ```py
        >>> import torch
        >>> from condiff import ClassConditionalDDPMPipeline, shipped_model_path
        >>> pipe = ClassConditionalDDPMPipeline.from_pretrained(shipped_model_path())
        >>> images = pipe(label=3, num_images_per_label=4, generator=torch.Generator().manual_seed(0)).images
        ```

        Returns:
            [`CondiffPipelineOutput`] with `images` and `nfe_per_image` (network rows per image in this call), or a
            tuple `(images,)` when `return_dict` is False.
        """
        num_images = resolve_num_images(num_images_per_label, num_images_per_prompt)
        steps = self.config.default_num_inference_steps if num_inference_steps is None else num_inference_steps
        interval = tuple(self.config.default_guidance_interval) if guidance_interval is None else guidance_interval
        guidance_scale = self.default_guidance_scale if guidance_scale is None else guidance_scale
        class_ids = self.check_inputs(label, num_images, steps, generator)
        check_guidance_arguments(guidance_scale, guidance_rescale, interval)
        if guidance_rescale and self.guidance_embedded:
            raise ValueError("guidance_rescale must be 0 with a guidance-embedded UNet: it has no separate branches")
        trained = self.config.get("guidance_scale_range")
        if self.guidance_embedded and trained and not trained[0] <= guidance_scale <= trained[1]:
            raise ValueError(f"guidance_scale must be in {trained} (this UNet was trained there), got {guidance_scale}")
        check_output_type(output_type)
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):  # diffusers' callback classes
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        check_callback_inputs(callback_on_step_end_tensor_inputs, self._callback_tensor_inputs, callback_on_step_end)
        unconditional = class_ids[0] == self.null_class  # label=None: only the null branch is needed
        self._guidance_scale = 0.0 if unconditional else guidance_scale
        self._guidance_rescale, self._interrupt = guidance_rescale, False

        latents = self.prepare_latents(len(class_ids), generator, latents)
        self.scheduler.set_timesteps(steps, device=latents.device)
        check_schedule(self.scheduler)
        self._num_timesteps = len(self.scheduler.timesteps)
        cond = torch.tensor(class_ids, device=latents.device)
        latents, rows = self._denoise(
            latents, cond, interval, generator, callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        images = to_output_type(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return CondiffPipelineOutput(images=images, nfe_per_image=rows / len(class_ids))
