"""Flags and loading of labelled image data, shared by the image tasks (CFG, and later the unconditional model
and the noise-aware classifier): the vendored MNIST, any `datasets` data set, or an image folder."""

from __future__ import annotations

import argparse

from condiff.engine.args import require_choice, require_int
from condiff.engine.task import Task
from condiff.options import BAD_IMAGE_POLICIES

MAX_RESOLUTION = 4096


def add_image_data_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset_name", default=None, help="a `datasets` name or local data set folder (default: MNIST)")
    g.add_argument("--dataset_config_name", default=None)
    g.add_argument("--train_data_dir", default=None, help="an image folder (imagefolder layout: one folder per class)")
    g.add_argument("--image_column", default="image")
    g.add_argument("--label_column", default="label")
    g.add_argument("--cache_dir", default=None)
    g.add_argument("--max_train_samples", type=int, default=None, help="use only the first N examples")
    g.add_argument("--resolution", type=int, default=28)
    g.add_argument(
        "--on_bad_image",
        choices=BAD_IMAGE_POLICIES,
        default="error",
        help="undecodable (corrupt, truncated) images: stop with an error naming them (default) or skip and count them",
    )


def check_image_data_args(args: argparse.Namespace) -> None:
    require_int("resolution", args.resolution, 1, MAX_RESOLUTION)
    require_int("max_train_samples", args.max_train_samples, allow_none=True)
    require_choice("on_bad_image", args.on_bad_image, BAD_IMAGE_POLICIES)


def describe_image_data(args: argparse.Namespace) -> str:
    if args.dataset_name:
        return args.dataset_name
    if args.train_data_dir:
        return f"image folder {args.train_data_dir}"
    return "mnist-10k (9,000-image train split vendored in condiff)"


class LabelledImageData:
    """The data set the flags name, its first `--max_train_samples` rows, with undecodable images checked."""

    def __init__(self, args: argparse.Namespace, labelled: bool = True):
        from condiff.data import check_images, load_labelled_images

        self.args, self.label_column = args, args.label_column if labelled else None
        data = load_labelled_images(
            args.dataset_name,
            args.dataset_config_name,
            args.train_data_dir,
            args.image_column,
            self.label_column,
            cache_dir=args.cache_dir,
        )
        dataset = data.dataset
        if args.max_train_samples:
            dataset = dataset.select(range(min(args.max_train_samples, len(dataset))))
        self.dataset, check = check_images(dataset, args.image_column, args.on_bad_image)
        self.channels, self.num_bad = check.channels, len(check.bad)
        self.label_names = data.label_names

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def collate(self, rows: list[dict]) -> dict:
        """{"images": (N, C, H, W) in [-1, 1], "labels": (N,) int64 (-1 without labels)}."""
        import torch

        from condiff.data import pil_to_model_tensor

        images = pil_to_model_tensor([r[self.args.image_column] for r in rows], self.args.resolution, self.channels)
        labels = torch.tensor([int(r[self.label_column]) if self.label_column else -1 for r in rows], dtype=torch.long)
        return {"images": images, "labels": labels}


class ImageDataTask(Task):
    """A task trained on labelled image data: the data flags and checks, `dataset`, `collate` (batches of
    {"images", "labels"}), the card's data description and the count of skipped bad images. Subclasses call
    `super().add_arguments(p)` and `super().check_args()` before their own."""

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        add_image_data_arguments(p)

    def check_args(self) -> None:
        check_image_data_args(self.args)

    def dataset(self):
        self.data = LabelledImageData(self.args)
        return self.data.dataset

    def collate(self, rows: list[dict]) -> dict:
        return self.data.collate(rows)

    def held_out(self, n: int):
        """(images, labels, name) of n held-out images: the MNIST test split for the default data, else the first
        training rows (named so in reports)."""
        from condiff.data import load_mnist_arrays, uint8_to_model_tensor

        a = self.args
        if not a.dataset_name and not a.train_data_dir:
            images, labels = load_mnist_arrays("test")
            return uint8_to_model_tensor(images[:n]), labels[:n], "mnist-10k test split"
        batch = self.collate([self.data.dataset[i] for i in range(min(n, len(self.data.dataset)))])
        return batch["images"], batch["labels"], "training rows"

    def data_description(self) -> str:
        return describe_image_data(self.args)

    def summary_fields(self) -> dict:
        return {"skipped_bad_images": self.data.num_bad}
