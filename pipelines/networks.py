"""Running a denoising network: the inputs a UNet needs beyond (sample, t, labels), its memory layout, micro-batches.

Part of the Hub-loadable pipeline code: imports only torch.
"""

from __future__ import annotations

from typing import Any

import torch

from .checks import MAX_ROWS_PER_PASS
from .guidance import guidance_scale_embedding


def unet_extra_inputs(unet: Any) -> dict[str, Any]:
    """What a class-conditional UNet's forward needs beyond (sample, t, class_labels): a `UNet2DConditionModel`
    without cross-attention still requires `encoder_hidden_states` (None)."""
    return {"encoder_hidden_states": None} if "cross_attention_dim" in unet.config else {}


def micro_batched(forward: Any, size: int | None, *rows: torch.Tensor | None) -> torch.Tensor:
    """`forward(*rows)` run on consecutive slices of at most `size` rows (None: all at once), concatenated.

    For networks whose rows are independent (condiff's UNets: GroupNorm normalises each image alone), the result
    equals one big forward pass; smaller slices keep activations in cache, which is faster on CPUs at large batches
    (benchmarks/micro_batching.py measures the size). Entries of `rows` that are None are passed as None.
    """
    n = next(r.shape[0] for r in rows if r is not None)
    if size is None or n <= size:
        return forward(*rows)
    parts = [forward(*(None if r is None else r[i : i + size] for r in rows)) for i in range(0, n, size)]
    return torch.cat(parts)


def channels_last(sample: torch.Tensor) -> torch.Tensor:
    """The UNet's input in channels_last memory format (same values). Convolutions follow the activations' layout, so
    a caller's UNet runs channels_last without being converted, up to the first upsampler at >= 64 rows (diffusers'
    `Upsample2D` makes large batches contiguous); a UNet loaded by `from_pretrained` is converted as well."""
    return sample.to(memory_format=torch.channels_last) if sample.ndim == 4 else sample


def class_unet_forward(
    network: Any, sample: torch.Tensor, labels: torch.Tensor, t: Any, scale: Any, micro_batch_size: int | None
) -> torch.Tensor:
    """A class-conditional UNet's output for `sample` in channels_last micro-batches; `scale` is w for a
    guidance-embedded UNet (`time_cond_proj_dim`), None for an ordinary one."""
    extra, w_emb = unet_extra_inputs(network), None
    if scale is not None:
        w = torch.full((sample.shape[0],), float(scale), device=sample.device)
        w_emb = guidance_scale_embedding(w, network.config.time_cond_proj_dim).to(network.dtype)

    def forward(x: torch.Tensor, class_labels: torch.Tensor, w_rows: torch.Tensor | None) -> torch.Tensor:
        cond = {} if w_rows is None else {"timestep_cond": w_rows}
        return network(channels_last(x), t, class_labels=class_labels, **extra, **cond).sample

    return micro_batched(forward, micro_batch_size or MAX_ROWS_PER_PASS, sample, labels, w_emb)


def to_channels_last(pipe: Any, names: tuple[str, ...], from_pretrained_kwargs: dict) -> None:
    """Put the UNets `from_pretrained` loaded (not ones passed in, not device-mapped or quantized) in channels_last
    memory format: about 1.2x faster CPU sampling at batch 100 (benchmarks/), same values up to float rounding."""
    if {"device_map", "quantization_config"} & from_pretrained_kwargs.keys():
        return
    for name in names:
        if name not in from_pretrained_kwargs and getattr(pipe, name, None) is not None:
            getattr(pipe, name).to(memory_format=torch.channels_last)
