"""Files that are never half-written: atomic writes and renames, and readable-safetensors checks.

Used by the training engine (checkpoints, final outputs) and by the model-card / Hub code.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def fsync_path(path: str | Path) -> None:
    """Flush a file or a folder entry to disk (best effort: not every file system supports fsync on folders)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to a temporary file next to `path`, then rename it over `path`: never a partial `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def replace_files(src_dir: str | Path, dst_dir: str | Path) -> list[Path]:
    """Move every file under `src_dir` to the same relative place under `dst_dir`, each with one atomic rename.

    Every destination file is either its old version or the complete new one, never a partial file. `src_dir` is
    removed afterwards. Both folders must be on the same file system (they are: the temporary folder is made
    inside the output folder).
    """
    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    moved = []
    files = sorted(p for p in src_dir.rglob("*") if p.is_file())
    for file in files:
        fsync_path(file)
    # model_index.json last: a reader that sees the new index also sees the new components.
    files.sort(key=lambda p: p.name == "model_index.json")
    for file in files:
        dest = dst_dir / file.relative_to(src_dir)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(file, dest)
        moved.append(dest)
    fsync_path(dst_dir)
    shutil.rmtree(src_dir, ignore_errors=True)
    return moved


def safetensors_problem(file: str | Path) -> str | None:
    """A reason `file` is not a readable safetensors file (header and sizes checked, tensors not read), or None."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), "pt") as f:
            f.keys()
    except Exception as err:  # safetensors raises its own SafetensorError, or OSError
        return f"{file} is not a valid safetensors file ({type(err).__name__}: {err})"
    return None


def describe_write_error(err: BaseException | None, what: str, folder: Path) -> str:
    """A one-line explanation of a failed write, with the free space left (disk-full errors come in many types)."""
    reason = f"{type(err).__name__}: {err}" if err is not None else "another process failed to write its part"
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free on that file system"
    except OSError:
        free = "free space unknown"
    return f"could not write {what}: {reason} ({free})"


def check_writable_dir(path: str | os.PathLike, flag: str, create: bool = True) -> None:
    """Create `path` if needed (when `create`) and prove it is writable with a throw-away file, since permission
    bits do not tell for root or read-only mounts; a ValueError names `flag` otherwise."""
    try:
        if create:
            Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ValueError(f"{flag} {str(path)!r} cannot be written: {err.strerror or err}") from err
