"""ClassifierGuidedPipeline: a diffusion UNet steered by the gradient of a classifier (Dhariwal & Nichol 2021).

The classifier is either noise-aware, p(y | x_t, t) (`NoiseAwareClassifier`), or a classifier of clean images applied
to the denoiser's estimate of x0 (training-free guidance). Hub-loadable: this file and its siblings import only torch
and diffusers, so `DiffusionPipeline.from_pretrained(folder, custom_pipeline=folder, trust_remote_code=True)` works
without condiff installed (the classifier's code travels in `classifier/noise_aware_classifier.py`).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import UNet2DModel
from diffusers.schedulers import SchedulerMixin

from .call_docs import shared_call_docs
from .checks import resolve_num_images, unet_sample_size
from .classifiers import ClassifierComponent
from .config_defaults import checked_defaults
from .corrector import DEFAULT_CORRECTOR_SNR, corrector_for_call
from .denoising import CondiffPipeline, StepCallback
from .guided_unet import GuidedUNetMixin
from .labels import LabelInput
from .locking import serialized_call
from .outputs import CondiffPipelineOutput

# isort: split
# diffusers copies only the sibling files that a local custom-pipeline file imports itself (not their own imports):
# the modules the shared loop needs are named here too, so `custom_pipeline="pipelines/<this file>"` loads.
from .callbacks import step_callback  # noqa: F401
from .diffusers_guiders import DiffusersGuidance  # noqa: F401
from .digit_classifier import MnistClassifier  # noqa: F401
from .guidance import check_guidance_arguments  # noqa: F401
from .guiders import ClassifierGuidance  # noqa: F401
from .networks import micro_batched  # noqa: F401
from .noise_aware_classifier import NoiseAwareClassifier  # noqa: F401
from .saved_folder import check_saved_folder  # noqa: F401
from .schedules import check_schedule  # noqa: F401
from .variance import split_variance  # noqa: F401
from .weights import refusing_unsafe_pickles  # noqa: F401


class ClassifierGuidedPipeline(GuidedUNetMixin, ClassifierComponent, CondiffPipeline):
    r"""Classifier guidance for any diffusers scheduler.

    Parameters:
        unet ([`UNet2DModel`]): an unconditional denoiser, or a class-conditional one with `num_class_embeds = K + 1`
            (class K the learned null class); then `guidance_scale` (CFG) and `classifier_scale` combine. With twice
            the image's output channels it predicts a variance too (Nichol & Dhariwal 2021).
        scheduler ([`SchedulerMixin`]): DDPM (ancestral: the mean shift by s Sigma g, Sigma the learned one with
            `variance_type="learned_range"`), or DDIM, DPM-Solver++, UniPC, Euler, ... (the score correction).
        classifier (`ModelMixin`, *optional*): a noise-aware classifier `classifier(x_t, t) -> logits` whose config
            has `num_train_timesteps` (condiff's `NoiseAwareClassifier`), or a classifier of clean images
            `classifier(x0) -> logits` (e.g. condiff's MNIST evaluator): training-free guidance through the denoiser.
        id2label (`dict[int, str]`, *optional*): class names, so `label="three"` works.
        default_corrector_steps, default_corrector_snr: the call's `corrector_steps` and `corrector_snr` when it
            gives none (0: no corrector).

    `classifier_scale`, `guidance_scale`, `num_timesteps` and `interrupt` are properties backed by state the loop
    reads each step: a `callback_on_step_end` may set `pipe._classifier_scale` or `pipe._interrupt`.
    """

    model_cpu_offload_seq = "unet->classifier"
    _optional_components = ["classifier"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "denoised"]

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: SchedulerMixin,
        classifier: Any = None,
        id2label: dict | None = None,
        default_num_inference_steps: int = 50,
        default_classifier_scale: float = 1.0,
        default_guidance_interval: tuple | list = (0.0, 1.0),
        default_guidance_scale: float = 1.0,
        default_corrector_steps: int = 0,
        default_corrector_snr: float = DEFAULT_CORRECTOR_SNR,
    ):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, classifier=classifier)
        self.register_to_config(**checked_defaults(
            id2label=id2label, default_num_inference_steps=default_num_inference_steps,
            default_classifier_scale=default_classifier_scale, default_guidance_interval=default_guidance_interval,
            default_guidance_scale=default_guidance_scale, default_corrector_steps=default_corrector_steps,
            default_corrector_snr=default_corrector_snr))  # fmt: skip
        self.check_components()

    @serialized_call  # schedulers are stateful: concurrent calls on one pipeline take turns (locking.py)
    @torch.no_grad()  # not inference_mode: the classifier's gradient needs autograd inside the loop
    @shared_call_docs
    def __call__(  # long: the documented argument list; the work is in CondiffPipeline
        self,
        label: LabelInput = None,
        num_images_per_label: int = 1,
        classifier_scale: float | None = None,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        guidance_method: str | None = None,
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
        r"""Generate images of the requested classes with classifier guidance.

        Args:
            label: class id(s) or name(s); `None` samples without guidance (unconditionally).
            num_images_per_label: images generated for each entry of `label`.
            classifier_scale: s, the weight of grad log p(y | x_t); 0 = unguided, bit for bit. Default: the
                model's `default_classifier_scale`.
            guidance_scale: CFG's w for a class-conditional UNet (default: the model's `default_guidance_scale`, 1 =
                the conditional prediction); ignored, as in diffusers pipelines, for an unconditional UNet (a warning
                when it is not 1).
            {shared: num_inference_steps, generator, latents}
            guidance_method: "mean_shift" (Algorithm 1, ancestral DDPM only) or "score" (Algorithm 2, any
                scheduler). Default: "mean_shift" for DDPM, "score" otherwise.
            guidance_interval: (lo, hi) fractions of the noise range where both guidances apply.
            {shared: output_type, return_dict, num_images_per_prompt}
            callback_on_step_end: `fn(pipe, step, timestep, {"latents": ...})` after each step; may return a new
                "latents" (or "prompt_embeds": the UNet's class ids, [null; labels], as in the CFG pipeline), and
                may set `pipe._classifier_scale`, `pipe._guidance_scale` (0.0 = CFG off: conditional only, as in
                diffusers' `SDCFGCutoffCallback`; classifier guidance stays) or `pipe._interrupt`.
            guidance: the class-conditional UNet's own guidance under the classifier's: "cfg" (default) or a
                diffusers guider (which brings its own scale).
            {shared: corrector_steps, corrector_snr}

        Returns:
            [`CondiffPipelineOutput`] with `images` and `nfe_per_image` (UNet rows per image; training-free guidance
            also runs one UNet backward pass per guided step), or `(images,)` when `return_dict` is False. The
            corrector steps with the guided score (the mean shift's s Sigma g as the score's + s g).
        """
        num_images = resolve_num_images(num_images_per_label, num_images_per_prompt)
        scale = self.config.default_classifier_scale if classifier_scale is None else classifier_scale
        steps, w, interval, tensor_inputs = self._call_settings(
            num_inference_steps, guidance_scale, guidance_interval, 0.0, output_type,
            callback_on_step_end, callback_on_step_end_tensor_inputs)  # fmt: skip
        class_ids = self.check_inputs(label, num_images, steps, generator, scale, guidance_scale)
        method = self.check_guidance_method(guidance_method)
        corrector = corrector_for_call(corrector_steps, corrector_snr, self.config, self.scheduler)
        labels = None if class_ids is None else torch.tensor(class_ids, device=self._execution_device)
        guidance = self.call_guidance(labels, method, interval, guidance, (guidance_scale, guidance_interval))
        self._classifier_scale = float(scale)
        w = getattr(guidance, "guidance_scale", w)
        # the call's w, reported (and ignored, with a warning) for an unconditional UNet; 0: unconditional sampling
        self._guidance_scale = 0.0 if labels is None and self.class_conditional_unet else w
        batch_size = num_images if class_ids is None else len(class_ids)
        conditions = self.unet_conditions(labels, batch_size)
        shape = (batch_size, self.unet.config.in_channels, *unet_sample_size(self.unet.config))
        latents, rows = self._sample(
            shape, steps, guidance, conditions, generator, latents, callback_on_step_end, tensor_inputs, corrector
        )
        return self._output(latents, output_type, return_dict, rows, batch_size)


# diffusers' custom-pipeline loader accepts one DiffusionPipeline subclass per file: unbind the shared base.
del CondiffPipeline
