"""Argument checking shared by condiff's pipelines: class labels, generators, step counts, output types.

Part of the Hub-loadable pipeline code: imports only torch and numpy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

OUTPUT_TYPES = ("pil", "np", "pt")
MAX_IMAGES_PER_CALL = 65536

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
        raise ValueError(f"label {value!r} is not a class name; allowed names: {names}")
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
        label = label.reshape(-1).tolist()
    elif isinstance(label, np.ndarray):
        label = label.reshape(-1).tolist()
    if isinstance(label, (list, tuple)):
        if len(label) == 0:
            raise ValueError("label must not be an empty list")
        return [_one_label(v, num_classes, label2id) for v in label]
    return [_one_label(label, num_classes, label2id)]


def check_positive_int(name: str, value: Any, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= 1, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")


def check_output_type(output_type: str) -> None:
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")


def check_generators(generator: Any, batch_size: int) -> None:
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, list) and all(isinstance(g, torch.Generator) for g in generator):
        if len(generator) != batch_size:
            raise ValueError(
                f"generator is a list of {len(generator)} generators but {batch_size} images are requested; "
                "pass one generator or exactly one per image"
            )
        return
    raise TypeError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")


def check_callback_inputs(names: Sequence[str], allowed: Sequence[str]) -> None:
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ValueError(f"callback_on_step_end_tensor_inputs {unknown} are not allowed; allowed: {list(allowed)}")


def to_output_type(images: torch.Tensor, output_type: str):
    """[-1, 1] model-space images -> "pt" ([0, 1] NCHW tensor), "np" ([0, 1] NHWC array) or "pil"."""
    from diffusers.pipelines.pipeline_utils import DiffusionPipeline

    images = (images / 2 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return images
    array = images.cpu().permute(0, 2, 3, 1).float().numpy()
    return array if output_type == "np" else DiffusionPipeline.numpy_to_pil(array)
