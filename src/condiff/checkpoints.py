"""Training checkpoints: Accelerate state folders named `checkpoint-<step>` under the output directory."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)
PREFIX = "checkpoint-"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoint folders in `output_dir`, oldest step first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit()]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(path: str | Path) -> int:
    return int(Path(path).name[len(PREFIX) :])


def resolve_resume_path(output_dir: str | Path, resume_from_checkpoint: str | None) -> Path | None:
    """ "latest" -> newest checkpoint in output_dir (None if there is none); a path -> that folder, checked."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume_from_checkpoint)
    if not path.is_absolute() and not path.exists():
        path = Path(output_dir) / path
    if not path.is_dir():
        raise ValueError(f"--resume_from_checkpoint {resume_from_checkpoint!r} is not 'latest' or a checkpoint folder")
    return path


def prune_checkpoints(output_dir: str | Path, total_limit: int | None) -> None:
    """After a new checkpoint is written, delete the oldest so that the newest `total_limit` remain."""
    if not total_limit:
        return
    found = list_checkpoints(output_dir)
    for path in found[: max(len(found) - total_limit, 0)]:
        logger.info("removing old checkpoint %s", path)
        shutil.rmtree(path)
