"""ClassConditionalDDPMPipeline: a class-conditional UNet sampled with classifier-free guidance or autoguidance.

Hub-loadable: this file and its siblings import only torch and diffusers (and numpy, the standard library), so
`DiffusionPipeline.from_pretrained(folder, custom_pipeline=folder, trust_remote_code=True)` works without condiff.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import UNet2DConditionModel, UNet2DModel
from diffusers.schedulers import SchedulerMixin

from .call_docs import shared_call_docs
from .checks import check_guide_unet, resolve_num_images, unet_sample_size
from .class_unet import ClassUNetMixin, check_class_unet
from .config_defaults import checked_defaults
from .corrector import DEFAULT_CORRECTOR_SNR, corrector_for_call
from .denoising import CondiffPipeline, StepCallback
from .labels import LabelInput
from .locking import serialized_call
from .outputs import CondiffPipelineOutput
from .variance import check_prediction_target

# isort: split
# diffusers copies only the sibling files that a local custom-pipeline file imports itself (not their own imports):
# the modules the shared loop needs are named here too, so `custom_pipeline="pipelines/<this file>"` loads.
from .callbacks import step_callback  # noqa: F401
from .diffusers_guiders import DiffusersGuidance  # noqa: F401
from .guidance import check_guidance_arguments  # noqa: F401
from .guiders import EmbeddedGuidance  # noqa: F401
from .networks import class_unet_forward  # noqa: F401
from .saved_folder import check_saved_folder  # noqa: F401
from .schedules import check_schedule  # noqa: F401
from .weights import refusing_unsafe_pickles  # noqa: F401


class ClassConditionalDDPMPipeline(ClassUNetMixin, CondiffPipeline):
    r"""Class-conditional image generation with classifier-free guidance or autoguidance.

    Parameters:
        unet ([`UNet2DModel`] or [`UNet2DConditionModel`] without cross-attention): denoiser with
            `num_class_embeds = K + 1`; class K is the learned null class. A `UNet2DConditionModel` with
            `time_cond_proj_dim` is guidance-distilled: it takes w as an input (`guidance_scale_embedding`) and the
            pipeline runs one branch per step at any scale. The pipeline never modifies a UNet it is given (no
            dtype, device or memory-format change); for the fastest CPU sampling convert it yourself:
            `unet.to(memory_format=torch.channels_last)`.
        scheduler ([`SchedulerMixin`]): a diffusers scheduler (DDPM, DDIM, DPM-Solver++, UniPC, Euler, ...); Heun and
            KDPM2 Ancestral on a schedule that starts at nearly pure noise are refused (`schedules.check_schedule`).
        guide_unet (*optional*): a weaker model of the same classes (smaller, trained for less) for
            `guidance="autoguidance"` (Karras et al. 2024).
        id2label (`dict[int, str]`, *optional*): class names, so `label="three"` works.
        guidance_scale_range (`(lo, hi)`, *optional*): the scales a guidance-embedded UNet was trained on; others
            are refused.
        default_guidance_scale (`float`, *optional*): the `guidance_scale` of a call that gives none. None: 3,
            clamped into `guidance_scale_range`.
        default_guidance (`str`): the guidance of a call that gives none, "cfg", "autoguidance" or "gated_cfg";
            `autoguidance_cfg_scale` and `autoguidance_cfg_interval` add CFG on top of autoguidance.
        gated_cfg_curve, gated_cfg_threshold: the model's gate curve ((timestep, median rms) pairs, from
            `condiff.evaluation.fit_gate_curve`) and threshold for `guidance="gated_cfg"`.
        micro_batch_size (`int`, *optional*): the UNet runs on slices of at most this many rows (same results, faster
            on CPUs at large requests; `benchmarks/micro_batching.py` measures it). None: the whole batch at once.
        prediction_target (`str`, *optional*): "mean" or "score" for a UNet that predicts the posterior mean
            mu~(x_t, x0) or the score -eps / sqrt(1 - abar_t); its output is converted to epsilon after each forward,
            so any scheduler with `prediction_type="epsilon"` samples it. None: the scheduler's own parametrisation.
        default_corrector_steps, default_corrector_snr: the call's `corrector_steps` and `corrector_snr` when it
            gives none (0: no corrector).

    A UNet with twice the image's output channels predicts a variance too (Nichol & Dhariwal 2021): guidance combines
    the predictions only; an ancestral `DDPMScheduler(variance_type="learned_range")` samples with the conditional
    branch's variance, every other scheduler with its own.

    The callback tensor "prompt_embeds" holds the class ids [null; labels] (2N), the counterpart of Stable Diffusion's
    [negative; positive] embeddings, so diffusers' `SDCFGCutoffCallback` works unchanged.
    """

    model_cpu_offload_seq = "unet->guide_unet"
    _optional_components = ["guide_unet"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "denoised"]

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
        guide_unet: UNet2DModel | UNet2DConditionModel | None = None,
        default_guidance: str = "cfg",
        autoguidance_cfg_scale: float = 1.0,
        autoguidance_cfg_interval: tuple | list = (0.0, 1.0),
        gated_cfg_curve: list | None = None,
        gated_cfg_threshold: float = 1.2,
        prediction_target: str | None = None,
        default_corrector_steps: int = 0,
        default_corrector_snr: float = DEFAULT_CORRECTOR_SNR,
    ):
        super().__init__()
        check_class_unet(unet)
        check_guide_unet(unet, guide_unet)
        self.register_modules(unet=unet, scheduler=scheduler, guide_unet=guide_unet)
        check_prediction_target(prediction_target, scheduler)
        config = checked_defaults(
            id2label=id2label, default_num_inference_steps=default_num_inference_steps,
            default_guidance_interval=default_guidance_interval, micro_batch_size=micro_batch_size,
            guidance_scale_range=guidance_scale_range, default_guidance_scale=default_guidance_scale,
            default_guidance=default_guidance, autoguidance_cfg_scale=autoguidance_cfg_scale,
            autoguidance_cfg_interval=autoguidance_cfg_interval, gated_cfg_curve=gated_cfg_curve,
            gated_cfg_threshold=gated_cfg_threshold, default_corrector_steps=default_corrector_steps,
            default_corrector_snr=default_corrector_snr)  # fmt: skip
        self.register_to_config(**config, prediction_target=prediction_target)

    @serialized_call  # schedulers are stateful: concurrent calls on one pipeline take turns (locking.py)
    @torch.inference_mode()
    @shared_call_docs
    def __call__(  # long: the documented argument list; the work is in CondiffPipeline
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
        guidance: Any = None,
        corrector_steps: int | None = None,
        corrector_snr: float | None = None,
    ) -> CondiffPipelineOutput | tuple:
        r"""Generate images of the requested classes.

        Args:
            label: class id(s) or name(s) (`3`, `[0, 1]`, `"three"`, a tensor); `None` samples unconditionally.
            num_images_per_label: images generated for each entry of `label`.
            guidance_scale: w. CFG: uncond + w (cond - uncond), 0 = unconditional, 1 = conditional; autoguidance:
                guide + w (cond - guide), 1 = the main model alone (a callback setting 0 mid-call means "guidance
                off"). Default: the model's `default_guidance_scale` (None: 3, clamped into its trained range).
            {shared: num_inference_steps, generator, latents, guidance_rescale, guidance_interval, output_type}
            {shared: return_dict}
            callback_on_step_end: called as `fn(pipe, step, timestep, {"latents": ...})` after each step; it may
                return a dict with a replacement "latents" (or "prompt_embeds": class ids, 2N = [null; labels], N or
                1 = the labels), and may set `pipe._guidance_scale` (0.0 = guidance off: conditional only, as in
                diffusers) or `pipe._interrupt`. A diffusers `PipelineCallback` (e.g. `SDCFGCutoffCallback`) or
                `MultiPipelineCallbacks` brings its own `tensor_inputs`.
            callback_on_step_end_tensor_inputs: tensors passed to the callback ("latents", "prompt_embeds",
                "denoised": the step's estimate of x0, for previews).
            {shared: num_images_per_prompt}
            guidance: "cfg", "autoguidance" (needs `guide_unet`), "gated_cfg" (CFG only for the images that need it:
                `GatedClassifierFreeGuidance`; needs the config's gate curve), a condiff `Guidance` object or a
                diffusers guider (`diffusers.guiders.ClassifierFreeGuidance`, `AdaptiveProjectedGuidance`, ...,
                which brings its own scale). Default: the model's `default_guidance`.
            {shared: corrector_steps, corrector_snr}

        Examples:
        ```py
        >>> import torch
        >>> from condiff import ClassConditionalDDPMPipeline, shipped_model_path
        >>> pipe = ClassConditionalDDPMPipeline.from_pretrained(shipped_model_path())
        >>> images = pipe(label=3, num_images_per_label=4, generator=torch.Generator().manual_seed(0)).images
        ```

        Returns:
            [`CondiffPipelineOutput`] with `images` and `nfe_per_image` (network rows per image in this call, a
            guiding model's included), or a tuple `(images,)` when `return_dict` is False.
        """
        num_images = resolve_num_images(num_images_per_label, num_images_per_prompt)
        steps, scale, interval, tensor_inputs = self._call_settings(
            num_inference_steps, guidance_scale, guidance_interval, guidance_rescale, output_type,
            callback_on_step_end, callback_on_step_end_tensor_inputs)  # fmt: skip
        class_ids = self.check_inputs(label, num_images, steps, generator)
        check_prediction_target(self.config.get("prediction_target"), self.scheduler)
        corrector = corrector_for_call(corrector_steps, corrector_snr, self.config, self.scheduler)
        method = self.call_guidance(guidance, scale, guidance_rescale, interval, (guidance_scale, guidance_interval))
        unconditional = class_ids[0] == self.null_class and method.name in ("cfg", "embedded")
        self._guidance_scale = 0.0 if unconditional else getattr(method, "guidance_scale", scale)
        self._guidance_rescale = guidance_rescale
        cfg, device = self.unet.config, self._execution_device
        cond = torch.tensor(class_ids, device=device)
        conditions = {"cond": cond, "uncond": torch.full_like(cond, self.null_class)}
        shape = (len(class_ids), cfg.in_channels, *unet_sample_size(cfg))
        latents, rows = self._sample(
            shape, steps, method, conditions, generator, latents, callback_on_step_end, tensor_inputs, corrector
        )
        return self._output(latents, output_type, return_dict, rows, len(class_ids))


# diffusers' custom-pipeline loader accepts one DiffusionPipeline subclass per file: unbind the shared base.
del CondiffPipeline
