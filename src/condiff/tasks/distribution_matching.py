"""The distribution matching task: a one-step generator of a CFG teacher (`condiff.distribution_matching`).

Two trained networks on one optimizer: the generator (`unet`, exported) and the fake score (`fake_score`), updated in
turns (DMD2's two time-scale rule: K fake-score updates, then one generator update). Each update's loss involves only
one of them, so Adam's per-parameter state keeps them independent; both are checkpointed and EMA-averaged by the
engine, so resume is exact.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from condiff.engine.args import require_int, require_real
from condiff.engine.task import Modules
from condiff.tasks.distillation import DistillationTask, load_teacher, trailing_ddim


class DistributionMatchingTask(DistillationTask):
    name = "distribution_matching"
    description = "Distil a CFG teacher into a one-step generator that takes the guidance scale as an input (DMD)."
    defaults = DistillationTask.defaults | {
        "guidance_scale_range": [1.0, 2.0],
        "learning_rate": 2e-5,
        "lr_warmup_steps": 0,
        "lr_scheduler": "constant",
        "validation_guidance_scale": 1.25,
    }
    card_template = "distribution_matched.md"
    tags = ("distribution-matching-distillation", "dmd", "one-step")

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        super().add_arguments(p)
        g = p.add_argument_group("distribution matching")
        g.add_argument("--fake_updates_per_generator_update", type=int, default=4, help="K of DMD2's update rule")
        g.add_argument("--fake_warmup_steps", type=int, default=0, help="fake-score-only updates before the first G")
        g.add_argument("--dmd_timestep_range", type=float, nargs=2, default=[0.02, 0.98], metavar=("LO", "HI"),
                       help="fractions of the training timesteps where the generator's images are scored")  # fmt: skip
        g.add_argument("--regression_teacher", default=None, help="a few-step student folder: the regression target")
        g.add_argument("--regression_weight", type=float, default=0.25, help="weight of the regression term")

    def check_args(self) -> None:
        super().check_args()
        a = self.args
        if a.student_init is None:
            raise ValueError("--student_init is required: the guidance-embedded student the generator starts from")
        if a.regression_teacher is not None and not (Path(a.regression_teacher) / "model_index.json").is_file():
            raise ValueError(f"--regression_teacher {a.regression_teacher!r} is not a saved pipeline folder")
        require_int("fake_updates_per_generator_update", a.fake_updates_per_generator_update, 0, 100)
        require_int("fake_warmup_steps", a.fake_warmup_steps, 0, 10**7)
        lo, hi = a.dmd_timestep_range
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"--dmd_timestep_range must satisfy 0 <= LO < HI <= 1, got {a.dmd_timestep_range}")
        require_real("regression_weight", a.regression_weight, 0.0)

    def build(self) -> Modules:
        import copy

        from condiff.distillation import guidance_embedded_student

        modules = super().build()  # the teacher (frozen) and the generator, from --student_init
        teacher = modules.teacher
        if teacher.config.get("time_cond_proj_dim") is None:
            fake = guidance_embedded_student(teacher, modules.unet.config.time_cond_proj_dim)
        else:
            fake = copy.deepcopy(teacher)
        modules.trained["fake_score"] = fake.train().requires_grad_(True)
        if self.args.regression_teacher is not None:
            self.regression_pipe, regression, _ = load_teacher(self.args.regression_teacher)
            if regression.config.get("time_cond_proj_dim") is None:
                raise ValueError("--regression_teacher must take the guidance scale as an input (a distilled student)")
            modules.frozen["regression_teacher"] = regression
        return modules

    def sampling_scheduler(self):
        return trailing_ddim(self.noise_scheduler)

    def pipeline_defaults(self) -> dict:
        return super().pipeline_defaults() | {"default_num_inference_steps": 1, "default_guidance_interval": (0.0, 1.0)}

    def card_fields(self) -> dict:
        a = self.args
        return super().card_fields() | {
            "fake_updates_per_generator_update": a.fake_updates_per_generator_update,
            "regression_teacher": a.regression_teacher or "none",
            "regression_weight": a.regression_weight if a.regression_teacher else 0,
        }

    def loss(self, modules: Modules, batch: dict, generator):
        """A fake-score update or a generator update, by `self.global_step` (see `is_generator_turn`)."""
        import torch

        from condiff import distribution_matching as dm

        a, scheduler = self.args, self.noise_scheduler
        clean, null = batch["images"], self.data.num_classes
        inputs = dm.generator_inputs(clean, batch["labels"], null, a.guidance_scale_range, a.p_uncond, generator)
        noise, w, labels = inputs
        if not dm.is_generator_turn(self.global_step, a.fake_warmup_steps, a.fake_updates_per_generator_update):
            with torch.no_grad():
                images = dm.one_step_sample(modules.unet, scheduler, noise, labels, w)
            return dm.fake_score_loss(modules.fake_score, scheduler, images, labels, w, generator), {"turn": 0.0}
        loss, images = dm.generator_loss(
            modules.unet, modules.fake_score, modules.teacher, scheduler, noise, labels, w, null,
            tuple(a.dmd_timestep_range), generator,
        )  # fmt: skip
        logs = {"turn": 1.0, "dmd_loss": loss.item()}
        if a.regression_teacher is not None and a.regression_weight > 0:
            steps = self.regression_pipe.config.default_num_inference_steps
            target = dm.few_step_sample(modules.regression_teacher, scheduler, noise, labels, w, steps)
            regression = torch.nn.functional.mse_loss(images, target)
            logs["regression_loss"] = regression.item()
            loss = loss + a.regression_weight * regression
        return loss, logs
