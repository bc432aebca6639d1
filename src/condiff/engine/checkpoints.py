"""Crash-safe training checkpoints: Accelerate state folders named `checkpoint-<step>` under the output directory.

A checkpoint is written into `.tmp-checkpoint-<step>`, completed with a marker file (`condiff_complete.json`, written
last, listing every file with its size and SHA-256), then renamed to `checkpoint-<step>`. A folder is *complete* when
the marker parses, names the folder's own step and every listed file has the recorded size; only complete checkpoints
are resumed from or counted by `--checkpoints_total_limit`. Before a resume (and before a checkpoint is named as the
last good one) the contents are verified too: a file whose bytes changed (zeroed, a flipped bit) makes the checkpoint
*corrupt*, and `latest` falls back to the previous one. Accelerate's `save_state` writes straight into the folder it
is given and has no notion of a finished checkpoint, hence the temporary name, the marker and the rename here.

Folder contents: `model.safetensors`, `optimizer.bin`, `scheduler.bin`, `random_states_<rank>.pkl` (Accelerate;
loaded back with `torch.load(weights_only=True)`), `ema.safetensors` (condiff: Accelerate would pickle a registered
EMA object and load it back with `weights_only=False`, so condiff stores the EMA itself) and the marker.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

from condiff.engine.distributed import all_ranks_agree
from condiff.files import atomic_write_text, describe_write_error, fsync_path, safetensors_problem

logger = logging.getLogger(__name__)
PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-checkpoint-"
OLD_PREFIX = ".old-checkpoint-"
TMP_PIPELINE_PREFIX = ".tmp-pipeline-"
MARKER = "condiff_complete.json"
EMA_FILE = "ema.safetensors"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the folder or file and what is left intact."""


# ---------------------------------------------------------------------------------------------------------- listing


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """All `checkpoint-<step>` folders in `output_dir` (complete or not), oldest step first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit()]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(path: str | Path) -> int:
    return int(Path(path).name[len(PREFIX) :])


def read_marker(path: str | Path) -> dict:
    """The completion record of a checkpoint folder (raises CheckpointError when it is missing or unreadable)."""
    marker = Path(path) / MARKER
    try:
        info = json.loads(marker.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is incomplete: it has no {MARKER} (interrupted while saving?)") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{marker} cannot be read: {err}") from err
    if not isinstance(info, dict) or not isinstance(info.get("files"), dict) or not isinstance(info.get("step"), int):
        raise CheckpointError(f"{marker} is not a condiff checkpoint marker")
    return info


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_problem(path: str | Path, verify_contents: bool = False) -> str | None:
    """Why `path` is not a complete, intact checkpoint, or None when it is; `verify_contents` also compares every
    file's SHA-256 with the one recorded when it was written (markers of older versions record none)."""
    path = Path(path)
    try:
        info = read_marker(path)
    except CheckpointError as err:
        return str(err)
    if path.name.startswith(PREFIX) and info["step"] != checkpoint_step(path):
        return f"{path / MARKER} records step {info['step']}, not {checkpoint_step(path)}"
    for name, size in info["files"].items():
        file = path / name
        if not file.is_file():
            return f"{file} is missing"
        if file.stat().st_size != size:
            return f"{file} is {file.stat().st_size} bytes, {size} were written (truncated or corrupt)"
        if name.endswith(".safetensors"):
            problem = safetensors_problem(file)
            if problem:
                return problem
        recorded = info.get("sha256", {}).get(name) if verify_contents else None
        if recorded is not None and file_sha256(file) != recorded:
            return f"{file} does not hold the bytes that were written (SHA-256 differs: corrupt)"
    return None


def complete_checkpoints(output_dir: str | Path, verify_contents: bool = False) -> list[Path]:
    """Complete, intact checkpoint folders, oldest step first."""
    return [p for p in list_checkpoints(output_dir) if checkpoint_problem(p, verify_contents) is None]


def resume_candidates(output_dir: str | Path, resume_from_checkpoint: str | None) -> list[Path]:
    """Checkpoints to try, in order, for `--resume_from_checkpoint`.

    "latest": every complete checkpoint, newest first (incomplete or corrupt ones are skipped with a warning);
    empty when there is none. A folder: just that folder, which must be complete.
    """
    if not resume_from_checkpoint:
        return []
    if resume_from_checkpoint == "latest":
        good = []
        for path in reversed(list_checkpoints(output_dir)):
            problem = checkpoint_problem(path, verify_contents=True)
            if problem is None:
                good.append(path)
            else:
                logger.warning("skipping checkpoint %s: %s", path.name, problem)
        return good
    path = Path(resume_from_checkpoint)
    if not path.is_absolute() and not path.exists():
        path = Path(output_dir) / path
    if not path.is_dir():
        raise ValueError(f"--resume_from_checkpoint {resume_from_checkpoint!r} is not 'latest' or a checkpoint folder")
    problem = checkpoint_problem(path, verify_contents=True)
    if problem:
        raise ValueError(f"--resume_from_checkpoint {resume_from_checkpoint!r} cannot be used: {problem}")
    return [path]


def resolve_resume_path(output_dir: str | Path, resume_from_checkpoint: str | None) -> Path | None:
    """The first checkpoint `resume_candidates` would try, or None."""
    found = resume_candidates(output_dir, resume_from_checkpoint)
    return found[0] if found else None


def newest_complete_checkpoint(output_dir: str | Path, verify_contents: bool = False) -> Path | None:
    found = complete_checkpoints(output_dir, verify_contents)
    return found[-1] if found else None


# ---------------------------------------------------------------------------------------------------------- writing


def write_marker(folder: str | Path, info: dict) -> dict:
    """Write the completion marker (file sizes + `info`) into `folder`, after flushing every file to disk."""
    folder = Path(folder)
    files, sha256 = {}, {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER):
        fsync_path(file)
        name = file.relative_to(folder).as_posix()
        files[name], sha256[name] = file.stat().st_size, file_sha256(file)
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    record = {"format": FORMAT_VERSION, **info, "files": files, "sha256": sha256, "written_at": when}
    atomic_write_text(folder / MARKER, json.dumps(record, indent=2))
    fsync_path(folder)
    return record


def finalize_checkpoint(tmp: Path, final: Path) -> None:
    """Rename a finished temporary checkpoint folder to its final name (replacing a folder of the same step)."""
    old = final.with_name(f"{OLD_PREFIX}{final.name[len(PREFIX) :]}")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_path(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def prune_checkpoints(output_dir: str | Path, total_limit: int | None) -> list[Path]:
    """Delete the oldest *complete* checkpoints so that the newest `total_limit` complete ones remain.

    Incomplete folders are not counted (a failed save never costs a good checkpoint) and are left alone; the
    newest complete checkpoint is never deleted, whatever `total_limit` is.
    """
    if not total_limit:
        return []
    found = complete_checkpoints(output_dir)
    doomed = found[: max(len(found) - max(total_limit, 1), 0)]
    for path in doomed:
        logger.info("removing old checkpoint %s", path)
        shutil.rmtree(path)
    return doomed


def clean_stale_temporaries(output_dir: str | Path) -> list[Path]:
    """Remove what an interrupted save left behind (`.tmp-checkpoint-*`, `.old-checkpoint-*`, `.tmp-pipeline-*`)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    stale = [p for p in root.iterdir() if p.name.startswith((TMP_PREFIX, OLD_PREFIX, TMP_PIPELINE_PREFIX))]
    for path in stale:
        logger.warning("removing %s, left by an interrupted save", path)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


# ---------------------------------------------------------------------------------------------------------- EMA


def save_ema(path: str | Path, ema) -> None:
    """A diffusers `EMAModel` as safetensors: shadow weights as tensors, counters and settings as JSON metadata."""
    from safetensors.torch import save_file

    state = dict(ema.state_dict())
    shadow = state.pop("shadow_params")
    tensors = {f"shadow.{i:05d}": t.detach().cpu().contiguous() for i, t in enumerate(shadow)}
    save_file(tensors, str(path), metadata={"condiff_ema_state": json.dumps(state)})


def load_ema(path: str | Path, ema) -> None:
    """Restore an `EMAModel` saved by `save_ema` (shapes checked against the current model)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), "pt") as f:
            state = json.loads((f.metadata() or {})["condiff_ema_state"])
            names = sorted(f.keys())
            shadow = [f.get_tensor(k) for k in names]
    except Exception as err:
        raise CheckpointError(f"{path} cannot be read as a condiff EMA state: {type(err).__name__}: {err}") from err
    current = ema.shadow_params
    if len(shadow) != len(current) or any(a.shape != b.shape for a, b in zip(shadow, current, strict=False)):
        raise CheckpointError(f"{path} holds the EMA of a different model architecture")
    state["shadow_params"] = [s.to(device=c.device, dtype=c.dtype) for s, c in zip(shadow, current, strict=True)]
    ema.load_state_dict(state)


def tracked_file(name: str) -> str:
    return f"tracked_{name}.safetensors"


def save_tracked(folder: Path, tracked: dict) -> None:
    """A task's tracked modules (`Modules.tracked`) as safetensors, one file each."""
    from safetensors.torch import save_file

    for name, module in tracked.items():
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(folder / tracked_file(name)))


def load_tracked(folder: Path, tracked: dict) -> None:
    """Restore the tracked modules saved by `save_tracked` (every key must match)."""
    from safetensors.torch import load_file

    for name, module in tracked.items():
        path = folder / tracked_file(name)
        if not path.is_file():
            raise CheckpointError(f"{folder} has no {path.name}: it was not written by this task's version")
        module.load_state_dict(load_file(str(path)), strict=True)


def save_checkpoint(
    accelerator,
    output_dir: str | Path,
    step: int,
    ema=None,
    info: dict | None = None,
    total_limit: int | None = None,
    tracked: dict | None = None,
) -> Path:
    """Write `checkpoint-<step>` crash-safely; every process must call this at the same step.

    All processes write their part of the Accelerate state into the temporary folder (the model, optimizer and
    scheduler are written by the main process, each process writes its own RNG state); the main process writes the
    EMA and the marker, then renames the folder and prunes old checkpoints. Raises CheckpointError on every process
    when any part fails; the temporary folder is then removed and the existing checkpoints are untouched.
    """
    output_dir = Path(output_dir)
    final = output_dir / f"{PREFIX}{step}"
    tmp = output_dir / f"{TMP_PREFIX}{step}"
    main = accelerator.is_main_process

    def fail(err: BaseException | None) -> CheckpointError:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        kept = newest_complete_checkpoint(output_dir)
        return CheckpointError(
            describe_write_error(err, f"checkpoint {final}", output_dir)
            + f". The existing checkpoints are untouched (newest complete: {kept.name if kept else 'none'})."
        )

    def make_folder() -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)

    def write_state() -> None:
        accelerator.save_state(str(tmp))
        if main and ema is not None:
            save_ema(tmp / EMA_FILE, ema)
        if main and tracked:
            save_tracked(tmp, tracked)

    def complete() -> None:
        write_marker(tmp, {"step": step, "num_processes": accelerator.num_processes, **(info or {})})
        finalize_checkpoint(tmp, final)

    # Each phase ends with a vote, so that every rank raises (or goes on) together.
    for phase, everyone in ((make_folder, False), (write_state, True), (complete, False)):
        error: BaseException | None = None
        if main or everyone:
            try:
                phase()
            except Exception as err:  # disk full shows up as OSError, SafetensorError or RuntimeError (torch.save)
                error = err
        if not all_ranks_agree(accelerator, error is None):
            raise fail(error)
    if main:
        try:
            prune_checkpoints(output_dir, total_limit)
        except OSError as err:  # the new checkpoint is safe; an old one that could not be removed is only clutter
            logger.warning("could not remove an old checkpoint: %s", err)
    accelerator.wait_for_everyone()
    return final
