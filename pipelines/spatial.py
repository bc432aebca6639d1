"""`SpatialConditionPipeline`: what the pipelines conditioned by concatenation share (super-resolution, semantic
layout maps). The condition c is brought to the output size by the subclass; every step the UNet sees [x_t, c] on
the channel axis, with an optional class label and an optional `timestep_cond` (the super-resolution noise level).
Classifier-free guidance drops c (zeros) and the label (the null class) together. A UNet may learn its variance
(twice the image's output channels; the config's `image_channels` then says the image's) and predict the mean or the
score (`prediction_target`), as the class-conditional pipeline's may.

Part of the Hub-loadable pipeline code: imports only torch, diffusers and the standard library.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.schedulers import SchedulerMixin

from .checks import MAX_IMAGES_PER_CALL, MAX_ROWS_PER_PASS, check_generators, check_positive_int
from .config_defaults import checked_defaults
from .denoising import CondiffPipeline
from .labels import parse_labels
from .networks import micro_batched, to_channels_last
from .spatial_conditions import unet_downsampling
from .variance import check_prediction_target, check_variance_setup, epsilon_output

MAX_CANVAS_SIDE = 1024


def spatial_unet_forward(network: Any, sample: torch.Tensor, condition: dict, t: Any, micro_batch_size: Any):
    """The UNet's output for [sample, condition["map"]] with its class labels and `timestep_cond`, in micro-batches."""

    def forward(x: torch.Tensor, spatial: torch.Tensor, labels: Any, cond: Any) -> torch.Tensor:
        model_input = torch.cat([x, spatial.to(x.dtype)], dim=1).contiguous(memory_format=torch.channels_last)
        extra = {} if cond is None else {"timestep_cond": cond.to(network.dtype)}
        return network(model_input, t, encoder_hidden_states=None, class_labels=labels, **extra).sample

    rows = (sample, condition["map"], condition.get("labels"), condition.get("timestep_cond"))
    return micro_batched(forward, micro_batch_size or MAX_ROWS_PER_PASS, *rows)


class SpatialConditionPipeline(CondiffPipeline):
    """Base of the pipelines whose condition is an image-shaped tensor concatenated to the UNet's input."""

    model_cpu_offload_seq = "unet"
    _callback_tensor_inputs = ["latents", "denoised"]

    def _register_spatial(
        self, unet: UNet2DConditionModel, scheduler: SchedulerMixin, id2label: Any, steps: int,
        default_guidance_scale: float, default_guidance_interval: Any, micro_batch_size: Any, **config: Any,
    ) -> None:  # fmt: skip
        image_channels, target = config.get("image_channels"), config.get("prediction_target")
        if image_channels is not None:
            check_positive_int("image_channels", image_channels, unet.config.in_channels)
        channels = unet.config.out_channels if image_channels is None else image_channels
        if unet.config.in_channels <= channels:
            raise ValueError(
                f"unet must take the condition's channels on top of the image's: in_channels "
                f"({unet.config.in_channels}) must exceed the image's {channels} (`image_channels`, default the "
                "unet's out_channels)"
            )
        check_variance_setup(scheduler, unet.config.out_channels, channels)
        check_prediction_target(target, scheduler)
        if any("CrossAttn" in b for b in (*unet.config.down_block_types, *unet.config.up_block_types)):
            raise ValueError("unet must not use cross-attention: the spatial pipelines take no text")
        self.register_modules(unet=unet, scheduler=scheduler)
        defaults = checked_defaults(
            id2label=id2label, default_num_inference_steps=steps, default_guidance_scale=default_guidance_scale,
            default_guidance_interval=default_guidance_interval, micro_batch_size=micro_batch_size)  # fmt: skip
        self.register_to_config(**defaults, **config)

    def _after_loading(self, kwargs: dict) -> None:
        to_channels_last(self, ("unet",), kwargs)

    @property
    def image_channels(self) -> int:
        """Channels of the images denoised: the config's `image_channels`, default the UNet's output channels (a
        UNet that learns its variance outputs twice the image's and needs `image_channels`)."""
        return self.config.get("image_channels") or self.unet.config.out_channels

    @property
    def condition_channels(self) -> int:
        """Channels of the concatenated condition: the UNet's input channels minus the image's."""
        return self.unet.config.in_channels - self.image_channels

    @property
    def num_classes(self) -> int | None:
        """Real classes K of the class embedding (the null class K not counted); None without one."""
        embeds = self.unet.config.num_class_embeds
        return None if embeds is None else embeds - 1

    def class_ids(self, label: Any, n: int) -> torch.Tensor | None:
        """One class id per image (None -> the null class K), or None for a UNet without a class embedding."""
        if self.num_classes is None:
            if label is not None:
                raise ValueError("label given, but this unet has no class embedding (num_class_embeds is None)")
            return None
        ids = parse_labels(label, self.num_classes, self.id2label)
        ids = [self.num_classes] * n if ids is None else ids * n if len(ids) == 1 else ids
        if len(ids) != n:
            raise ValueError(f"label has {len(ids)} entries but image has {n}; give one label or one per image")
        return torch.tensor(ids, device=self._execution_device)

    def output_size(self, height: Any, width: Any, default: tuple[int, int]) -> tuple[int, int]:
        """(height, width) of the outputs: multiples of the UNet's downsampling factor, at most MAX_CANVAS_SIDE."""
        factor = unet_downsampling(self.unet.config)
        size = (default[0] if height is None else height, default[1] if width is None else width)
        for name, value in zip(("height", "width"), size):
            check_positive_int(name, value, MAX_CANVAS_SIDE)
            if value % factor:
                raise ValueError(f"{name} must be a multiple of {factor} (the unet's downsampling), got {value}")
        return size

    def _predict(self, network: Any, sample: torch.Tensor, condition: dict, t: Any, scale: Any) -> torch.Tensor:
        output = spatial_unet_forward(network, sample, condition, t, self.config.micro_batch_size)
        target = self.config.get("prediction_target")
        return epsilon_output(target, self.scheduler.alphas_cumprod, output, sample, t) if target else output

    def _callback_pair(self, conditions: dict) -> None:
        return None  # no "prompt_embeds": a callback may change the latents and the call state

    def _with_callback_pair(self, conditions: dict, pair: Any) -> dict:
        return conditions

    def _generate(
        self, spatial: torch.Tensor, labels: Any, timestep_cond: Any, num_images: int, settings: tuple, call: dict
    ) -> Any:
        """Sample `num_images` outputs per row of `spatial` (N, C, H, W) and return them as the call asked."""
        steps, scale, interval, tensor_inputs = settings
        n = spatial.shape[0] * num_images
        if n > MAX_IMAGES_PER_CALL:
            raise ValueError(f"image x num_images_per_prompt = {n} images; at most {MAX_IMAGES_PER_CALL}")
        check_generators(call["generator"], n)
        method = self._guidance(call["guidance"], interval, call["guidance_scale"], call["guidance_interval"])
        repeat = lambda x: None if x is None else x.repeat_interleave(num_images, dim=0)  # noqa: E731
        cond = {"map": repeat(spatial), "labels": repeat(labels), "timestep_cond": repeat(timestep_cond)}
        null_labels = None if labels is None else torch.full_like(cond["labels"], self.num_classes)
        uncond = {**cond, "map": torch.zeros_like(cond["map"]), "labels": null_labels}
        self._guidance_scale = getattr(method, "guidance_scale", scale)
        self._guidance_rescale = call["guidance_rescale"]
        check_prediction_target(self.config.get("prediction_target"), self.scheduler)
        shape = (n, self.image_channels, *spatial.shape[-2:])
        latents, rows = self._sample(
            shape, steps, method, {"cond": cond, "uncond": uncond}, call["generator"], call["latents"],
            call["callback_on_step_end"], tensor_inputs,
        )  # fmt: skip
        return self._output(latents, call["output_type"], call["return_dict"], rows, n)


def check_image_channels(images: torch.Tensor, channels: int, name: str = "image") -> None:
    """`images` must be (N, channels, H, W), finite, in [-1, 1] (after diffusers' image processor)."""
    if images.ndim != 4 or images.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channel(s) (the model's), got shape {tuple(images.shape)}")
    if not bool(torch.isfinite(images).all()) or float(images.abs().max()) > 1.0 + 1e-6:
        raise ValueError(f"{name} must hold finite values in [0, 1] (PIL images, arrays or tensors as diffusers takes)")
