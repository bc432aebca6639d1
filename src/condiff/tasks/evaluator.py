"""The evaluator task: the clean-image MNIST classifier behind conditional accuracy and the Frechet distance.

Cross-entropy on the vendored train split with light random-affine augmentation; validation and the export
report its test-split accuracy. Exported as a `MnistClassifier` component (config + safetensors, `metrics.json`)
with a model card.
"""

from __future__ import annotations

import json
from pathlib import Path

from condiff.engine.task import Export, Modules, Task


class EvaluatorTask(Task):
    name = "evaluator"
    description = "Train the MNIST evaluator (a small CNN classifier of clean digits) on the vendored train split."
    # The settings of the shipped evaluator: about 12 epochs of 71 steps, no EMA (BatchNorm statistics).
    defaults = {
        "train_batch_size": 128,
        "num_epochs": 12,
        "learning_rate": 3e-3,
        "lr_warmup_steps": 170,
        "use_ema": False,
        "max_grad_norm": 5.0,
        "validation_steps": 200,
        "checkpointing_steps": 200,
    }

    @classmethod
    def add_arguments(cls, p) -> None:
        g = p.add_argument_group("evaluator")
        g.add_argument("--no_augment", action="store_true", help="disable the random-affine augmentation")
        g.add_argument(
            "--input_resolution", type=int, default=None,
            help="see only this resolution: images area-downsampled to it and bicubic-upsampled back (train and test); "
            "the information limit of super-resolution from that size",
        )  # fmt: skip

    def check_args(self) -> None:
        from condiff.engine.args import require_int

        require_int("input_resolution", self.args.input_resolution, 1, 28, allow_none=True)

    def seen(self, images):
        """What the classifier sees of [-1, 1] 28x28 images: all of them, or their `--input_resolution` version."""
        from condiff.pipelines.spatial_conditions import downsample_area, upsample_bicubic

        size = self.args.input_resolution
        return images if size is None else upsample_bicubic(downsample_area(images, size), images.shape[-2:])

    def dataset(self):
        import torch

        from condiff.data import load_mnist_arrays

        images, labels = load_mnist_arrays("train")
        return torch.utils.data.TensorDataset(torch.from_numpy(images), torch.from_numpy(labels).long())

    def collate(self, rows: list) -> dict:
        import torch

        from condiff.data import uint8_to_model_tensor

        images = uint8_to_model_tensor(torch.stack([r[0] for r in rows]).numpy())
        return {"images": images, "labels": torch.stack([r[1] for r in rows])}

    def build(self) -> Modules:
        from condiff.evaluator import MnistClassifier

        return Modules(trained={"classifier": MnistClassifier()})

    def loss(self, modules: Modules, batch: dict, generator):
        import torch.nn.functional as F

        from condiff.evaluator import random_affine

        images = batch["images"] if self.args.no_augment else random_affine(batch["images"], generator=generator)
        images = self.seen(images)
        return F.cross_entropy(modules.classifier(images), batch["labels"]), {}

    def test_accuracy(self, modules: Modules) -> float:
        from condiff.data import load_mnist_arrays, uint8_to_model_tensor
        from condiff.evaluator import classifier_accuracy

        images, labels = load_mnist_arrays("test")
        return classifier_accuracy(modules.classifier, self.seen(uint8_to_model_tensor(images)), labels)

    def validate(self, modules: Modules, step: int, output_dir: Path) -> dict:
        return {"test_accuracy": self.test_accuracy(modules)}

    def export(self, modules: Modules, folder: Path) -> Export:
        model = modules.classifier
        model.save_pretrained(str(folder), safe_serialization=True)
        metrics = {
            "test_accuracy": self.test_accuracy(modules),
            "test_samples": 1000,
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "augment": not self.args.no_augment,
            "input_resolution": self.args.input_resolution or 28,
        }
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        fields = {"test_accuracy": f"{metrics['test_accuracy']:.2%}", "num_parameters": metrics["num_parameters"]}
        return Export("mnist_evaluator.md", fields, ["image-classification", "mnist"], "image-classification")

    def data_description(self) -> str:
        return "mnist-10k (9,000-image train split vendored in condiff; accuracy on its 1,000-image test split)"
