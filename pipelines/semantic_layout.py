"""SemanticLayoutPipeline: a map that says which class goes where in, an image that follows it out, by a fully
convolutional diffusion model conditioned on the one-hot map concatenated to its input (latent diffusion's semantic
synthesis). Canvases larger than the training images work: draw the map at that size.

Hub-loadable: this file and its siblings import only torch and diffusers (and numpy, Pillow, the standard library), so
`DiffusionPipeline.from_pretrained(folder, custom_pipeline=folder, trust_remote_code=True)` works without condiff.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import UNet2DConditionModel
from diffusers.schedulers import SchedulerMixin

from .checks import check_positive_int, resolve_num_images, short_repr
from .denoising import CondiffPipeline, StepCallback
from .locking import serialized_call
from .outputs import CondiffPipelineOutput
from .spatial import MAX_CANVAS_SIDE, SpatialConditionPipeline
from .spatial_conditions import one_hot_layout

# isort: split
# diffusers copies only the sibling files that a local custom-pipeline file imports itself (see class_conditional.py)
from .callbacks import step_callback  # noqa: F401
from .config_defaults import checked_defaults  # noqa: F401
from .corrector import check_corrector_arguments  # noqa: F401
from .diffusers_guiders import DiffusersGuidance  # noqa: F401
from .guidance import check_guidance_arguments  # noqa: F401
from .guiders import Guidance  # noqa: F401
from .labels import parse_labels  # noqa: F401
from .networks import micro_batched  # noqa: F401
from .saved_folder import check_saved_folder  # noqa: F401
from .schedules import check_schedule  # noqa: F401
from .variance import split_variance  # noqa: F401
from .weights import refusing_unsafe_pickles  # noqa: F401


def layout_ids(image: Any) -> torch.Tensor:
    """A layout map (PIL "L"/"P" image, integer numpy array or tensor of shape (H, W), (N, H, W) or (N, 1, H, W), or a
    list of (H, W) maps) as an (N, H, W) int64 tensor."""
    if image is None:
        raise ValueError("image is required: the layout map(s), integer category ids per cell")
    items = image if isinstance(image, list) else [image]
    if not items:
        raise ValueError("image is an empty list")
    arrays = []
    for item in items:
        if isinstance(item, PIL.Image.Image):  # its pixel values are the ids
            if item.mode not in ("L", "P", "I"):
                raise ValueError(f"image: a PIL layout map must be mode 'L', 'P' or 'I' (ids), got {item.mode!r}")
            item = np.asarray(item)
        array = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
        if array.dtype.kind not in "iuf" or (array.dtype.kind == "f" and not np.all(np.isfinite(array))):
            raise ValueError(f"image must hold integer category ids, got {short_repr(item)}")
        if array.dtype.kind == "f" and not np.all(array == np.round(array)):
            raise ValueError("image must hold integer category ids; it holds fractional values")
        arrays.append(array.astype(np.int64))
    if len({a.shape for a in arrays}) > 1:
        raise ValueError(f"image: the maps of a list must share one size, got {sorted({a.shape for a in arrays})}")
    ids = torch.from_numpy(np.stack(arrays) if isinstance(image, list) else arrays[0])
    ids = ids[None] if ids.ndim == 2 else ids[:, 0] if ids.ndim == 4 and ids.shape[1] == 1 else ids
    if ids.ndim != 3 or min(ids.shape) == 0:
        raise ValueError(f"image must be a map of shape (H, W), (N, H, W) or (N, 1, H, W), got {tuple(ids.shape)}")
    return ids


class SemanticLayoutPipeline(SpatialConditionPipeline):
    r"""Image generation from a semantic layout map (category ids per cell: classes 0..K-1, background K).

    Parameters:
        unet ([`UNet2DConditionModel`] without cross-attention): `in_channels` = image channels + K + 1 (the one-hot
            map); optionally `num_class_embeds` = K + 1 for a class label as well.
        scheduler ([`SchedulerMixin`]): any diffusers scheduler.
        id2label (`dict[int, str]`, *optional*): the map's class names.
        layout_cell (`int`): output pixels per map cell at the default size (the map's downsampling in training).
        image_channels, prediction_target: as in `SuperResolutionPipeline` (a UNet that learns its variance, or
            predicts the mean or the score).
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
        id2label: dict | None = None,
        layout_cell: int = 4,
        default_num_inference_steps: int = 20,
        default_guidance_scale: float = 1.0,
        default_guidance_interval: tuple | list = (0.0, 1.0),
        micro_batch_size: int | None = None,
        image_channels: int | None = None,
        prediction_target: str | None = None,
    ):
        super().__init__()
        check_positive_int("layout_cell", layout_cell, MAX_CANVAS_SIDE)
        self._register_spatial(
            unet, scheduler, id2label, default_num_inference_steps, default_guidance_scale, default_guidance_interval,
            micro_batch_size, layout_cell=int(layout_cell), image_channels=image_channels,
            prediction_target=prediction_target,
        )  # fmt: skip

    @property
    def background_id(self) -> int:
        """The map's background category: the last one-hot channel."""
        return self.condition_channels - 1

    def prepare_layout(self, image: Any) -> torch.Tensor:
        """The map(s) as (N, h, w) int64 ids, every id a class or the background (else refused, naming the ids)."""
        ids = layout_ids(image)
        bad = sorted({int(v) for v in ids.unique() if not 0 <= int(v) <= self.background_id})
        if bad:
            raise ValueError(
                f"image holds unknown category ids {bad[:10]}; allowed: 0..{self.background_id - 1} (classes) and "
                f"{self.background_id} (background)"
            )
        return ids.to(self._execution_device)

    @serialized_call  # schedulers are stateful: concurrent calls on one pipeline take turns (locking.py)
    @torch.inference_mode()
    def __call__(  # long: the documented argument list; the work is in SpatialConditionPipeline
        self,
        image: Any = None,
        label: Any = None,
        num_images_per_prompt: int = 1,
        height: int | None = None,
        width: int | None = None,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        guidance_rescale: float = 0.0,
        guidance_interval: tuple[float, float] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        guidance: Any = None,
    ) -> CondiffPipelineOutput | tuple:
        r"""Generate images that follow the layout map(s) `image`.

        Args:
            image: layout map(s) of category ids (0..K-1 classes, K background): a PIL "L" image, an integer numpy
                array or tensor (H, W) / (N, H, W), or a list of (H, W) maps. Any size: the output is
                `layout_cell` x the map's size unless `height`/`width` say otherwise (the map is resized, nearest).
            label: an optional class label (one or one per map) for a UNet with a class embedding.
            height, width: output size (multiples of the UNet's downsampling, at most 1024).
            guidance_scale: CFG w on the map: 1 = the conditional model alone, 0 = unconditional.
            num_images_per_prompt, num_inference_steps, generator, latents, guidance_rescale, guidance_interval,
            output_type, return_dict, callback_on_step_end, callback_on_step_end_tensor_inputs, guidance: as in
                `SuperResolutionPipeline`.

        Examples:
        ```py
        >>> import numpy as np
        >>> from condiff import SemanticLayoutPipeline, shipped_model_path
        >>> pipe = SemanticLayoutPipeline.from_pretrained(shipped_model_path("layout"))
        >>> layout = np.full((14, 28), 10); layout[3:11, 3:9] = 3; layout[3:11, 17:23] = 7  # a 3 and a 7
        >>> canvas = pipe(image=layout).images[0]  # 56 x 112
        ```
        """
        num_images = resolve_num_images(num_images_per_prompt, None, "num_images_per_prompt")
        settings = self._call_settings(
            num_inference_steps, guidance_scale, guidance_interval, guidance_rescale, output_type,
            callback_on_step_end, callback_on_step_end_tensor_inputs)  # fmt: skip
        ids = self.prepare_layout(image)
        cell = self.config.layout_cell
        size = self.output_size(height, width, (ids.shape[-2] * cell, ids.shape[-1] * cell))
        labels = self.class_ids(label, ids.shape[0])
        spatial = one_hot_layout(ids, self.condition_channels, size).to(self.unet.dtype)
        call = dict(guidance=guidance, guidance_scale=guidance_scale, guidance_interval=guidance_interval,
                    guidance_rescale=guidance_rescale, generator=generator, latents=latents, output_type=output_type,
                    return_dict=return_dict, callback_on_step_end=callback_on_step_end)  # fmt: skip
        return self._generate(spatial, labels, None, num_images, settings, call)


# diffusers' custom-pipeline loader accepts one DiffusionPipeline subclass per file: unbind the shared bases.
del CondiffPipeline, SpatialConditionPipeline
