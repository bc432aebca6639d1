"""argparse types for numbers and output-file checks: bad values fail at parse time, and argparse names the flag
in its message ("argument --steps: must be an integer in 1..10000, got '0'"), before any model is loaded.
Light on purpose (no torch): the CLI imports it before parsing."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable
from pathlib import Path

from condiff.files import check_writable_dir


def int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer in low..high (no upper bound when high is None)."""
    bounds = f">= {low}" if high is None else f"in {low}..{high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be an integer {bounds}, got {text[:40]!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an integer {bounds}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def float_in(low: float, high: float = math.inf) -> Callable[[str], float]:
    """A finite number in [low, high]."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be a number, got {text[:40]!r}") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be a finite number in [{low:g}, {high:g}], got {text[:40]!r}")
        return value

    parse.__name__ = "number"
    return parse


def check_output_file(path: str | Path, flag: str, suffixes: Iterable[str] = (), overwrite: bool = False) -> Path:
    """Refuse an output file before any model work: a wrong suffix, a folder, a missing or unwritable parent
    folder (proved with a throw-away file, since permission bits do not tell for root or read-only mounts), or an
    existing file without `overwrite`."""
    path = Path(path)
    suffixes = tuple(suffixes)
    if suffixes and path.suffix.lower() not in suffixes:
        raise ValueError(f"{flag} {str(path)!r} must end in one of {', '.join(suffixes)}")
    if path.is_dir():
        raise ValueError(f"{flag} {str(path)!r} is a folder; give a file name")
    parent = path.parent
    if not parent.is_dir():
        raise ValueError(f"{flag} {str(path)!r}: folder {str(parent)!r} does not exist")
    if path.exists() and not overwrite:
        raise ValueError(f"{flag} {str(path)!r} already exists; pass --overwrite to replace it")
    check_writable_dir(parent, f"{flag} {str(path)!r}: folder", create=False)
    return path
