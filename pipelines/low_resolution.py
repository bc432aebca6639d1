"""The low-resolution input of `SuperResolutionPipeline`: checked and converted, noise-augmented and upsampled into
the condition its UNet concatenates, and classified for `label="auto"`.

Part of the Hub-loadable pipeline code: imports only torch, diffusers and the standard library.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor

from .checks import short_repr
from .spatial import check_image_channels
from .spatial_conditions import augment_low_resolution, downsample_area, noise_level_embedding, upsample_bicubic


def check_noise_level(name: str, value: Any, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise ValueError(f"{name} must be an integer in [0, {maximum}], got {short_repr(value)}")


class LowResolutionInputMixin:
    """For a pipeline with `image_processor`, `image_channels`, `unet`, `scheduler` and an optional `classifier` of
    the inputs (mixed in before the pipeline's base)."""

    def prepare_low_resolution(self, image: Any, size: tuple[int, int] | None) -> torch.Tensor:
        """`image` (PIL, numpy or a tensor in [0, 1], or a list) as an (N, C, h, w) tensor in [-1, 1], checked."""
        if image is None:
            raise ValueError("image is required: the low-resolution image(s) to upscale")
        try:
            low = self.image_processor.preprocess(image)
        except (TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"image must be a PIL image, numpy array or tensor in [0, 1], or a list of them, got "
                             f"{short_repr(image)} ({error})") from None  # fmt: skip
        check_image_channels(low, self.image_channels)
        if size is not None and (low.shape[-2] > size[0] or low.shape[-1] > size[1]):
            raise ValueError(f"image is {low.shape[-2]}x{low.shape[-1]}, larger than the output {size[0]}x{size[1]}")
        return low.to(self._execution_device, torch.float32)

    def augmented_condition(
        self, low: torch.Tensor, level: int, size: tuple[int, int], generator: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the inputs noised to augmentation `level` by the scheduler's schedule and bicubic-upsampled to `size`, the
        UNet's `timestep_cond` embedding of that level, or None for a UNet that takes none)."""
        levels = torch.full((low.shape[0],), int(level), device=low.device)
        abar = getattr(self.scheduler, "alphas_cumprod", None)
        if abar is None:
            raise ValueError(f"scheduler {type(self.scheduler).__name__} has no alphas_cumprod for the augmentation")
        noise = randn_tensor(low.shape, generator=generator, device=low.device, dtype=low.dtype)
        spatial = upsample_bicubic(augment_low_resolution(low, levels, abar, noise=noise), size)
        proj = self.unet.config.time_cond_proj_dim
        return spatial, None if proj is None else noise_level_embedding(levels, proj)

    def check_components(self) -> None:
        """Raise a ValueError when the classifier does not fit the UNet (classes, channels)."""
        if self.classifier is None:
            return
        config = self.classifier.config
        if self.num_classes is None or config.num_classes != self.num_classes:
            raise ValueError(f"classifier has {config.num_classes} classes; the unet has {self.num_classes} "
                             "(label=\"auto\" needs a UNet with a class embedding of the same classes)")  # fmt: skip
        if config.in_channels != self.image_channels:
            raise ValueError(f"classifier takes {config.in_channels} channels; the images have "
                             f"{self.image_channels}")  # fmt: skip

    def most_likely_classes(self, low: torch.Tensor) -> torch.Tensor:
        """`label="auto"`: the classifier's most likely class of each input (N, C, h, w) in [-1, 1], seen as it was
        trained: area-downsampled to `classifier_resolution` if larger, bicubic-upsampled to its `image_size`."""
        if self.classifier is None:
            raise ValueError('label="auto" needs a classifier of the inputs (the `classifier` component); this '
                             "pipeline has none: give label ids or names, or None")  # fmt: skip
        cap = self.config.classifier_resolution
        if cap is not None and max(low.shape[-2:]) > cap:
            low = downsample_area(low, (min(low.shape[-2], cap), min(low.shape[-1], cap)))
        side = self.classifier.config.image_size
        seen = upsample_bicubic(low, (side, side)).to(self.classifier.device, self.classifier.dtype)
        return self.classifier(seen).argmax(1).to(low.device)
