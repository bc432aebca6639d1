"""The class-conditional CFG task: a `UNet2DModel` with a learned null class, trained with label dropout.

Exported as a `ClassConditionalDDPMPipeline` (weights, DPM-Solver++ default scheduler, class names, and the
Hub-loadable pipeline code) with a model card. Heavy imports live inside the methods: `--help` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from condiff.engine.args import require_int, require_real
from condiff.engine.task import Export, Modules
from condiff.tasks.denoiser import (
    add_denoiser_arguments,
    add_grid_size_argument,
    build_denoiser,
    check_denoiser_args,
    class_grid,
    network_target,
    plan_grid_size,
)
from condiff.tasks.image_data import ImageDataTask

FULL_GRID_PER_CLASS = 8


class CFGTask(ImageDataTask):
    name = "cfg"
    description = "Train a class-conditional diffusion model with classifier-free guidance (label dropout)."

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        super().add_arguments(p)
        add_denoiser_arguments(p, parametrisations=True)
        g = p.add_argument_group("classifier-free guidance")
        g.add_argument("--p_uncond", type=float, default=0.1, help="probability of replacing a label by the null class")
        add_grid_size_argument(g, "validation_images_per_class", FULL_GRID_PER_CLASS)
        g.add_argument("--validation_guidance_scale", type=float, default=3.0)

    def check_args(self) -> None:
        from condiff.pipelines.checks import MAX_IMAGES_PER_CALL

        a = self.args
        super().check_args()
        check_denoiser_args(a)
        require_real("p_uncond", a.p_uncond, 0.0, 1.0)
        require_int("validation_images_per_class", a.validation_images_per_class, 1, MAX_IMAGES_PER_CALL, True)
        require_real("validation_guidance_scale", a.validation_guidance_scale, 0.0)
        self.max_images_per_call = MAX_IMAGES_PER_CALL

    def dataset(self):
        dataset = super().dataset()
        per_class = self.args.validation_images_per_class or FULL_GRID_PER_CLASS
        if per_class * self.data.num_classes > self.max_images_per_call:
            raise ValueError(
                f"--validation_images_per_class {per_class} x {self.data.num_classes} "
                f"classes exceeds the pipeline's {self.max_images_per_call} images per call"
            )
        return dataset

    def plan(self, total_steps: int) -> None:
        plan_grid_size(self.args, "validation_images_per_class", total_steps, FULL_GRID_PER_CLASS)

    def build(self) -> Modules:
        from condiff.pipelines.networks import unet_extra_inputs

        unet, self.noise_scheduler = build_denoiser(self.args, self.data.channels, self.data.num_classes)
        self.unet_inputs = unet_extra_inputs(unet)  # read here: the engine may wrap the UNet (DDP) afterwards
        return Modules(trained={"unet": unet})

    def loss(self, modules: Modules, batch: dict, generator):
        from condiff.diffusion import denoising_loss, drop_labels

        labels = drop_labels(batch["labels"], self.data.num_classes, self.args.p_uncond, generator)
        images, unet = batch["images"], modules.unet
        loss = denoising_loss(
            unet, self.noise_scheduler, images, generator, target=network_target(self.args),
            vlb_weight=self.args.vlb_weight, class_labels=labels, **self.unet_inputs,
        )  # fmt: skip
        return loss, {}

    def pipeline(self, modules: Modules):
        """A `ClassConditionalDDPMPipeline` around the (averaged) UNet, with the default sampling scheduler."""
        from condiff.models import default_sampling_scheduler
        from condiff.options import MICRO_BATCH_SIZE
        from condiff.pipelines import ClassConditionalDDPMPipeline

        scheduler = default_sampling_scheduler(self.noise_scheduler)
        id2label = dict(enumerate(self.data.label_names))
        return ClassConditionalDDPMPipeline(
            unet=modules.unet,
            scheduler=scheduler,
            id2label=id2label,
            micro_batch_size=MICRO_BATCH_SIZE,
            prediction_target=network_target(self.args),
        )

    def sample_grid(self, modules: Modules, path: Path):
        """Every class x `--validation_images_per_class` with a fixed seed, as a grid (rows = classes)."""
        a = self.args
        return class_grid(
            self.pipeline(modules), self.data.num_classes, a.validation_images_per_class or FULL_GRID_PER_CLASS,
            a.validation_guidance_scale, a.validation_inference_steps, path,
        )  # fmt: skip

    def validate(self, modules: Modules, step: int, output_dir: Path) -> dict:
        return {"validation": self.sample_grid(modules, Path(output_dir) / "samples" / f"step-{step:07d}.png")}

    def export(self, modules: Modules, folder: Path) -> Export:
        from condiff.hub import count_unet_parameters, stage_pipeline_code

        a = self.args
        pipe = self.pipeline(modules)
        pipe.save_pretrained(folder, safe_serialization=True)
        stage_pipeline_code(folder)  # loadable without condiff: custom_pipeline=<folder>
        self.sample_grid(modules, folder / "samples" / "final.png")
        fields = {
            "class_names": ", ".join(f"{k}={v}" for k, v in enumerate(self.data.label_names)),
            "sample_grid": "samples/final.png",
            "guidance_scale": a.validation_guidance_scale,
            "inference_steps": a.validation_inference_steps,
            "num_parameters": f"{count_unet_parameters(folder) / 1e6:.2f}M",
            "unet_class": a.architecture,
            "num_classes": self.data.num_classes,
            "prediction_type": a.prediction_type,
            "noise_schedule": a.noise_schedule,
            "num_train_timesteps": a.num_train_timesteps,
            "sampler": type(pipe.scheduler).__name__,
            "evaluation": "Not evaluated yet: run `condiff evaluate --model <this folder>`.",
        }
        tags = ["class-conditional", "classifier-free-guidance"]
        return Export("class_conditional.md", fields, tags, pipeline_tag="unconditional-image-generation")
