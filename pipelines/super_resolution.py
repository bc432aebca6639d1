"""SuperResolutionPipeline: a low-resolution image in, a sharp one out, by a diffusion model conditioned on the
(noise-augmented, bicubic-upsampled) input concatenated to its own input at every step.

Hub-loadable: this file and its siblings import only torch and diffusers (and the standard library), so
`DiffusionPipeline.from_pretrained(folder, custom_pipeline=folder, trust_remote_code=True)` works without condiff.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.schedulers import SchedulerMixin

from .checks import (
    MAX_IMAGES_PER_CALL,
    check_generators,
    check_positive_int,
    resolve_num_images,
    unet_sample_size,
)
from .classifiers import ClassifierComponent
from .denoising import CondiffPipeline, StepCallback
from .locking import serialized_call
from .low_resolution import LowResolutionInputMixin, check_noise_level
from .outputs import CondiffPipelineOutput
from .spatial import SpatialConditionPipeline

# isort: split
# diffusers copies only the sibling files that a local custom-pipeline file imports itself (see class_conditional.py)
from .callbacks import step_callback  # noqa: F401
from .config_defaults import checked_defaults  # noqa: F401
from .corrector import check_corrector_arguments  # noqa: F401
from .diffusers_guiders import DiffusersGuidance  # noqa: F401
from .digit_classifier import MnistClassifier  # noqa: F401
from .guidance import check_guidance_arguments  # noqa: F401
from .guiders import Guidance  # noqa: F401
from .labels import parse_labels  # noqa: F401
from .networks import micro_batched  # noqa: F401
from .noise_aware_classifier import NoiseAwareClassifier  # noqa: F401
from .saved_folder import check_saved_folder  # noqa: F401
from .schedules import check_schedule  # noqa: F401
from .spatial_conditions import upsample_bicubic  # noqa: F401
from .variance import split_variance  # noqa: F401
from .weights import refusing_unsafe_pickles  # noqa: F401


class SuperResolutionPipeline(LowResolutionInputMixin, ClassifierComponent, SpatialConditionPipeline):
    r"""Super-resolution by a diffusion model conditioned by concatenation (SR3; latent diffusion's super-resolution).

    Parameters:
        unet ([`UNet2DConditionModel`] without cross-attention): `in_channels` = image channels x 2 (x_t and the
            upsampled input); with `time_cond_proj_dim` it takes the input's noise-augmentation level; with
            `num_class_embeds` = K + 1 a class label too (class K: none).
        scheduler ([`SchedulerMixin`]): any diffusers scheduler; its `alphas_cumprod` also define the augmentation.
        max_noise_level (`int`): the largest augmentation level the model was trained on.
        default_noise_level (`int`): the level of a call that gives none (0: the input is taken as clean).
        classifier ([`ModelMixin`], *optional*): a classifier of the low-resolution inputs (condiff's
            `MnistClassifier` trained on them, bicubic-upsampled to its `image_size`) for `label="auto"`: the class
            hint becomes its most likely class, the MAP class of an ambiguous input, rather than a posterior draw.
        classifier_resolution (`int`, *optional*): the input size the classifier was trained on; larger inputs are
            area-downsampled to it first.
        image_channels (`int`, *optional*): the image's channels when the UNet also predicts a variance (twice
            them as output channels); default the UNet's `out_channels`.
        prediction_target (`str`, *optional*): "mean" or "score" for a UNet that predicts them (converted to
            epsilon for any scheduler with `prediction_type="epsilon"`); None: the scheduler's parametrisation.
    """

    model_cpu_offload_seq = "classifier->unet"
    _optional_components = ["classifier"]

    def __init__(
        self,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
        id2label: dict | None = None,
        max_noise_level: int = 0,
        default_noise_level: int = 0,
        default_num_inference_steps: int = 20,
        default_guidance_scale: float = 1.0,
        default_guidance_interval: tuple | list = (0.0, 1.0),
        micro_batch_size: int | None = None,
        classifier: Any = None,
        classifier_resolution: int | None = None,
        image_channels: int | None = None,
        prediction_target: str | None = None,
    ):
        super().__init__()
        channels = unet.config.out_channels if image_channels is None else image_channels
        if unet.config.in_channels != 2 * channels:
            raise ValueError(
                f"unet must take the image and its low-resolution condition: in_channels ({unet.config.in_channels}) "
                f"= 2 x the image's {channels} (`image_channels`, default the unet's out_channels)"
            )
        check_noise_level("max_noise_level", max_noise_level, scheduler.config.num_train_timesteps - 1)
        check_noise_level("default_noise_level", default_noise_level, max_noise_level)
        self._register_spatial(
            unet, scheduler, id2label, default_num_inference_steps, default_guidance_scale, default_guidance_interval,
            micro_batch_size, max_noise_level=int(max_noise_level), default_noise_level=int(default_noise_level),
            classifier_resolution=classifier_resolution, image_channels=image_channels,
            prediction_target=prediction_target,
        )  # fmt: skip
        if classifier_resolution is not None:
            check_positive_int("classifier_resolution", classifier_resolution, unet_sample_size(unet.config)[0])
        self.register_modules(classifier=classifier)
        self.check_components()
        self.image_processor = VaeImageProcessor(do_resize=False, do_normalize=True, do_convert_grayscale=True)

    @serialized_call  # schedulers are stateful: concurrent calls on one pipeline take turns (locking.py)
    @torch.inference_mode()
    def __call__(  # long: the documented argument list; the work is in SpatialConditionPipeline
        self,
        image: Any = None,
        label: Any = None,
        noise_level: int | None = None,
        num_images_per_prompt: int = 1,
        height: int | None = None,
        width: int | None = None,
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
        guidance: Any = None,
    ) -> CondiffPipelineOutput | tuple:
        r"""Upscale `image` to `height` x `width`.

        Args:
            image: the low-resolution image(s): PIL, numpy (H, W, C) / (N, H, W, C) or a tensor (N, C, H, W) in [0, 1]
                as diffusers' image processors take them, or a list.
            label: an optional class hint (id or name, one or one per image) for a UNet with a class embedding, or
                "auto": the most likely class of each input by the pipeline's `classifier`.
            noise_level: augmentation level s of the input (0 to `max_noise_level`): larger levels let the model
                repair inputs that are not clean downsamples, at some loss of fidelity. Default: the model's.
            num_images_per_prompt: outputs per input image.
            height, width: output size (multiples of the UNet's downsampling); default: the UNet's sample size.
            guidance_scale: CFG w on the input (and label): 1 = the conditional model alone (one network evaluation
                per step), 0 = unconditional. Default: the model's `default_guidance_scale`.
            num_inference_steps, generator, latents, guidance_rescale, guidance_interval, output_type, return_dict,
            callback_on_step_end, callback_on_step_end_tensor_inputs, guidance: as in `ClassConditionalDDPMPipeline`
                (callbacks see "latents").

        Examples:
        ```py
        >>> from condiff import SuperResolutionPipeline, shipped_model_path
        >>> pipe = SuperResolutionPipeline.from_pretrained(shipped_model_path("super-resolution"))
        >>> sharp = pipe(image=low_res_pil).images[0]  # 7x7 or 14x14 -> 28x28
        ```
        """
        num_images = resolve_num_images(num_images_per_prompt, None, "num_images_per_prompt")
        settings = self._call_settings(
            num_inference_steps, guidance_scale, guidance_interval, guidance_rescale, output_type,
            callback_on_step_end, callback_on_step_end_tensor_inputs)  # fmt: skip
        size = self.output_size(height, width, unet_sample_size(self.unet.config))
        low = self.prepare_low_resolution(image, size)
        level = self.config.default_noise_level if noise_level is None else noise_level
        check_noise_level("noise_level", level, self.config.max_noise_level)
        auto = isinstance(label, str) and label == "auto"
        labels = self.most_likely_classes(low) if auto else self.class_ids(label, low.shape[0])
        n = low.shape[0] * num_images
        if n > MAX_IMAGES_PER_CALL:
            raise ValueError(f"image x num_images_per_prompt = {n} images; at most {MAX_IMAGES_PER_CALL}")
        check_generators(generator, n)
        low = low.repeat_interleave(num_images, dim=0)  # each output's augmentation noise from its own generator
        labels = None if labels is None else labels.repeat_interleave(num_images, dim=0)
        spatial, timestep_cond = self.augmented_condition(low, int(level), size, generator)
        call = dict(guidance=guidance, guidance_scale=guidance_scale, guidance_interval=guidance_interval,
                    guidance_rescale=guidance_rescale, generator=generator, latents=latents, output_type=output_type,
                    return_dict=return_dict, callback_on_step_end=callback_on_step_end)  # fmt: skip
        return self._generate(spatial.to(self.unet.dtype), labels, timestep_cond, 1, settings, call)


# diffusers' custom-pipeline loader accepts one DiffusionPipeline subclass per file: unbind the shared bases.
del ClassifierComponent, CondiffPipeline, SpatialConditionPipeline
