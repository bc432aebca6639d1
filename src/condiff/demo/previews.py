"""Pictures of sampling: the denoised estimate x0 of every step as images (recorded by a `callback_on_step_end`), the
strip of steps, and grids. Shared by the demo and `condiff generate --steps-strip`.

Light to import (the CLI imports it before parsing): torch and PIL are imported inside the functions.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

StepHook = Callable[[int, int, list], None]  # (step index, number of steps, that step's images)


def image_grid(images: list, cols: int, upscale: int = 1) -> Any:
    """Paste PIL images row by row into a grid `cols` wide, zoomed `upscale` times (nearest neighbour)."""
    from PIL import Image

    width, height = images[0].size
    rows = math.ceil(len(images) / cols)
    grid = Image.new(images[0].mode, (cols * width, rows * height))
    for i, image in enumerate(images):
        grid.paste(image, ((i % cols) * width, (i // cols) * height))
    return grid.resize((grid.width * upscale, grid.height * upscale), Image.NEAREST)


def square_grid(images: list, upscale: int = 1) -> Any:
    """`image_grid` as close to square as the count allows."""
    return image_grid(images, math.ceil(math.sqrt(len(images))), upscale)


def to_pil_images(x0: Any) -> list:
    """[-1, 1] images (N, C, H, W) -> PIL images, quantized exactly as the pipelines' "pil" output."""
    from condiff.pipelines.outputs import to_output_type

    return to_output_type(x0.detach().float().clamp(-1, 1), "pil")


class StepRecorder:
    """A `callback_on_step_end` that keeps each step's denoised estimate (the pipeline's "denoised" callback tensor,
    decoded through the VAE for latent pipelines) as PIL images, at most `max_images` per step, and calls `on_step`
    with them. Setting `stop` interrupts the call after the current step (`pipe._interrupt`)."""

    tensor_inputs = ("denoised",)

    def __init__(self, on_step: StepHook | None = None, max_images: int | None = None):
        self.frames: list[list] = []  # one list of images per finished step
        self.num_steps = 0
        self.on_step, self.max_images = on_step, max_images
        self.stop = threading.Event()

    def __call__(self, pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
        import torch

        x0 = tensors["denoised"][: self.max_images]
        if hasattr(pipe, "decode_latents"):  # a latent pipeline: x0 is in the VAE's latent space
            with torch.no_grad():
                x0 = pipe.decode_latents(x0)
        images = to_pil_images(x0)
        self.frames.append(images)
        self.num_steps = pipe.num_timesteps
        if self.on_step is not None:
            self.on_step(step, self.num_steps, images)
        if self.stop.is_set():
            pipe._interrupt = True
        return {}

    def call_kwargs(self) -> dict[str, Any]:
        """The pipeline arguments that install this recorder."""
        return {"callback_on_step_end": self, "callback_on_step_end_tensor_inputs": list(self.tensor_inputs)}


def strip_columns(num_steps: int, max_tiles: int | None = None) -> list[int]:
    """The steps a strip shows: all of them, or `max_tiles` evenly spaced ones ending with the last."""
    if num_steps <= 0:
        return []
    if max_tiles is None or num_steps <= max_tiles:
        return list(range(num_steps))
    if max_tiles == 1:
        return [num_steps - 1]
    return sorted({round(i * (num_steps - 1) / (max_tiles - 1)) for i in range(max_tiles)})


def steps_strip(frames: list[list], max_tiles: int | None = None, upscale: int = 1, rows: int | None = None) -> Any:
    """The denoising strip: one column per step (every step, or `max_tiles` evenly spaced ones ending with the
    last), one row per image (the first `rows`), each tile the step's denoised estimate x0."""
    if not frames:
        raise ValueError("no denoising steps were recorded")
    columns = strip_columns(len(frames), max_tiles)
    n = min(len(f) for f in frames) if rows is None else min(rows, *(len(f) for f in frames))
    tiles = [frames[step][row] for row in range(n) for step in columns]
    return image_grid(tiles, len(columns), upscale)
