"""The class-conditional UNet of `ClassConditionalDDPMPipeline`: its checks, class ids, guidance and forward pass.

Part of the Hub-loadable pipeline code: imports only torch, diffusers and the standard library.
"""

from __future__ import annotations

from typing import Any

import torch

from .checks import check_positive_int
from .guiders import EmbeddedGuidance
from .labels import LabelInput, ids_per_image, parse_labels
from .networks import class_unet_forward, to_channels_last
from .variance import epsilon_output


def check_class_unet(unet: Any) -> None:
    """Raise a ValueError when `unet` has no learned null class or attends to text (cross-attention)."""
    if unet.config.num_class_embeds is None or unet.config.num_class_embeds < 2:
        raise ValueError("unet must have num_class_embeds = number of classes + 1 (the null class)")
    if any("CrossAttn" in b for b in (*unet.config.down_block_types, *unet.config.up_block_types)):
        raise ValueError("unet must not use cross-attention (text conditioning): use LatentCFGPipeline for that")


class ClassUNetMixin:
    """For a pipeline whose `unet` takes class ids 0..K-1 and the null class K (mixed in before `CondiffPipeline`):
    class ids of a call, the guidance a call can use, and the UNet's forward pass as the shared loop calls it."""

    def _after_loading(self, kwargs: dict) -> None:
        to_channels_last(self, ("unet", "guide_unet"), kwargs)

    @property
    def num_classes(self) -> int:
        """Number of real classes K (the null class K is not counted)."""
        return self.unet.config.num_class_embeds - 1

    @property
    def null_class(self) -> int:
        return self.num_classes

    @property
    def guidance_embedded(self) -> bool:
        """Whether the UNet takes the guidance scale as an input (a guidance-distilled student)."""
        return getattr(self.unet.config, "time_cond_proj_dim", None) is not None

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether a guided step runs two branches: never for a guidance-embedded UNet (w is an input)."""
        return not self.guidance_embedded and super().do_classifier_free_guidance

    def get_label_ids(self, label: LabelInput) -> list[int] | None:
        """Class ids for `label` (ints, names from `id2label`, a tensor, a list of these, or None)."""
        return parse_labels(label, self.num_classes, self.id2label)

    def check_inputs(self, label: LabelInput, num_images: int, num_inference_steps: int, generator: Any) -> list[int]:
        """Class ids, one per image; raises before any model work when `label`, the counts or `generator` are bad."""
        labels = self.get_label_ids(label)
        check_positive_int("num_inference_steps", num_inference_steps, self.scheduler.config.num_train_timesteps)
        return ids_per_image([self.null_class] if labels is None else labels, num_images, generator)

    def call_guidance(self, guidance: Any, scale: float, rescale: float, interval: tuple, given: tuple = (None, None)):
        """The guidance object of a call, refused before any sampling when it cannot apply to this UNet (`given`:
        the call's own guidance_scale and guidance_interval arguments)."""
        if self.guidance_embedded:
            guidance = self.config.get("default_guidance", "cfg") if guidance is None else guidance
            trained = self.config.get("guidance_scale_range")
            return EmbeddedGuidance.for_call(guidance, scale, rescale, trained, interval)
        return self._guidance(guidance, interval, *given)

    def _predict(self, network: Any, sample: torch.Tensor, labels: torch.Tensor, t: Any, scale: Any) -> torch.Tensor:
        output = class_unet_forward(network, sample, labels, t, scale, self.config.micro_batch_size)
        target = self.config.get("prediction_target")
        return epsilon_output(target, self.scheduler.alphas_cumprod, output, sample, t) if target else output
