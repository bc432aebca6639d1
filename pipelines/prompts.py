"""Prompt conditions of text pipelines: prompts or precomputed embeddings, negative prompts as the null condition, and
diffusers' `encode_prompt`.

Part of the Hub-loadable pipeline code: imports only torch and the standard library.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .checks import MAX_IMAGES_PER_CALL, check_generators, check_positive_int, latent_shape, short_repr
from .labels import LabelInput, prompt_class_ids
from .text_encoding import encode_text, text_width


def check_prompts(name: str, prompts: Any) -> list[str]:
    """A string or a non-empty list of strings, as a list."""
    prompts = [prompts] if isinstance(prompts, str) else prompts
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"{name} must be a string or a non-empty list of strings, got {short_repr(prompts)}")
    if not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"{name} must hold only strings, got {short_repr(prompts)}")
    for p in prompts:
        try:
            p.encode("utf-8")
        except UnicodeEncodeError as error:  # a lone surrogate ("\udcff"): no tokenizer can take it
            raise ValueError(f"{name} must be valid Unicode text; {short_repr(p)} holds {error.reason}") from None
    return list(prompts)


class PromptConditionsMixin:
    """For a pipeline with `text_encoder`, `tokenizer`, `unet` (its `cross_attention_dim`) and `max_text_length` in
    its config: prompts to the (conditional, null-or-negative) embeddings pair the sampling loop takes."""

    def _embeds_dtype(self) -> torch.dtype:
        """The UNet's dtype; the text encoder's in a pipeline built with a text encoder alone."""
        return (self.unet if self.unet is not None else self.text_encoder).dtype

    @property
    def pooled_text_token(self) -> bool:
        """Whether prompts get the pooled token (`text_encoding.encode_text`); False in folders saved before it."""
        return bool(self.config.get("pooled_text_token", False))

    @property
    def text_tokens(self) -> int:
        """Tokens per prompt embedding: `max_text_length`, plus the pooled token when the config has one."""
        return self.config.max_text_length + int(self.pooled_text_token)

    def _encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text-encoder hidden states (N, text_tokens, width) on the execution device, in `_embeds_dtype`."""
        if self.text_encoder is None:
            raise ValueError("this pipeline has no text encoder (text_encoder_name_or_path=None): pass prompt_embeds")
        embeds = encode_text(
            self.text_encoder, self.tokenizer, prompts, self.config.max_text_length, pooled_token=self.pooled_text_token
        )
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
        text_tokens, width), one row per image; the negative ones are the null condition "" unless
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

    def _check_embeds(self, name: str, embeds: Any, tokens: int | None = None) -> torch.Tensor:
        """Precomputed embeddings: a finite floating-point (N >= 1, tokens, width) tensor; `tokens`, when given, is
        the token count they must have (that of the negative prompt's encoding they are paired with)."""
        width = self.unet.config.cross_attention_dim if self.unet is not None else text_width(self.text_encoder)
        shape = f"(N >= 1, {tokens or 'tokens'}, {width})"
        if not isinstance(embeds, torch.Tensor) or embeds.ndim != 3 or embeds.shape[-1] != width or not len(embeds):
            got = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
            raise ValueError(f"{name} must be a tensor of shape {shape}, got {got}")
        if tokens is not None and embeds.shape[1] != tokens:
            raise ValueError(
                f"{name} must have shape {shape} (the null/negative prompt is encoded to text_tokens tokens; or "
                f"pass negative_prompt_embeds of the same shape), got {tuple(embeds.shape)}"
            )
        if not embeds.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {embeds.dtype}")
        if not bool(torch.isfinite(embeds).all()):
            raise ValueError(f"{name} holds NaN or inf values")
        return embeds.to(self._execution_device, self._embeds_dtype())

    def text_conditions(
        self, prompt: Any, negative_prompt: Any, prompt_embeds: Any, negative_prompt_embeds: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt embeddings, null-or-negative embeddings), one row per prompt; raises on inconsistent input."""
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of prompt and prompt_embeds")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("pass at most one of negative_prompt and negative_prompt_embeds")
        # every argument is checked before the text encoder runs
        prompts = None if prompt is None else check_prompts("prompt", prompt)
        paired = negative_prompt_embeds is not None
        negatives = (
            None if paired else check_prompts("negative_prompt", "" if negative_prompt is None else negative_prompt)
        )
        tokens = None if paired else self.text_tokens
        cond = None if prompt_embeds is None else self._check_embeds("prompt_embeds", prompt_embeds, tokens)
        uncond = self._check_embeds("negative_prompt_embeds", negative_prompt_embeds) if paired else None
        n = len(prompts) if prompts is not None else len(cond)
        if not paired and len(negatives) not in (1, n):
            raise ValueError(f"negative_prompt has {len(negatives)} entries but there are {n} prompts; give 1 or {n}")
        cond = self._encode(prompts) if cond is None else cond
        if paired:
            if uncond.shape != cond.shape:
                raise ValueError(f"negative_prompt_embeds shape {tuple(uncond.shape)} != prompt's {tuple(cond.shape)}")
            return cond, uncond
        uncond = self._encode(negatives)
        return cond, uncond.expand(n, -1, -1) if len(uncond) == 1 else uncond

    def prompt_batch(
        self, prompts: tuple, class_labels: LabelInput, num_images_per_prompt: int, size: tuple, generator: Any
    ) -> tuple[tuple[int, ...], dict]:
        """(latent shape, {"cond": ..., "uncond": ...} one row per image) of a call: `prompts` is (prompt,
        negative_prompt, prompt_embeds, negative_prompt_embeds), `size` (height, width); all checked before the text
        encoder runs."""
        prompt, _, prompt_embeds, _ = prompts
        n_prompts = len(check_prompts("prompt", prompt)) if prompt is not None else None
        given = isinstance(prompt_embeds, torch.Tensor) and prompt_embeds.ndim > 0
        n_prompts = n_prompts or (prompt_embeds.shape[0] if given else 1)
        batch = n_prompts * num_images_per_prompt
        if batch > MAX_IMAGES_PER_CALL:
            raise ValueError(f"prompts x num_images_per_prompt = {batch} images; at most {MAX_IMAGES_PER_CALL}")
        shape = latent_shape(self.unet.config, self.vae_scale_factor, batch, *size)
        check_generators(generator, batch)
        classes = prompt_class_ids(class_labels, self.num_classes, self.id2label, n_prompts)
        text, null = self.text_conditions(*prompts)

        def per_image(x: torch.Tensor) -> torch.Tensor:
            return x.repeat_interleave(num_images_per_prompt, dim=0)

        cond, uncond = {"encoder_hidden_states": per_image(text)}, {"encoder_hidden_states": per_image(null)}
        if classes is not None:
            ids = torch.tensor(classes, device=self._execution_device)
            null_ids = torch.full_like(ids, self.num_classes)
            cond["class_labels"], uncond["class_labels"] = per_image(ids), per_image(null_ids)
        return shape, {"cond": cond, "uncond": uncond}
