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
        g.add_argument("--dmd_weight", type=float, default=1.0,
                       help="weight of the distribution matching loss (0: regression only, no fake score)")  # fmt: skip
        g.add_argument("--regression_teacher", default=None, help="a few-step student folder: the regression target")
        g.add_argument("--regression_pairs", default=None,
                       help="a .safetensors of teacher ODE pairs (noise, labels, w, images; `teacher_ode_pairs`): "
                       "the regression target instead of --regression_teacher")  # fmt: skip
        g.add_argument("--regression_weight", type=float, default=0.25, help="weight of the regression term")
        g.add_argument("--gan_generator_weight", type=float, default=0.0, help="DMD2's GAN loss weight in G's loss")
        g.add_argument("--gan_discriminator_weight", type=float, default=0.0,
                       help="weight of the GAN classifier's loss in the fake score's (> 0 adds the head)")  # fmt: skip

    def check_args(self) -> None:
        super().check_args()
        a = self.args
        if a.student_init is None:
            raise ValueError("--student_init is required: the guidance-embedded student the generator starts from")
        if a.regression_teacher is not None and not (Path(a.regression_teacher) / "model_index.json").is_file():
            raise ValueError(f"--regression_teacher {a.regression_teacher!r} is not a saved pipeline folder")
        if a.regression_pairs is not None and a.regression_teacher is not None:
            raise ValueError("give one regression target: --regression_teacher or --regression_pairs")
        if a.regression_pairs is not None and not Path(a.regression_pairs).is_file():
            raise ValueError(f"--regression_pairs {a.regression_pairs!r}: no such file")
        require_real("dmd_weight", a.dmd_weight, 0.0)
        if a.dmd_weight == 0 and (a.regression_weight == 0 or not (a.regression_teacher or a.regression_pairs)):
            raise ValueError("--dmd_weight 0 leaves nothing to train: give a regression target and --regression_weight")
        require_int("fake_updates_per_generator_update", a.fake_updates_per_generator_update, 0, 100)
        require_int("fake_warmup_steps", a.fake_warmup_steps, 0, 10**7)
        lo, hi = a.dmd_timestep_range
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"--dmd_timestep_range must satisfy 0 <= LO < HI <= 1, got {a.dmd_timestep_range}")
        require_real("regression_weight", a.regression_weight, 0.0)
        require_real("gan_generator_weight", a.gan_generator_weight, 0.0)
        require_real("gan_discriminator_weight", a.gan_discriminator_weight, 0.0)
        if a.gan_generator_weight > 0 and a.gan_discriminator_weight == 0:
            raise ValueError("--gan_generator_weight needs --gan_discriminator_weight > 0 (the head must be trained)")

    def build(self) -> Modules:
        import copy

        from condiff.distillation import guidance_embedded_student

        modules = super().build()  # the teacher (frozen) and the generator, from --student_init
        self.load_regression_target(modules)
        if not self.uses_fake_score:
            return modules
        teacher = modules.teacher
        if teacher.config.get("time_cond_proj_dim") is None:
            fake = guidance_embedded_student(teacher, modules.unet.config.time_cond_proj_dim)
        else:
            fake = copy.deepcopy(teacher)
        modules.trained["fake_score"] = fake.train().requires_grad_(True)
        if self.args.gan_discriminator_weight > 0:
            from condiff.distribution_matching import DiscriminatorHead

            config = fake.config
            modules.trained["discriminator"] = DiscriminatorHead(config.block_out_channels[-1], config.norm_num_groups)
        return modules

    @property
    def uses_fake_score(self) -> bool:
        return self.args.dmd_weight > 0 or self.args.gan_generator_weight > 0

    def load_regression_target(self, modules: Modules) -> None:
        """--regression_teacher (a frozen module) or --regression_pairs (tensors, checked against the data)."""
        a = self.args
        if a.regression_teacher is not None:
            self.regression_pipe, regression, _ = load_teacher(a.regression_teacher)
            if regression.config.get("time_cond_proj_dim") is None:
                raise ValueError("--regression_teacher must take the guidance scale as an input (a distilled student)")
            modules.frozen["regression_teacher"] = regression
        self.pairs = None
        if a.regression_pairs is not None:
            from safetensors.torch import load_file

            self.pairs = load_file(a.regression_pairs)
            expected = (modules.unet.config.in_channels, a.resolution, a.resolution)
            if set(self.pairs) != {"noise", "labels", "w", "images"} or self.pairs["images"].shape[1:] != expected:
                raise ValueError(f"--regression_pairs {a.regression_pairs!r} must hold noise, labels, w and images "
                                 f"of shape (N, {', '.join(map(str, expected))})")  # fmt: skip

    def sampling_scheduler(self):
        return trailing_ddim(self.noise_scheduler)

    def pipeline_defaults(self) -> dict:
        return super().pipeline_defaults() | {"default_num_inference_steps": 1, "default_guidance_interval": (0.0, 1.0)}

    def card_fields(self) -> dict:
        return super().card_fields() | {"objective": self.objective()}

    def objective(self) -> str:
        """The card's one-paragraph account of what the generator was trained with."""
        a, parts = self.args, []
        if self.uses_fake_score:
            parts.append(
                f"distribution matching (weight {a.dmd_weight:g}): the difference of the teacher's CFG estimate and "
                "a fake score's, trained on the generator's own samples "
                f"({a.fake_updates_per_generator_update} fake-score updates per generator update), at noised copies "
                "of its samples"
            )
        if a.gan_generator_weight > 0:
            parts.append(f"DMD2's GAN term on the fake score's bottleneck (weight {a.gan_generator_weight:g})")
        target = a.regression_teacher and f"the few-step student `{a.regression_teacher}` from the same noise"
        target = target or (a.regression_pairs and "the teacher's deterministic ODE samples from the same noise")
        if target and a.regression_weight > 0:
            parts.append(f"regression (MSE, weight {a.regression_weight:g}) onto {target}")
        return "; ".join(parts) + "."

    def loss(self, modules: Modules, batch: dict, generator):
        """A fake-score update or a generator update, by `self.global_step` (see `is_generator_turn`)."""
        import torch

        from condiff import distribution_matching as dm

        a, scheduler = self.args, self.noise_scheduler
        clean, null = batch["images"], self.data.num_classes
        inputs = dm.generator_inputs(clean, batch["labels"], null, a.guidance_scale_range, a.p_uncond, generator)
        noise, w, labels = inputs
        head = modules.trained.get("discriminator")
        turn = dm.is_generator_turn(self.global_step, a.fake_warmup_steps, a.fake_updates_per_generator_update)
        if self.uses_fake_score and not turn:
            with torch.no_grad():
                images = dm.one_step_sample(modules.unet, scheduler, noise, labels, w)
            loss, logs = dm.fake_score_loss(
                modules.fake_score, scheduler, images, labels, w, generator, head, clean, a.gan_discriminator_weight
            )
            return loss, {"turn": 0.0, **logs}
        loss, logs, images = clean.new_zeros(()), {}, None
        if self.uses_fake_score:
            fake_score = getattr(modules.fake_score, "module", modules.fake_score)  # no DDP: it gets no gradient here
            matching, images, logs = dm.generator_loss(
                modules.unet, fake_score, modules.teacher, scheduler, noise, labels, w, null,
                tuple(a.dmd_timestep_range), generator, None if head is None else getattr(head, "module", head),
                a.gan_generator_weight,
            )  # fmt: skip
            loss = a.dmd_weight * matching
        if a.regression_weight > 0 and (a.regression_teacher or self.pairs is not None):
            regression = self.regression_loss(modules, noise, labels, w, images, generator)
            loss, logs["regression_loss"] = loss + a.regression_weight * regression, regression.item()
        return loss, {"turn": 1.0, **logs}

    def regression_loss(self, modules: Modules, noise, labels, w, images, generator):
        """MSE of the generator's images against the regression target: the few-step student's image from the same
        noise, or a batch of the teacher's ODE pairs (drawn from `generator`)."""
        import torch
        import torch.nn.functional as F

        from condiff import distribution_matching as dm

        scheduler = self.noise_scheduler
        if self.pairs is None:
            steps = self.regression_pipe.config.default_num_inference_steps
            target = dm.few_step_sample(modules.regression_teacher, scheduler, noise, labels, w, steps)
            images = dm.one_step_sample(modules.unet, scheduler, noise, labels, w) if images is None else images
            return F.mse_loss(images, target)
        index = torch.randint(0, len(self.pairs["w"]), (noise.shape[0],), generator=generator, device=noise.device)
        pair = {k: v[index.cpu()].to(noise.device) for k, v in self.pairs.items()}
        generated = dm.one_step_sample(modules.unet, scheduler, pair["noise"], pair["labels"], pair["w"])
        return F.mse_loss(generated, pair["images"])
