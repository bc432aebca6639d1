"""What an output folder already holds, and `--overwrite_output_dir`.

A folder holds *an earlier run* when it has a finished model (the files `save_outputs` writes last:
`model_index.json`, `training_summary.json`, `training_args.json`, or a saved component's `config.json`) or
`checkpoint-<step>` folders. Training into such a folder is the same run only when it resumes one of those
checkpoints (`--resume_from_checkpoint latest` or a checkpoint inside the folder) and one exists; anything else is a
different run and is refused before any heavy work or any write, unless `--overwrite_output_dir` is given, which then
deletes the earlier run's checkpoints and outputs first, so that two runs' checkpoints never mix.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

FINISHED_MODEL_FILES = ("model_index.json", "training_summary.json", "training_args.json", "config.json")
# Written by every run besides the task's export; removed by --overwrite_output_dir.
RUN_FOLDERS = ("samples",)
OUTPUT_FILES_KEY = "output_files"
logger = logging.getLogger(__name__)  # in training_summary.json: every file the run's final save wrote


def earlier_run(output_dir: str | Path) -> list[str]:
    """Names of what marks an earlier run in `output_dir` (finished-model files, then checkpoint folders)."""
    from condiff.engine.checkpoints import list_checkpoints

    root = Path(output_dir)
    if not root.is_dir():
        return []
    return [n for n in FINISHED_MODEL_FILES if (root / n).is_file()] + [p.name for p in list_checkpoints(root)]


def resumes_inside(output_dir: str | Path, resume_from_checkpoint: str | None) -> bool:
    """Whether `--resume_from_checkpoint` names a checkpoint of this output folder ("latest" does)."""
    if not resume_from_checkpoint:
        return False
    if resume_from_checkpoint == "latest":
        return True
    path = Path(resume_from_checkpoint)
    if not path.is_absolute() and not path.exists():
        path = Path(output_dir) / path
    return path.resolve().parent == Path(output_dir).resolve()


def check_output_dir(args) -> None:
    """Refuse (ValueError naming the folder and the flags) to train a different run into a folder holding one."""
    from condiff.engine.checkpoints import resume_candidates

    output_dir, resume = args.output_dir, args.resume_from_checkpoint
    overwrite = getattr(args, "overwrite_output_dir", False)  # absent from namespaces built in code
    inside = resumes_inside(output_dir, resume)
    if overwrite and inside:
        raise ValueError(
            f"--overwrite_output_dir deletes the checkpoints that --resume_from_checkpoint {resume!r} would resume "
            f"in {str(output_dir)!r}; give only one of them"
        )
    found = earlier_run(output_dir)
    if not found or overwrite:
        return
    if inside and resume_candidates(output_dir, resume):
        return  # continuing this folder's run
    why = "has no complete checkpoint to resume from" if inside else "was not asked to resume"
    raise ValueError(
        f"--output_dir {str(output_dir)!r} already holds an earlier run ({', '.join(found)}) and this run {why}. "
        "Pass --resume_from_checkpoint latest to continue that run, --overwrite_output_dir to delete its checkpoints "
        "and outputs and start anew, or choose another --output_dir."
    )


def clear_earlier_run(output_dir: str | Path, logging_dir: str | None = None) -> list[Path]:
    """Delete an earlier run's checkpoints, logs, samples and final outputs from `output_dir` (main process only).

    Each checkpoint is first renamed to `.old-checkpoint-<step>` (one atomic rename, never resumed from, removed by
    the next run's start if this is interrupted), so no half-deleted checkpoint can ever look complete. Other files
    of the folder are removed only when the earlier run's summary lists them or they are finished-model files; a
    file the user put there stays.
    """
    from condiff.engine.checkpoints import OLD_PREFIX, PREFIX, list_checkpoints

    root = Path(output_dir)
    removed = []
    for ckpt in list_checkpoints(root):
        old = root / f"{OLD_PREFIX}{ckpt.name[len(PREFIX) :]}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(ckpt, old)
        shutil.rmtree(old)
        removed.append(ckpt)
    named = [*listed_outputs(root), *FINISHED_MODEL_FILES, *RUN_FOLDERS]
    if logging_dir and not Path(logging_dir).is_absolute():
        named.append(logging_dir)
    base = root.resolve()
    for name in named:
        path = (root / name).resolve()
        if base not in path.parents or not (path.is_file() or path.is_dir()):
            continue  # never outside the folder
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        removed.append(path)
        for folder in path.parents:  # folders the removal left empty (a component's subfolder)
            if folder == base or any(folder.iterdir()):
                break
            folder.rmdir()
    if removed:
        names = ", ".join(p.name for p in removed)
        logger.warning("--overwrite_output_dir: removed the earlier run's %s from %s", names, root)
    return removed


def listed_outputs(root: Path) -> list[str]:
    """The files the earlier run's final save wrote, as recorded in its `training_summary.json` (none if absent)."""
    try:
        files = json.loads((root / "training_summary.json").read_text()).get(OUTPUT_FILES_KEY, [])
    except (OSError, ValueError, AttributeError):
        return []
    return [f for f in files if isinstance(f, str)]
