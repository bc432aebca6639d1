"""What `LatentCFGPipeline` adds to the shared loop: a text encoder that the saved folder names instead of holding, the
cross-attention UNet's forward pass and callback pairs, and the VAE that decodes its latents.

Part of the Hub-loadable pipeline code: imports only torch and the standard library.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .checks import MAX_ROWS_PER_PASS
from .networks import micro_batched
from .weights import component_dtype

TEXT_COMPONENTS = ("text_encoder", "tokenizer")


class TextUNetMixin:
    """For a pipeline with `vae`, a cross-attention `unet` and the `TEXT_COMPONENTS` (mixed in before
    `CondiffPipeline`)."""

    def _after_loading(self, kwargs: dict) -> None:
        """The text encoder comes from `text_encoder_name_or_path` unless `text_encoder=` and `tokenizer=` are passed
        to `from_pretrained`; its `dtype=` (or `torch_dtype=`) reaches it too."""
        dtype = component_dtype(kwargs, "text_encoder")
        if dtype is not None and "text_encoder" not in kwargs:  # built by __init__ from the name: diffusers skips it
            self.text_encoder.to(dtype)

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

    def _predict(self, network: Any, sample: torch.Tensor, condition: dict, t: Any, scale: Any) -> torch.Tensor:
        def forward(x: torch.Tensor, states: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
            labels = {} if class_labels is None else {"class_labels": class_labels}
            kwargs = self.cross_attention_kwargs
            return network(x, t, encoder_hidden_states=states, **labels, cross_attention_kwargs=kwargs).sample

        rows = (condition["encoder_hidden_states"], condition.get("class_labels"))
        return micro_batched(forward, MAX_ROWS_PER_PASS, sample, *rows)

    def _callback_pair(self, conditions: dict) -> tuple:
        return conditions["uncond"]["encoder_hidden_states"], conditions["cond"]["encoder_hidden_states"]

    def _with_callback_pair(self, conditions: dict, pair: tuple) -> dict:
        uncond = {**conditions["uncond"], "encoder_hidden_states": pair[0]}
        return {**conditions, "uncond": uncond, "cond": {**conditions["cond"], "encoder_hidden_states": pair[1]}}

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1] (model space), through the VAE decoder."""
        return self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
