"""Data sets for training and evaluation: the vendored MNIST digits, any `datasets` data set, image folders."""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Features, Image, Value, load_dataset

from condiff.options import BAD_IMAGE_POLICIES, IMAGE_SUFFIXES  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

MNIST_LABEL_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


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
    label_column: str | None
    label_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


def _check_image_folder(train_data_dir: str) -> None:
    path = Path(train_data_dir)
    if not path.is_dir():
        raise ValueError(f"--train_data_dir must be an existing folder of images, got {train_data_dir!r}")
    found = False
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                raw = os.fsencode(os.path.join(root, name))
                raise ValueError(
                    f"--train_data_dir: the name {raw!r} is not valid UTF-8; folder names are class names and must "
                    "be text: rename it"
                ) from None
        found = found or any(Path(f).suffix.lower() in IMAGE_SUFFIXES for f in files)
    if found:
        return
    raise ValueError(f"--train_data_dir {train_data_dir!r} holds no images (looked for {', '.join(IMAGE_SUFFIXES)})")


def load_labelled_images(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_data_dir: str | None = None,
    image_column: str = "image",
    label_column: str | None = "label",
    split: str = "train",
    cache_dir: str | None = None,
) -> LabelledImages:
    """Load a labelled image data set: a Hub/local `datasets` data set, an image folder, or the vendored MNIST.

    With neither `dataset_name` nor `train_data_dir`, the vendored MNIST split is used. Columns are checked
    before any training work; label names come from a `ClassLabel` column or from the sorted distinct values.
    `label_column=None`: images without labels (no label names).
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
        if column is not None and column not in columns:
            raise ValueError(f"{flag} {column!r} is not a column of the data set; its columns are {columns}")
    if len(dataset) == 0:
        raise ValueError("the training data set is empty")

    dataset, names = _class_names(dataset, label_column) if label_column is not None else (dataset, [])
    return LabelledImages(dataset, image_column, label_column, names)


def _class_names(dataset: Dataset, label_column: str) -> tuple[Dataset, list[str]]:
    """Check the label column and return (data set, class names): a ClassLabel's names, the sorted distinct strings
    of a text column (encoded to a ClassLabel), or "0".."max" for integer ids. Missing and out-of-range labels are
    errors naming the column, the first offending row and how many rows are affected."""
    flag = f"--label_column {label_column!r}"
    feature = dataset.features[label_column]
    values = list(dataset[label_column])
    missing = [i for i, v in enumerate(values) if v is None]
    if missing:
        raise ValueError(f"{flag} has {len(missing)} rows without a label (first: row {missing[0]})")
    if isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
        dataset = dataset.class_encode_column(label_column)
        return dataset, list(dataset.features[label_column].names)
    if isinstance(feature, ClassLabel):
        names = list(feature.names)
        bad = [i for i, v in enumerate(values) if not 0 <= v < len(names)]
        if bad:
            raise ValueError(
                f"{flag} holds class ids outside 0..{len(names) - 1} (its ClassLabel declares {len(names)} classes): "
                f"{len(bad)} rows, first row {bad[0]} with label {values[bad[0]]}"
            )
        return dataset, names
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        kinds = sorted({type(v).__name__ for v in values})
        raise ValueError(f"{flag} must hold integer class ids, class names or be a ClassLabel; it holds {kinds}")
    low, high = min(values), max(values)
    if low < 0:
        raise ValueError(f"{flag} holds negative class ids: {low} (row {values.index(low)})")
    if high >= 100_000:
        raise ValueError(f"{flag} holds class id {high}; condiff expects ids 0..K-1 with K < 100000")
    return dataset, [str(i) for i in range(high + 1)]


@dataclass
class ImageCheck:
    """What `check_images` found: decodable rows kept, bad rows (row, source, error), modes, channel count."""

    num_checked: int
    bad: list[tuple[int, str, str]] = field(default_factory=list)
    modes: dict[str, int] = field(default_factory=dict)
    channels: int = 1


def image_channels(img) -> int:
    """1 for grayscale modes (and palettes whose colours are all grey), else 3."""
    if img.mode in GRAY_MODES:
        return 1
    if img.mode in ("P", "PA"):
        palette = img.getpalette() or []
        triples = [palette[i : i + 3] for i in range(0, len(palette) - 2, 3)]
        return 1 if all(r == g == b for r, g, b in triples) else 3
    return 3


def check_images(dataset: Dataset, image_column: str, on_bad_image: str = "error") -> tuple[Dataset, ImageCheck]:
    """Decode every image of `image_column` once, before training.

    Undecodable images (corrupt or truncated files, decompression bombs) raise a ValueError naming the first ones
    with `on_bad_image="error"`, or are dropped and counted with `on_bad_image="skip"`. The channel count is 1 when
    every image is grayscale and 3 otherwise; `pil_to_model_tensor` converts each image to it.
    """
    from PIL import Image as PILImage

    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise ValueError(f"--on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}")
    flag = f"--image_column {image_column!r}"
    if not isinstance(dataset.features[image_column], Image):
        try:
            dataset = dataset.cast_column(image_column, Image())
        except Exception as err:
            raise ValueError(
                f"{flag} must hold images (a datasets Image column, image file paths or image bytes); its type is "
                f"{dataset.features[image_column]}"
            ) from err
    raw = dataset.select_columns([image_column]).cast_column(image_column, Image(decode=False))
    report = ImageCheck(num_checked=len(raw))
    any_colour = False
    row = 0
    for chunk in raw.iter(batch_size=512):
        for item in chunk[image_column]:
            source = (item or {}).get("path") or f"row {row}"
            try:
                if item is None or (item.get("bytes") is None and item.get("path") is None):
                    raise ValueError("no image")
                data = item.get("bytes")
                with PILImage.open(io.BytesIO(data) if data is not None else item["path"]) as img:
                    img.load()
                    report.modes[img.mode] = report.modes.get(img.mode, 0) + 1
                    any_colour = any_colour or image_channels(img) == 3
            except Exception as err:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
                report.bad.append((row, str(source), f"{type(err).__name__}: {err}"))
            row += 1
    report.channels = 3 if any_colour else 1
    if report.bad:
        first = "; ".join(f"row {r} ({src}): {why}" for r, src, why in report.bad[:3])
        if on_bad_image == "error":
            raise ValueError(
                f"{flag}: {len(report.bad)} of {report.num_checked} images cannot be decoded ({first}). "
                "Fix or remove them, or pass --on_bad_image skip to train without them."
            )
        logger.warning("skipping %d of %d undecodable images: %s", len(report.bad), report.num_checked, first)
        bad_rows = {r for r, _, _ in report.bad}
        dataset = dataset.select([i for i in range(len(dataset)) if i not in bad_rows])
        if len(dataset) == 0:
            raise ValueError(f"{flag}: none of the {report.num_checked} images can be decoded")
    return dataset, report


def to_model_mode(img, channels: int):
    """A PIL image in mode "L" (channels=1) or "RGB" (3): transparency is flattened onto black (the background of
    MNIST-like digits), 16-bit grayscale is scaled to 8 bits rather than clipped."""
    from PIL import Image as PILImage

    if img.mode.startswith("I;16"):
        arr = np.asarray(img, dtype=np.float32) / 257.0
        img = PILImage.fromarray(arr.clip(0, 255).astype(np.uint8), mode="L")
    if (img.mode == "P" and "transparency" in img.info) or img.mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = PILImage.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = PILImage.alpha_composite(background, rgba)
    return img.convert("L" if channels == 1 else "RGB")


def pil_to_model_tensor(images: list, resolution: int, channels: int) -> torch.Tensor:
    """PIL images -> float tensor [N, C, H, W] in [-1, 1], resized to `resolution` when needed."""
    arrays = []
    for img in images:
        img = to_model_mode(img, channels)
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
