"""The UNet side of `ClassifierGuidedPipeline`: an unconditional UNet, or a class-conditional one whose own CFG
combines with the classifier's guidance; the call's class ids, the conditions each branch gets, and the forward pass.

Part of the Hub-loadable pipeline code: imports only torch, diffusers and the standard library.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.utils import logging

from .checks import MAX_ROWS_PER_PASS, check_positive_int, check_scale
from .classifiers import check_guidable_scheduler, is_noise_aware
from .guidance import check_guidance_arguments
from .guiders import ClassifierGuidance, Guidance
from .labels import LabelInput, ids_per_image, parse_labels
from .networks import micro_batched, unet_extra_inputs

logger = logging.get_logger(__name__)


class GuidedUNetMixin:
    """For a pipeline with `unet`, `classifier` and `scheduler` (mixed in before `CondiffPipeline`)."""

    @property
    def class_conditional_unet(self) -> bool:
        return self.unet.config.num_class_embeds is not None

    @property
    def num_classes(self) -> int | None:
        """K: the classifier's classes, else the class-conditional UNet's (its null class not counted)."""
        if self.classifier is not None:
            return int(self.classifier.config.num_classes)
        return self.unet.config.num_class_embeds - 1 if self.class_conditional_unet else None

    @property
    def classifier_scale(self) -> float:
        """s of the running call; the loop reads `_classifier_scale` each step."""
        return self._classifier_scale

    def check_inputs(
        self, label: LabelInput, num_images: int, steps: int, generator: Any, classifier_scale: Any, guidance_scale: Any
    ) -> list[int] | None:
        """Class ids, one per image (None: unguided, unconditional); raises before any model work."""
        check_positive_int("num_inference_steps", steps, self.scheduler.config.num_train_timesteps)
        check_scale("classifier_scale", classifier_scale)
        if guidance_scale is not None:
            check_guidance_arguments(guidance_scale, 0.0, (0.0, 1.0))
            if not self.class_conditional_unet and guidance_scale != 1:
                logger.warning(
                    "guidance_scale=%s is ignored: the unet is unconditional (use classifier_scale)", guidance_scale
                )
        check_guidable_scheduler(self.scheduler)
        self.check_components()
        if label is not None and self.num_classes is None:
            raise ValueError("label needs a classifier (or a class-conditional unet); this pipeline has neither")
        labels = None if label is None else parse_labels(label, self.num_classes, self.id2label)
        ids = ids_per_image([-1] if labels is None else labels, num_images, generator)
        return None if labels is None else ids

    def unet_conditions(self, labels: torch.Tensor | None, batch_size: int) -> dict:
        """Each branch's class ids (None for an unconditional UNet; the null class K for the unguided branch and for
        unlabelled images) and, as "shown", what a callback sees: the labels, or -1 for unlabelled images."""
        device = self._execution_device
        conditions = {"cond": None, "uncond": None}
        if self.class_conditional_unet:
            null = torch.full((batch_size,), self.unet.config.num_class_embeds - 1, device=device)
            conditions = {"cond": null if labels is None else labels, "uncond": null}
        shown = torch.full((batch_size,), -1, device=device) if labels is None else labels
        return {**conditions, "shown": (shown, shown)}

    def _predict(self, network: Any, sample: torch.Tensor, labels: Any, t: Any, scale: Any) -> torch.Tensor:
        extra = unet_extra_inputs(network)

        def forward(x: torch.Tensor, class_labels: Any) -> torch.Tensor:
            return network(x, t, class_labels=class_labels, **extra).sample

        return micro_batched(forward, MAX_ROWS_PER_PASS, sample, labels)

    def _callback_pair(self, conditions: dict) -> tuple:
        """An unconditional UNet takes no class ids: a callback is shown the requested labels (or -1), and what it
        hands back is not used."""
        return conditions["shown"] if conditions["cond"] is None else (conditions["uncond"], conditions["cond"])

    def _with_callback_pair(self, conditions: dict, pair: tuple) -> dict:
        if conditions["cond"] is None:
            return {**conditions, "shown": pair}
        return {**conditions, "uncond": pair[0], "cond": pair[1]}

    def call_guidance(self, labels: Any, method: str, interval: tuple, guidance: Any, given: tuple) -> Guidance:
        """The inner method (CFG for a class-conditional UNet, or `guidance`) and classifier guidance on top of it."""
        inner = self._guidance(guidance, interval, *given) if self.class_conditional_unet else Guidance()
        if labels is None or self.classifier is None:
            return inner
        noise_aware = is_noise_aware(self.classifier)
        return ClassifierGuidance(inner, self._classify, labels, method, noise_aware, interval)
