"""Data sets for training and evaluation: the vendored MNIST digits, any `datasets` data set, image folders."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Features, Image, load_dataset

MNIST_LABEL_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def mnist_npz_path() -> Path:
    """Path of the vendored `mnist-10k.npz` (attribution in `assets/MNIST_README.md`)."""
    return Path(str(resources.files("condiff") / "assets" / "mnist-10k.npz"))


def load_mnist_arrays(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 [N, 28, 28], labels int64 [N]) of the vendored MNIST split "train" or "test"."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    with np.load(mnist_npz_path()) as d:
        keep = d["split"] == split
        return d["images"][keep], d["labels"][keep].astype(np.int64)


def load_mnist(split: str = "train") -> Dataset:
    """The vendored MNIST split as a `datasets.Dataset` with an `image` (PIL) and a `label` (ClassLabel) column."""
    images, labels = load_mnist_arrays(split)
    features = Features({"image": Image(), "label": ClassLabel(names=MNIST_LABEL_NAMES)})
    return Dataset.from_dict({"image": list(images), "label": labels.tolist()}, features=features)


@dataclass
class LabelledImages:
    """A training data set and what the model needs to know about it."""

    dataset: Dataset
    image_column: str
    label_column: str
    label_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


def _check_image_folder(train_data_dir: str) -> None:
    path = Path(train_data_dir)
    if not path.is_dir():
        raise ValueError(f"--train_data_dir must be an existing folder of images, got {train_data_dir!r}")
    for _root, _dirs, files in os.walk(path):
        if any(Path(f).suffix.lower() in IMAGE_EXTENSIONS for f in files):
            return
    raise ValueError(
        f"--train_data_dir {train_data_dir!r} holds no images (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
    )


def load_labelled_images(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_data_dir: str | None = None,
    image_column: str = "image",
    label_column: str = "label",
    split: str = "train",
    cache_dir: str | None = None,
) -> LabelledImages:
    """Load a labelled image data set: a Hub/local `datasets` data set, an image folder, or the vendored MNIST.

    With neither `dataset_name` nor `train_data_dir`, the vendored MNIST split is used. Columns are checked
    before any training work; label names come from a `ClassLabel` column or from the sorted distinct values.
    """
    if dataset_name and train_data_dir:
        raise ValueError("Pass only one of --dataset_name and --train_data_dir, not both")
    if dataset_name:
        dataset = load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir, split=split)
    elif train_data_dir:
        _check_image_folder(train_data_dir)
        dataset = load_dataset("imagefolder", data_dir=train_data_dir, cache_dir=cache_dir, split=split)
    else:
        dataset = load_mnist(split)

    columns = list(dataset.column_names)
    for flag, column in (("--image_column", image_column), ("--label_column", label_column)):
        if column not in columns:
            raise ValueError(f"{flag} {column!r} is not a column of the data set; its columns are {columns}")
    if len(dataset) == 0:
        raise ValueError("the training data set is empty")

    feature = dataset.features[label_column]
    if isinstance(feature, ClassLabel):
        names = list(feature.names)
    else:
        values = sorted(set(dataset[label_column]))
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ValueError(f"--label_column {label_column!r} must hold integer class ids or be a ClassLabel")
        if values[0] < 0:
            raise ValueError(f"--label_column {label_column!r} holds negative class ids: {values[0]}")
        names = [str(i) for i in range(values[-1] + 1)]
    return LabelledImages(dataset, image_column, label_column, names)


def pil_to_model_tensor(images: list, resolution: int, channels: int) -> torch.Tensor:
    """PIL images -> float tensor [N, C, H, W] in [-1, 1], resized to `resolution` when needed."""
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for img in images:
        img = img.convert(mode)
        if img.size != (resolution, resolution):
            img = img.resize((resolution, resolution), resample=3)  # bicubic
        arr = np.asarray(img, dtype=np.float32)
        arrays.append(arr[None] if channels == 1 else arr.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(arrays)) / 127.5 - 1.0


def uint8_to_model_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W] or [N, H, W, C] -> float [N, C, H, W] in [-1, 1]."""
    t = torch.from_numpy(np.asarray(images)).float()
    t = t[:, None] if t.ndim == 3 else t.permute(0, 3, 1, 2)
    return t / 127.5 - 1.0
