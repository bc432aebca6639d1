"""What `condiff generate`'s input flags name, checked and read before any model loads: --label (ids, names, lists)
against a folder's classes, and the condition image of the spatial pipelines (--image, --noise-level).

Light on purpose (no torch): the CLI imports it before parsing; PIL is imported only to read --image.
"""

from __future__ import annotations

import argparse
from typing import Any

from condiff.options import SPATIAL_PIPELINES


def parse_label(text: str | None) -> int | str | list[int | str] | None:
    """--label text -> the pipeline's `label`: None (unconditional), "auto" (super-resolution's class hint from its
    classifier), one id or name, or a list of them."""
    if text is None or text.lower() in ("none", "uncond", "unconditional"):
        return None
    if text.strip().lower() == "auto":
        return "auto"
    parts = [p.strip() for p in text.split(",") if p.strip()]
    values = [int(p) if p.lstrip("-").isdigit() else p for p in parts]
    return values[0] if len(values) == 1 else values


def check_labels(label: int | str | list | None, space: tuple[int | None, dict[int, str]] | None) -> None:
    """Refuse a --label that the folder's classes (`loading.label_space`) do not include, before loading it (in the
    pipelines' own words, `pipelines/labels.py`, which needs torch)."""
    if label is None or space is None:
        return
    num_classes, id2label = space
    names = {name.lower() for name in id2label.values()}
    for value in label if isinstance(label, list) else [label]:
        if isinstance(value, int) and num_classes is not None and not 0 <= value < num_classes:
            raise ValueError(f"--label: label must be in 0..{num_classes - 1}, got {value}")
        if isinstance(value, str) and value.strip().lower() not in names:
            allowed = ", ".join(repr(n) for n in id2label.values()) or "none (this model has no id2label: give ids)"
            shown = repr(value) if len(repr(value)) <= 80 else f"{repr(value)[:60]}...<{len(repr(value))} characters>"
            raise ValueError(f"--label: label {shown} is not a class name; allowed names: {allowed}")


def check_spatial_arguments(args: argparse.Namespace, pipeline: str) -> None:
    """--image and --noise-level belong to the spatial pipelines, which only `generate` runs (and needs --image)."""
    image, level = getattr(args, "image", None), getattr(args, "noise_level", None)
    if pipeline not in SPATIAL_PIPELINES:
        if image is not None or level is not None:
            raise ValueError(f"--image and --noise-level need --pipeline super-resolution or layout, not {pipeline}")
        return
    if args.command != "generate":
        raise ValueError(
            f"condiff {args.command} measures class-conditional generation; for --pipeline {pipeline} run "
            "`python benchmarks/spatial_conditioning.py`"
        )
    if image is None:
        raise ValueError(f"--pipeline {pipeline} needs --image FILE (a low-resolution image, or a layout map)")
    if level is not None and pipeline != "super-resolution":
        raise ValueError("--noise-level needs --pipeline super-resolution")


def read_condition_image(path: str, pipeline: str) -> Any:
    """--image: an image file (a layout map as a grayscale PNG whose values are the category ids) or, for a layout,
    a .npy integer array."""
    from PIL import Image

    if pipeline == "layout" and path.lower().endswith(".npy"):
        import numpy as np

        return np.load(path, allow_pickle=False)
    with Image.open(path) as image:
        image.load()
    return image if pipeline == "layout" else image.convert("L")
