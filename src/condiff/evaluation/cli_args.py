"""Command-line options of the evaluation reports (`condiff sweep`, `benchmarks/*.py`): the options every report
takes (`--model`, `--device`, `--seed`, `--out-dir`, `--name`, `--quick`) and the guidance sweep's.

Light on purpose (argparse and the standard library only): the `condiff` command builds its parser from it before
any model code is imported.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from condiff.argtypes import int_in
from condiff.files import check_writable_dir
from condiff.options import SAMPLERS

__all__ = [
    "DEFAULT_SCALES",
    "DEFAULT_RESCALES",
    "DEFAULT_INTERVALS",
    "FULL_INTERVAL",
    "add_common_arguments",
    "report_parser",
    "apply_quick",
    "check_name",
    "check_out_dir",
    "check_new_outputs",
    "DEFAULT_SWEEP_OUT_DIR",
    "add_sweep_arguments",
    "build_sweep_parser",
]

DEFAULT_SCALES = (0.0, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5)
DEFAULT_RESCALES = (0.7,)  # Lin et al. (2023) recommend 0.7
# Guidance off at the highest and lowest noise levels (Kynkaanniemi et al. 2024); (0.2, 0.8) of the training
# timesteps is roughly their sigma range (0.28, 2.9] on the cosine schedule. A starting point, not a tuned value.
DEFAULT_INTERVALS = ((0.2, 0.8),)
FULL_INTERVAL = (0.0, 1.0)
# `condiff sweep` writes into the current folder by default, never into the published benchmarks/results/.
DEFAULT_SWEEP_OUT_DIR = "condiff-sweep"


def check_name(name: str) -> str:
    """A plain file stem for the outputs (no folders, not hidden)."""
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ValueError(f"--name must be a plain file stem (no folders), got {name!r}")
    return name


def check_new_outputs(paths: Iterable[str | Path], overwrite: bool) -> list[Path]:
    """Refuse, before any model work, outputs that already exist (a run replaces only files it creates, unless
    `--overwrite`) or that are folders; return the paths."""
    paths = [Path(p) for p in paths]
    folders = [str(p) for p in paths if p.is_dir()]
    if folders:
        raise ValueError(f"output path(s) {', '.join(folders)} are folders; choose another --out-dir or --name")
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise ValueError(
            f"output file(s) {', '.join(existing)} already exist; pass --overwrite to replace them, "
            "or choose another --out-dir or --name"
        )
    return paths


def check_out_dir(path: str | Path) -> Path:
    """Create the output folder (with parents) and check it is writable, before any model work."""
    check_writable_dir(path, "--out-dir")
    return Path(path)


def add_common_arguments(
    p: argparse.ArgumentParser, default_out_dir: str | Path, default_name: str, batch_size: bool = True
) -> None:
    """The options every report takes."""
    p.add_argument("--model", default=None, help="saved pipeline folder or Hub id (default: the shipped model)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    if batch_size:
        p.add_argument("--batch-size", type=int_in(1), default=250, help="images per pipeline call")
    p.add_argument("--seed", type=int_in(0, 2**63 - 1), default=0)
    p.add_argument(
        "--out-dir", default=str(default_out_dir), help="where <name>.json/.md/.png go (default: %(default)s)"
    )
    p.add_argument("--name", default=default_name, help="file stem of the outputs")
    p.add_argument("--quick", action="store_true", help="tiny settings (a smoke run, not a measurement)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files (without it: refuse)")


def report_parser(
    description: str, default_out_dir: str | Path, default_name: str, batch_size: bool = True
) -> argparse.ArgumentParser:
    """A parser with the options every report takes (`add_common_arguments`)."""
    p = argparse.ArgumentParser(description=description)
    add_common_arguments(p, default_out_dir, default_name, batch_size)
    return p


def apply_quick(args: argparse.Namespace, quick: dict[str, Any], parser: argparse.ArgumentParser) -> None:
    """--quick: use the tiny `quick` settings for every option left at its default."""
    for key, value in quick.items():
        if getattr(args, key) == parser.get_default(key):
            setattr(args, key, value)


def _interval(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"an interval is LO,HI (e.g. 0.2,0.8), got {text!r}") from None
    return lo, hi


def add_sweep_arguments(p: argparse.ArgumentParser, default_out_dir: str | Path = DEFAULT_SWEEP_OUT_DIR) -> None:
    """The sweep's options (shared by `condiff sweep`, `scripts/sweep.py` and `benchmarks/guidance_sweep.py`)."""
    add_common_arguments(p, default_out_dir, "guidance_sweep")
    p.add_argument("--scheduler", choices=sorted(SAMPLERS), default=None, help="default: the pipeline's own")
    p.add_argument("--steps", type=int_in(1, 10_000), default=None, help="inference steps (default: the pipeline's)")
    p.add_argument("--scales", type=float, nargs="+", default=list(DEFAULT_SCALES), help="guidance scales w")
    p.add_argument("--num-per-class", type=int_in(1, 65536), default=100, help="images per class for each setting")
    p.add_argument(
        "--rescales", type=float, nargs="*", default=list(DEFAULT_RESCALES), help="guidance_rescale variants"
    )
    p.add_argument(
        "--intervals",
        type=_interval,
        nargs="*",
        default=list(DEFAULT_INTERVALS),
        help="guidance_interval variants as LO,HI fractions of the noise range",
    )
    p.add_argument(
        "--variant-scales", type=float, nargs="*", default=None, help="scales for the variants (default: those > 1)"
    )


def build_sweep_parser(default_out_dir: str | Path = DEFAULT_SWEEP_OUT_DIR) -> argparse.ArgumentParser:
    """The parser of `scripts/sweep.py` and `benchmarks/guidance_sweep.py`."""
    p = argparse.ArgumentParser(
        description="Guidance sweep: accuracy, Frechet distance, diversity, NFE and speed for each guidance scale."
    )
    add_sweep_arguments(p, default_out_dir)
    return p
