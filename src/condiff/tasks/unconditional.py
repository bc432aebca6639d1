"""The unconditional denoiser task: a plain `UNet2DModel` (no class embedding) trained with the denoising loss.

Exported as diffusers' own `DDPMPipeline` with condiff's default sampler (DPM-Solver++ with x0 clipped), so a user of
diffusers samples it with `DDPMPipeline.from_pretrained(folder)(batch_size=16)`; classifier guidance steers its UNet.
Labels in the data, if any, are not used. Heavy imports live inside the methods.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from condiff.engine.args import require_int
from condiff.engine.task import Export, Modules
from condiff.tasks.denoiser import (
    add_denoiser_arguments,
    add_grid_size_argument,
    build_denoiser,
    check_denoiser_args,
    learns_variance,
    network_target,
    plan_grid_size,
    save_grid,
)
from condiff.tasks.image_data import ImageDataTask

FULL_GRID, GRID_UNIT = 64, 8  # at most 64 images, 8 per 100 training steps


class UnconditionalTask(ImageDataTask):
    name = "unconditional"
    description = "Train an unconditional diffusion model (a plain UNet2DModel, exported as a diffusers DDPMPipeline)."

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        super().add_arguments(p)
        add_denoiser_arguments(p, parametrisations=True)
        add_grid_size_argument(p.add_argument_group("validation"), "validation_images", FULL_GRID, GRID_UNIT, "grid")

    def check_args(self) -> None:
        super().check_args()
        check_denoiser_args(self.args)
        if network_target(self.args):
            raise ValueError(
                f"--prediction_type {self.args.prediction_type} is for the cfg task: the unconditional task exports "
                "diffusers' DDPMPipeline, whose schedulers sample epsilon, v_prediction and sample predictions only"
            )
        require_int("validation_images", self.args.validation_images, 1, 4096, allow_none=True)

    def plan(self, total_steps: int) -> None:
        plan_grid_size(self.args, "validation_images", total_steps, FULL_GRID, GRID_UNIT)

    def build(self) -> Modules:
        unet, self.noise_scheduler = build_denoiser(self.args, self.data.channels, None)
        return Modules(trained={"unet": unet})

    def loss(self, modules: Modules, batch: dict, generator):
        from condiff.diffusion import denoising_loss

        a, images = self.args, batch["images"]
        return denoising_loss(modules.unet, self.noise_scheduler, images, generator, vlb_weight=a.vlb_weight), {}

    def pipeline(self, modules: Modules):
        """diffusers' `DDPMPipeline` with condiff's default sampler; for a UNet that learns its variance, ancestral
        DDPM with that variance (diffusers' DPM-Solver would misread a 1-channel image's two output channels; condiff's
        pipelines split them for every scheduler)."""
        from diffusers import DDPMPipeline

        from condiff.models import default_sampling_scheduler, scheduler_for

        if learns_variance(self.args):
            return DDPMPipeline(unet=modules.unet, scheduler=scheduler_for("ddpm", self.noise_scheduler.config))
        return DDPMPipeline(unet=modules.unet, scheduler=default_sampling_scheduler(self.noise_scheduler))

    def sample_grid(self, modules: Modules, path: Path):
        """`--validation_images` samples with a fixed seed, as a near-square grid."""
        import math

        import torch

        pipe = self.pipeline(modules)
        pipe.set_progress_bar_config(disable=True)
        n = self.args.validation_images or FULL_GRID
        images = pipe(
            batch_size=n,
            num_inference_steps=self.args.validation_inference_steps,
            generator=torch.Generator(device="cpu").manual_seed(0),
        ).images
        rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
        return save_grid(images, rows, path)

    def validate(self, modules: Modules, step: int, output_dir: Path) -> dict:
        return {"validation": self.sample_grid(modules, Path(output_dir) / "samples" / f"step-{step:07d}.png")}

    def export(self, modules: Modules, folder: Path) -> Export:
        from condiff.hub import count_unet_parameters

        a = self.args
        self.pipeline(modules).save_pretrained(folder, safe_serialization=True)
        self.sample_grid(modules, folder / "samples" / "final.png")
        fields = {
            "sample_grid": "samples/final.png",
            "inference_steps": a.validation_inference_steps,
            "num_parameters": f"{count_unet_parameters(folder) / 1e6:.2f}M",
            "prediction_type": a.prediction_type + (", learned variance (learned_range)" if learns_variance(a) else ""),
            "noise_schedule": a.noise_schedule,
            "num_train_timesteps": a.num_train_timesteps,
        }
        return Export("unconditional.md", fields, ["unconditional-image-generation"], "unconditional-image-generation")
