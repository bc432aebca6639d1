"""Class labels for condiff's class-conditional pipelines: ids, names from `id2label`, tensors and lists of these.

Part of the Hub-loadable pipeline code: imports only torch, numpy and the standard library.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .checks import MAX_IMAGES_PER_CALL, check_generators, short_repr

LabelInput = int | str | Sequence[int | str] | torch.Tensor | None


def normalize_id2label(id2label: Mapping | None) -> dict[int, str] | None:
    """JSON turns int keys into strings; bring them back to ints."""
    if id2label is None:
        return None
    return {int(k): str(v) for k, v in id2label.items()}


def _one_label(value: Any, num_classes: int, label2id: dict[str, int]) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"label must be an int in 0..{num_classes - 1} or a class name, got a bool")
    if isinstance(value, (int, np.integer)):
        if not 0 <= int(value) < num_classes:
            raise ValueError(f"label must be in 0..{num_classes - 1}, got {int(value)}")
        return int(value)
    if isinstance(value, str):
        key = value.strip().lower()
        if key in label2id:
            return label2id[key]
        names = ", ".join(repr(n) for n in label2id) or "(this model has no id2label)"
        raise ValueError(f"label {short_repr(value)} is not a class name; allowed names: {names}")
    raise TypeError(
        f"label must be an int in 0..{num_classes - 1}, a class name, a list of these, a tensor or None; "
        f"got {type(value).__name__}"
    )


def parse_labels(label: LabelInput, num_classes: int, id2label: Mapping[int, str] | None) -> list[int] | None:
    """Turn the `label` argument into a list of class ids (None means unconditional)."""
    if label is None:
        return None
    label2id = {name.lower(): i for i, name in (id2label or {}).items()}
    if isinstance(label, torch.Tensor):
        if label.dtype.is_floating_point or label.dtype.is_complex or label.dtype == torch.bool:
            raise TypeError(f"label tensor must hold integers, got dtype {label.dtype}")
        if label.ndim > 1:
            raise ValueError(f"label tensor must be 0-d or 1-d, got shape {tuple(label.shape)}")
        if label.device.type == "meta":
            raise ValueError("label tensor is on the 'meta' device and holds no values")
        if label.numel() > MAX_IMAGES_PER_CALL:
            raise ValueError(f"label holds {label.numel()} entries; at most {MAX_IMAGES_PER_CALL} images per call")
        label = label.reshape(-1).tolist()
    elif isinstance(label, np.ndarray):
        if label.ndim > 1:
            raise ValueError(f"label array must be 0-d or 1-d, got shape {label.shape}")
        label = label.reshape(-1).tolist()
    if isinstance(label, (list, tuple)):
        if len(label) == 0:
            raise ValueError("label must not be an empty list")
        if len(label) > MAX_IMAGES_PER_CALL:
            raise ValueError(f"label holds {len(label)} entries; at most {MAX_IMAGES_PER_CALL} images per call")
        return [_one_label(v, num_classes, label2id) for v in label]
    return [_one_label(label, num_classes, label2id)]


def ids_per_image(ids: Sequence[int], num_images: int, generator: Any) -> list[int]:
    """Each class id repeated for its `num_images` images, checked against the per-call limit and the generators."""
    batch_size = len(ids) * num_images
    if batch_size > MAX_IMAGES_PER_CALL:
        raise ValueError(f"label x num_images_per_label = {batch_size} images; at most {MAX_IMAGES_PER_CALL}")
    check_generators(generator, batch_size)
    return [c for c in ids for _ in range(num_images)]


def prompt_class_ids(class_labels: Any, num_classes: int | None, id2label: Any, n: int) -> list[int] | None:
    """Class ids for `n` prompts of a text UNet with a class embedding (one label for all, or one per prompt; None
    -> the null class K); None for a UNet without one (then `class_labels` must be None)."""
    if num_classes is None:
        if class_labels is not None:
            raise ValueError("class_labels given, but this unet has no class embedding (num_class_embeds is None)")
        return None
    ids = parse_labels(class_labels, num_classes, id2label)
    ids = [num_classes] * n if ids is None else ids * n if len(ids) == 1 else ids
    if len(ids) != n:
        raise ValueError(f"class_labels has {len(ids)} entries but there are {n} prompts; give 1 or {n}")
    return ids
