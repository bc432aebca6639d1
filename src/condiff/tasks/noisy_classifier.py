"""The noise-aware classifier task: p(y | x_t, t), trained with cross-entropy on x_t = add_noise(x0, eps, t) for t
drawn uniformly from the same noise schedule as the diffusion model (Dhariwal & Nichol 2021).

Exported as a `NoiseAwareClassifier` component (config + safetensors) with its accuracy at each noise level
(`accuracy_by_timestep.json`, a plot, the model card). Accuracy is measured on the vendored MNIST test split when
training on the default data, else on the first training rows (named so in the outputs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from condiff.engine.args import require_int
from condiff.engine.task import Export, Modules
from condiff.options import NOISE_SCHEDULES
from condiff.tasks.denoiser import check_channels
from condiff.tasks.image_data import ImageDataTask

NOISE_FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.999)  # where accuracy is reported


class NoiseAwareClassifierTask(ImageDataTask):
    name = "classifier"
    description = "Train a noise-aware classifier p(y | x_t, t) for classifier guidance."
    defaults = {"train_batch_size": 128}

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        super().add_arguments(p)
        g = p.add_argument_group("classifier")
        g.add_argument("--block_out_channels", type=int, nargs="+", default=[32, 64, 64])
        g.add_argument("--norm_num_groups", type=int, default=8)
        g.add_argument("--noise_schedule", choices=NOISE_SCHEDULES, default="squaredcos_cap_v2")
        g.add_argument("--num_train_timesteps", type=int, default=1000, help="the diffusion model's schedule length")
        g.add_argument("--validation_images", type=int, default=1000, help="images per noise level in validation")
        g.add_argument(
            "--augment",
            action="store_true",
            help="random rotation / scale / shift of the clean images before noising (as the evaluator trains)",
        )

    def check_args(self) -> None:
        a = self.args
        super().check_args()
        for name in ("norm_num_groups", "num_train_timesteps", "validation_images"):
            require_int(name, getattr(a, name))
        check_channels(a.block_out_channels, a.norm_num_groups)

    def build(self) -> Modules:
        from condiff.models import training_scheduler
        from condiff.pipelines.noise_aware_classifier import NoiseAwareClassifier

        a = self.args
        self.noise_scheduler = training_scheduler(a.noise_schedule, "epsilon", a.num_train_timesteps)
        classifier = NoiseAwareClassifier(
            in_channels=self.data.channels,
            num_classes=self.data.num_classes,
            sample_size=a.resolution,
            block_out_channels=tuple(a.block_out_channels),
            norm_num_groups=a.norm_num_groups,
            num_train_timesteps=a.num_train_timesteps,
        )
        return Modules(trained={"classifier": classifier})

    def loss(self, modules: Modules, batch: dict, generator):
        import torch.nn.functional as F

        from condiff.diffusion import noisy_batch
        from condiff.evaluator import random_affine

        images = random_affine(batch["images"], generator=generator) if self.args.augment else batch["images"]
        noisy, _, timesteps = noisy_batch(self.noise_scheduler, images, generator)
        return F.cross_entropy(modules.classifier(noisy, timesteps), batch["labels"]), {}

    def accuracy_table(self, modules: Modules) -> dict:
        from condiff.evaluation.metrics import accuracy_by_noise_level

        images, labels, split = self.held_out(self.args.validation_images)
        last = self.args.num_train_timesteps - 1
        timesteps = sorted({round(f * last) for f in NOISE_FRACTIONS})
        rows = accuracy_by_noise_level(modules.classifier, self.noise_scheduler, images, labels, timesteps)
        return {"split": split, "num_images": len(images), "rows": rows}

    def validate(self, modules: Modules, step: int, output_dir: Path) -> dict:
        rows = self.accuracy_table(modules)["rows"]
        return {f"accuracy_t{r['timestep']:04d}": r["accuracy"] for r in rows}

    def export(self, modules: Modules, folder: Path) -> Export:
        modules.classifier.save_pretrained(str(folder), safe_serialization=True)
        table = self.accuracy_table(modules)
        (folder / "accuracy_by_timestep.json").write_text(json.dumps(table, indent=2) + "\n")
        plotted = plot_accuracy(table, folder / "accuracy_by_timestep.png")
        lines = ["| t | noise fraction | accuracy |", "|---:|---:|---:|"]
        lines += [f"| {r['timestep']} | {r['noise_fraction']:.2f} | {r['accuracy']:.3f} |" for r in table["rows"]]
        fields = {
            "accuracy_table": "\n".join(lines),
            "accuracy_plot": "![accuracy vs t](accuracy_by_timestep.png)" if plotted else "(matplotlib not installed)",
            "split": f"{table['num_images']} images of the {table['split']}",
            "num_parameters": sum(p.numel() for p in modules.classifier.parameters()),
            "noise_schedule": self.args.noise_schedule,
            "num_train_timesteps": self.args.num_train_timesteps,
        }
        return Export("noise_aware_classifier.md", fields, ["image-classification", "classifier-guidance"])


def plot_accuracy(table: dict, path: Path) -> bool:
    """Accuracy against t as a PNG; False (nothing written) without matplotlib (the `plots` extra)."""
    try:
        from condiff.evaluation.reports import pyplot, save_figure

        plt = pyplot()
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["timestep"] for r in table["rows"]], [r["accuracy"] for r in table["rows"]], marker="o")
    ax.set(xlabel="timestep t", ylabel="accuracy", ylim=(0, 1.02), title=f"p(y | x_t, t) on the {table['split']}")
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    return True
