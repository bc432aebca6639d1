"""Distillation tasks: a frozen CFG teacher (a saved `ClassConditionalDDPMPipeline`) and a trained student that
takes the guidance scale as an input (`condiff.distillation`), trained on the teacher's data noised as in training.

- `guidance_distillation` (Meng et al. 2023): the student matches the teacher's guided prediction; sampled with the
  teacher's scheduler, one branch per step.
- `consistency_distillation` (LCM, Luo et al. 2023): the student is a consistency model of the teacher's guided ODE;
  sampled with `LCMScheduler` in 1-8 steps.

Both export a `ClassConditionalDDPMPipeline` (it detects the guidance input from the UNet's config).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from condiff.engine.args import require_int, require_real
from condiff.engine.task import Export, Modules
from condiff.tasks.denoiser import add_grid_size_argument, class_grid, plan_grid_size
from condiff.tasks.image_data import ImageDataTask

FULL_GRID_PER_CLASS = 8


def load_teacher(folder: str):
    """(teacher pipeline, its UNet frozen in eval mode, the DDPM training schedule of its scheduler's config)."""
    import torch
    from diffusers import DDPMScheduler

    from condiff.pipelines import ClassConditionalDDPMPipeline

    pipe = ClassConditionalDDPMPipeline.from_pretrained(folder, use_safetensors=True)
    unet = pipe.unet.to(memory_format=torch.contiguous_format).eval().requires_grad_(False)
    return pipe, unet, DDPMScheduler.from_config(pipe.scheduler.config)


def trailing_ddim(training_scheduler):
    """The few-step students' sampler: `DDIMScheduler` on the "trailing" grid (its first step at the last training
    timestep), `set_alpha_to_one` (the last step lands on the clean image), the training schedule's clipping."""
    from diffusers import DDIMScheduler

    config = training_scheduler.config
    clip = bool(config.get("clip_sample", True))
    return DDIMScheduler.from_config(config, timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=clip)


class DistillationTask(ImageDataTask):
    """What both distillations share: the teacher, the guidance range and embedding, validation and export."""

    defaults = {"learning_rate": 1e-4, "lr_warmup_steps": 100}
    card_template = "guidance_distilled.md"
    tags: tuple[str, ...] = ()

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        super().add_arguments(p)
        g = p.add_argument_group("teacher and student")
        g.add_argument("--teacher", required=True, help="folder of a saved ClassConditionalDDPMPipeline (CFG teacher)")
        g.add_argument("--guidance_scale_range", type=float, nargs=2, default=[0.0, 6.0], metavar=("LO", "HI"))
        g.add_argument("--guidance_embedding_dim", type=int, default=64, help="the student UNet's time_cond_proj_dim")
        g.add_argument("--p_uncond", type=float, default=0.1, help="rows trained on the null class")
        g.add_argument("--student_init", default=None, help="a guidance-embedded pipeline folder to start from")
        g.add_argument(
            "--validation_guidance_scale", type=float, default=3.0, help="the grid's w and the exported default scale"
        )
        add_grid_size_argument(g, "validation_images_per_class", FULL_GRID_PER_CLASS)
        g.add_argument("--validation_inference_steps", type=int, default=None, help="default: the student's default")

    def check_args(self) -> None:
        a = self.args
        super().check_args()
        for flag, folder in (("teacher", a.teacher), ("student_init", a.student_init)):
            if folder is not None and not (Path(folder) / "model_index.json").is_file():
                raise ValueError(f"--{flag} {folder!r} is not a saved pipeline folder (no model_index.json)")
        lo, hi = a.guidance_scale_range
        require_real("guidance_scale_range", lo, 0.0)
        if not hi >= lo:
            raise ValueError(f"--guidance_scale_range must be LO <= HI, got {a.guidance_scale_range}")
        require_int("guidance_embedding_dim", a.guidance_embedding_dim, 4, 4096)
        require_real("p_uncond", a.p_uncond, 0.0, 1.0)
        require_real("validation_guidance_scale", a.validation_guidance_scale, lo, hi)
        require_int("validation_images_per_class", a.validation_images_per_class, 1, 64, allow_none=True)
        require_int("validation_inference_steps", a.validation_inference_steps, 1, 1000, allow_none=True)
        trained = self.teacher_config().get("guidance_scale_range")
        if trained is not None and not trained[0] <= lo <= hi <= trained[1]:
            raise ValueError(f"--guidance_scale_range {[lo, hi]} must lie in the teacher's trained range {trained}")

    def teacher_config(self, scheduler: bool = False) -> dict:
        """The teacher folder's model_index.json (or its scheduler's config), read without loading any weights."""
        import json

        name = "scheduler/scheduler_config.json" if scheduler else "model_index.json"
        return json.loads((Path(self.args.teacher) / name).read_text())

    def build(self) -> Modules:
        self.teacher_pipe, teacher, self.noise_scheduler = load_teacher(self.args.teacher)
        if teacher.config.num_class_embeds - 1 != self.data.num_classes:
            raise ValueError(
                f"--teacher has {teacher.config.num_class_embeds - 1} classes, the data {self.data.num_classes}"
            )
        return Modules(trained={"unet": self.initial_student(teacher)}, frozen={"teacher": teacher})

    def initial_student(self, teacher):
        """`--student_init`'s UNet, else the teacher plus a zero-initialised guidance input (a guidance-embedded
        teacher: a copy of it)."""
        import copy

        from condiff.distillation import guidance_embedded_student

        if self.args.student_init is not None:
            _, unet, _ = load_teacher(self.args.student_init)
            if unet.config.get("time_cond_proj_dim") is None:
                raise ValueError(f"--student_init {self.args.student_init!r} does not take the guidance scale as input")
            return unet.train().requires_grad_(True)
        if teacher.config.get("time_cond_proj_dim") is not None:
            return copy.deepcopy(teacher).train().requires_grad_(True)
        return guidance_embedded_student(teacher, self.args.guidance_embedding_dim)

    def sampling_scheduler(self):
        return self.teacher_pipe.scheduler

    def pipeline_defaults(self) -> dict:
        t = self.teacher_pipe.config
        return {
            "default_num_inference_steps": t.default_num_inference_steps,
            "default_guidance_interval": t.default_guidance_interval,
            "default_guidance_scale": self.args.validation_guidance_scale,
        }

    def pipeline(self, modules: Modules):
        """The teacher's pipeline (class names, micro-batch size) around the student."""
        from condiff.pipelines import ClassConditionalDDPMPipeline

        return ClassConditionalDDPMPipeline(
            unet=modules.unet,
            scheduler=self.sampling_scheduler(),
            id2label=self.teacher_pipe.id2label,
            micro_batch_size=self.teacher_pipe.config.get("micro_batch_size"),
            guidance_scale_range=tuple(self.args.guidance_scale_range),
            **self.pipeline_defaults(),
        )

    def plan(self, total_steps: int) -> None:
        plan_grid_size(self.args, "validation_images_per_class", total_steps, FULL_GRID_PER_CLASS)

    def sample_grid(self, modules: Modules, path: Path):
        a = self.args
        return class_grid(
            self.pipeline(modules), self.data.num_classes, a.validation_images_per_class or FULL_GRID_PER_CLASS,
            a.validation_guidance_scale, a.validation_inference_steps, path,
        )  # fmt: skip

    def validate(self, modules: Modules, step: int, output_dir: Path) -> dict:
        return {"validation": self.sample_grid(modules, Path(output_dir) / "samples" / f"step-{step:07d}.png")}

    def card_fields(self) -> dict:
        return {"student_init": self.args.student_init or "the teacher"}

    def loss(self, modules: Modules, batch: dict, generator):
        """The subclass's `distillation_loss` on the shared inputs (student, teacher, data, w range, label dropout)."""
        a = self.args
        loss = self.distillation_loss(modules)(
            modules.unet, modules.teacher, self.loss_scheduler(), batch["images"], batch["labels"],
            self.data.num_classes, tuple(a.guidance_scale_range), a.p_uncond, generator,
        )  # fmt: skip
        return loss, {}

    def loss_scheduler(self):
        return self.noise_scheduler

    def distillation_loss(self, modules: Modules):
        raise NotImplementedError

    def export(self, modules: Modules, folder: Path) -> Export:
        from condiff.hub import count_unet_parameters, stage_pipeline_code

        a = self.args
        pipe = self.pipeline(modules)
        pipe.save_pretrained(folder, safe_serialization=True)
        stage_pipeline_code(folder)
        self.sample_grid(modules, folder / "samples" / "final.png")
        lo, hi = a.guidance_scale_range
        fields = {
            "teacher": a.teacher,
            "class_names": ", ".join(f"{k}={v}" for k, v in enumerate(self.data.label_names)),
            "sample_grid": "samples/final.png",
            "guidance_scale": a.validation_guidance_scale,
            "guidance_scale_range": f"[{lo:g}, {hi:g}]",
            "guidance_embedding_dim": modules.unet.config.time_cond_proj_dim,
            "num_parameters": f"{count_unet_parameters(folder) / 1e6:.2f}M",
            "sampler": type(pipe.scheduler).__name__,
            "inference_steps": pipe.config.default_num_inference_steps,
            "evaluation": "Not evaluated yet: run `condiff evaluate --model <this folder>`.",
        } | self.card_fields()
        tags = ["class-conditional", "classifier-free-guidance", *self.tags]
        return Export(self.card_template, fields, tags, pipeline_tag="unconditional-image-generation")


class GuidanceDistillationTask(DistillationTask):
    name = "guidance_distillation"
    description = "Distil a CFG teacher into a student that takes the guidance scale as an input (one branch/step)."
    tags = ("guidance-distillation",)

    def distillation_loss(self, modules: Modules):
        from condiff.distillation import guidance_distillation_loss

        return guidance_distillation_loss


class ConsistencyDistillationTask(DistillationTask):
    name = "consistency_distillation"
    description = "Distil a CFG teacher into a guidance-embedded consistency model sampled in 1-8 steps (LCM)."
    defaults = DistillationTask.defaults | {"ema_max_decay": 0.999, "guidance_scale_range": [1.0, 6.0]}
    card_template = "consistency_distilled.md"
    tags = ("consistency-distillation", "lcm")

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        super().add_arguments(p)
        g = p.add_argument_group("consistency distillation")
        g.add_argument("--num_ddim_timesteps", type=int, default=50, help="N of the teacher's DDIM skipping schedule")
        g.add_argument("--default_num_inference_steps", type=int, default=4, help="the exported pipeline's default")
        g.add_argument("--target_ema_decay", type=float, default=0.95, help="EMA decay of the target network")

    def check_args(self) -> None:
        super().check_args()
        a = self.args
        require_int("num_ddim_timesteps", a.num_ddim_timesteps, 1, 1000)
        require_int("default_num_inference_steps", a.default_num_inference_steps, 1, a.num_ddim_timesteps)
        require_real("target_ema_decay", a.target_ema_decay, 0.0, 1.0)

    def build(self) -> Modules:
        from diffusers import LCMScheduler

        modules = super().build()
        config = self.noise_scheduler.config
        self.lcm_scheduler = LCMScheduler.from_config(
            config,
            original_inference_steps=self.args.num_ddim_timesteps,
            clip_sample=bool(config.get("clip_sample", True)),
        )
        import copy

        modules.tracked["target"] = copy.deepcopy(modules.unet).requires_grad_(False)
        return modules

    def after_update(self, modules: Modules) -> None:
        from condiff.distillation import update_target

        update_target(modules.target, modules.unet, self.args.target_ema_decay)

    def sampling_scheduler(self):
        return self.lcm_scheduler

    def pipeline_defaults(self) -> dict:
        return super().pipeline_defaults() | {
            "default_num_inference_steps": self.args.default_num_inference_steps,
            "default_guidance_interval": (0.0, 1.0),
        }

    def card_fields(self) -> dict:
        return super().card_fields() | {"num_ddim_timesteps": self.args.num_ddim_timesteps}

    def loss_scheduler(self):
        return self.lcm_scheduler

    def distillation_loss(self, modules: Modules):
        import functools

        from condiff.distillation import consistency_distillation_loss

        return functools.partial(consistency_distillation_loss, target_net=modules.target)


class ProgressiveDistillationTask(DistillationTask):
    """One stage of progressive distillation (Salimans & Ho 2022; with w as input, Meng et al. 2023 stage 2): the
    student samples in N DDIM steps what the teacher samples in 2N. Chain stages by passing each stage's exported
    folder as the next `--teacher` with half the `--student_steps`."""

    name = "progressive_distillation"
    description = "Halve a CFG teacher's DDIM steps: a guidance-embedded student whose one step matches two of it."
    defaults = DistillationTask.defaults | {"guidance_scale_range": [1.0, 6.0]}
    card_template = "progressive_distilled.md"
    tags = ("progressive-distillation",)

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        super().add_arguments(p)
        g = p.add_argument_group("progressive distillation")
        g.add_argument("--student_steps", type=int, default=8, help="N: the student's DDIM steps (teacher: 2N)")

    def check_args(self) -> None:
        super().check_args()
        steps, total = self.args.student_steps, self.teacher_config(scheduler=True)["num_train_timesteps"]
        require_int("student_steps", steps, 1, total)
        if total % steps:  # DDIM's "trailing" grid steps by total // steps: it must land on the teacher's grid
            divisors = [n for n in range(1, total + 1) if total % n == 0]
            raise ValueError(f"--student_steps must divide the {total} training timesteps: one of {divisors}")

    def sampling_scheduler(self):
        return trailing_ddim(self.noise_scheduler)

    def pipeline_defaults(self) -> dict:
        return super().pipeline_defaults() | {
            "default_num_inference_steps": self.args.student_steps,
            "default_guidance_interval": (0.0, 1.0),
        }

    def card_fields(self) -> dict:
        steps = {"student_steps": self.args.student_steps, "teacher_steps": 2 * self.args.student_steps}
        return super().card_fields() | steps

    def distillation_loss(self, modules: Modules):
        import functools

        from condiff.distillation import progressive_distillation_loss

        return functools.partial(progressive_distillation_loss, student_steps=self.args.student_steps)
