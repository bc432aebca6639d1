"""argparse types for numbers and output-file checks: bad values fail at parse time, and argparse names the flag
in its message ("argument --steps: must be an integer in 1..10000, got '0'"), before any model is loaded.
Light on purpose (no torch): the CLI imports it before parsing."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable
from pathlib import Path

from condiff.files import check_writable_dir


def int_problem(value, low: int = 1, high: int | None = None) -> str | None:
    """Why `value` is not an integer in low..high ("must be an integer in 1..10, got 0"), or None when it is.

    The one range check behind argparse types (`int_in`) and namespace checks (`condiff.engine.args`); pipelines
    keep their own small checks because they must import nothing from condiff (Hub-loadable code).
    """
    bounds = f">= {low}" if high is None else f"in {low}..{high}"
    ok = (isinstance(value, int) or type(value).__name__.startswith(("int", "uint"))) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):
        return f"must be an integer {bounds}, got {value!r}"
    return None


def real_problem(value, low: float, high: float = math.inf, open_low: bool = False, open_high: bool = False):
    """Why `value` is not a finite number in the interval, or None when it is."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if open_low else value >= low) and (value < high if open_high else value <= high)
    if not ok:
        lo, hi = ("(" if open_low else "[") + f"{low:g}", f"{high:g}" + (")" if open_high else "]")
        return f"must be a finite number in {lo}, {hi}, got {value!r}"
    return None


def int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """argparse type: an integer in low..high (no upper bound when high is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except (TypeError, ValueError):
            value = text[:40]
        problem = int_problem(value, low, high)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = "integer"
    return parse


def float_in(low: float, high: float = math.inf) -> Callable[[str], float]:
    """argparse type: a finite number in [low, high]."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be a number, got {text[:40]!r}") from None
        problem = real_problem(value, low, high)
        if problem:
            raise argparse.ArgumentTypeError(problem.replace(f"got {value!r}", f"got {text[:40]!r}"))
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


def existing_file(text: str) -> str:
    """An argparse type: a path to a readable file (refused at parse time otherwise)."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    return text
