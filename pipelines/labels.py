"""Argument checking shared by condiff's pipelines: class labels, generators, step counts, latents, output types,
and the per-pipeline call lock (`serialized_call`).

Part of the Hub-loadable pipeline code: imports only torch, numpy and the standard library.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

OUTPUT_TYPES = ("pil", "np", "pt")
MAX_IMAGES_PER_CALL = 65536

LabelInput = int | str | Sequence[int | str] | torch.Tensor | None
_MAX_REPR = 80


def _short(value: Any) -> str:
    """repr() cut to a readable length (a 10 MB prompt must not end up in an error message)."""
    text = repr(value)
    return text if len(text) <= _MAX_REPR else f"{text[: _MAX_REPR - 20]}...<{len(text)} characters>"


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
        raise ValueError(f"label {_short(value)} is not a class name; allowed names: {names}")
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


def check_positive_int(name: str, value: Any, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= 1, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")


def check_output_type(output_type: str) -> None:
    if not isinstance(output_type, str) or output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {_short(output_type)}")


def check_latents(latents: Any, shape: tuple[int, ...]) -> torch.Tensor:
    """Initial noise given by the caller: a finite floating-point tensor of exactly `shape`, holding values."""
    if not isinstance(latents, torch.Tensor):
        raise TypeError(f"latents must be a torch.Tensor of shape {shape}, got {type(latents).__name__}")
    if not latents.dtype.is_floating_point:
        raise TypeError(f"latents must be a floating-point tensor, got dtype {latents.dtype}")
    if tuple(latents.shape) != tuple(shape):
        raise ValueError(f"latents must have shape {tuple(shape)}, got {tuple(latents.shape)}")
    if latents.device.type == "meta":
        raise ValueError("latents is on the 'meta' device and holds no values")
    if not bool(torch.isfinite(latents).all()):
        raise ValueError("latents must be finite; it holds NaN or inf values")
    return latents


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


def check_callback_inputs(names: Sequence[str], allowed: Sequence[str], callback: Any = None) -> None:
    if callback is not None and not callable(callback):
        raise TypeError(f"callback_on_step_end must be callable or None, got {type(callback).__name__}")
    if isinstance(names, (str, bytes)) or not isinstance(names, (list, tuple)):
        raise TypeError(
            f"callback_on_step_end_tensor_inputs must be a list of names such as ['latents'], got {_short(names)}"
        )
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ValueError(f"callback_on_step_end_tensor_inputs {unknown} are not allowed; allowed: {list(allowed)}")


_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
_FALLBACK_LOCK = threading.RLock()


def _lock_for(obj: Any) -> threading.RLock:
    with _LOCKS_GUARD:
        try:
            lock = _LOCKS.get(obj)
            if lock is None:
                lock = _LOCKS[obj] = threading.RLock()
            return lock
        except TypeError:  # not hashable or not weak-referenceable: share one lock
            return _FALLBACK_LOCK


def serialized_call(method: Callable) -> Callable:
    """Decorator for a pipeline's `__call__`: calls on one pipeline (or on pipelines sharing a scheduler object) run
    one at a time.

    diffusers schedulers keep per-call state (`set_timesteps`, the step index, multistep history), so two threads
    sampling through the same pipeline at once would corrupt each other's trajectories. With this lock they take
    turns, and each gets exactly what a sequential call with the same generator gives. For parallel sampling use one
    pipeline per thread, each with its own scheduler (e.g. `copy.deepcopy(pipe)`). The locks live in a weak map, not
    on the objects, so pipelines stay copyable and picklable; they are re-entrant, so a callback may call the pipeline.
    """

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with _lock_for(self), _lock_for(getattr(self, "scheduler", None) or self):
            return method(self, *args, **kwargs)

    return locked


def to_output_type(images: torch.Tensor, output_type: str):
    """[-1, 1] model-space images -> "pt" ([0, 1] NCHW tensor), "np" ([0, 1] NHWC array) or "pil"."""
    from diffusers.pipelines.pipeline_utils import DiffusionPipeline

    images = (images / 2 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return images
    array = images.cpu().permute(0, 2, 3, 1).float().numpy()
    return array if output_type == "np" else DiffusionPipeline.numpy_to_pil(array)
