"""What condiff's pipelines return: images in the requested `output_type`, and the network evaluations they cost.

Part of the Hub-loadable pipeline code: imports only torch, numpy and diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from diffusers import ImagePipelineOutput
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

if TYPE_CHECKING:
    import PIL.Image


@dataclass
class CondiffPipelineOutput(ImagePipelineOutput):
    """Output of every condiff pipeline.

    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`): the images in the requested `output_type`
            ("latent": the final model-space latents, exactly as the last denoising step left them).
        nfe_per_image (`float`, *optional*): network rows evaluated per image in this call, over all steps
            (a guided step with both branches counts 2, a one-branch step 1). Per call, so safe under threads.
    """

    nfe_per_image: float | None = None


def to_output_type(latents: torch.Tensor, output_type: str) -> list[PIL.Image.Image] | np.ndarray | torch.Tensor:
    """[-1, 1] model-space images -> "latent" (the tensor unchanged, contiguous NCHW), "pt" ([0, 1] NCHW tensor),
    "np" ([0, 1] NHWC array) or "pil"."""
    latents = latents.contiguous()  # the loop may run in channels_last; hand back the usual layout
    if output_type == "latent":
        return latents
    images = (latents / 2 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return images
    array = images.cpu().permute(0, 2, 3, 1).float().numpy()
    return array if output_type == "np" else DiffusionPipeline.numpy_to_pil(array)
