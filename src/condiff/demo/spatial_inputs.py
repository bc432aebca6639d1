"""The spatial views' inputs: a low-resolution digit for super-resolution and a layout map typed as text (one
character per cell: a class id, or `.` for background), with defaults made from the vendored MNIST test digits."""

from __future__ import annotations

from typing import Any

MAX_LAYOUT_CELLS = 64  # per side: at 4 pixels a cell, a 256-pixel canvas


def test_digits(classes: tuple[int, ...]) -> tuple[Any, Any]:
    """(images (N, 1, 28, 28) in [-1, 1], labels (N,)): the first vendored MNIST test digit of each class."""
    import torch

    from condiff.data import load_mnist_arrays

    images, labels = load_mnist_arrays("test")
    indices = [int((labels == c).nonzero()[0][0]) for c in classes]
    picked = torch.from_numpy(images[indices]).float().div(127.5).sub(1).unsqueeze(1)
    return picked, torch.from_numpy(labels[indices])


def default_low_resolution(size: int = 7, digit: int = 5) -> Any:
    """A 7x7 (area-downsampled) MNIST test digit as a grayscale PIL image: the super-resolution view's input."""
    from condiff.demo.previews import to_pil_images
    from condiff.pipelines.spatial_conditions import downsample_area

    images, _ = test_digits((digit,))
    return to_pil_images(downsample_area(images, size))[0]


def layout_text(layout: Any, background: int) -> str:
    """A (H, W) map of category ids as text: one character per cell, `.` for `background`."""
    return "\n".join("".join("." if int(v) == background else str(int(v)) for v in row) for row in layout)


def default_layout_text(cell: int = 4, classes: int = 10, digits: tuple[int, ...] = (3, 7)) -> str:
    """The layouts of MNIST test digits (a 3 and a 7) side by side, as text."""
    import torch

    from condiff.pipelines.spatial_conditions import layout_map

    images, labels = test_digits(digits)
    maps = layout_map(images, labels, cell, classes)
    return layout_text(torch.cat(list(maps), dim=1), classes)


def parse_layout(text: str, classes: int = 10) -> Any:
    """Layout text -> an int64 numpy map (H, W) of class ids, `classes` for background; ValueError saying what is
    wrong (uneven rows, a character that is not a class id or `.`, too large)."""
    import numpy as np

    rows = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not rows:
        raise ValueError("The layout map is empty: type rows of digits and dots, e.g. '..3..'")
    widths = {len(row) for row in rows}
    if len(widths) > 1:
        raise ValueError(f"Every row of the layout map needs the same length; got lengths {sorted(widths)}")
    if len(rows) > MAX_LAYOUT_CELLS or len(rows[0]) > MAX_LAYOUT_CELLS:
        raise ValueError(f"The layout map may have at most {MAX_LAYOUT_CELLS} rows and columns")
    allowed = {str(i) for i in range(min(classes, 10))} | {"."}
    bad = sorted({c for row in rows for c in row} - allowed)
    if bad:
        raise ValueError(f"The layout map may hold class ids 0-{min(classes, 10) - 1} and '.', not {''.join(bad)!r}")
    return np.array([[classes if c == "." else int(c) for c in row] for row in rows], dtype=np.int64)
