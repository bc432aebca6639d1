"""One run per output folder, and no orphaned workers.

`RunLock` holds an advisory lock (`fcntl.flock`) on `<output_dir>/.condiff-run.lock` for the length of a run, taken
by the main process (rank 0) after the flags and the folder are checked and before anything is written; a second run
into the same folder is refused with a message naming the holder (pid, host, start, command). The kernel releases
the lock when the holder dies, however it dies, so a crashed run never blocks the next one (its file stays, unlocked);
a run that ends removes the file while still holding the lock, and a run that locked a file since removed tries again.
Nothing in Accelerate or the standard library does this for a folder, hence it is written here.

`exit_with_launcher` makes a torchrun worker receive SIGTERM when its launcher dies (Linux `PR_SET_PDEATHSIG`):
torchrun starts workers in their own sessions, so a SIGKILL to the launcher's process group used to leave them
training beside whatever ran next. SIGTERM stops a worker after its current step with a checkpoint (`signals.py`).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

LOCK_FILE = ".condiff-run.lock"
PR_SET_PDEATHSIG = 1


class OutputDirInUse(ValueError):
    """Another training run holds the output folder."""


class RunLock:
    """Context manager: the output folder's run lock, held by this process (only on rank 0; others hold nothing)."""

    def __init__(self, output_dir: str | Path, rank: int | None = None):
        self.path = Path(output_dir) / LOCK_FILE
        self.rank = int(os.environ.get("RANK", "0")) if rank is None else rank
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        if self.rank != 0 or sys.platform == "win32":
            return self
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 4096).decode("utf-8", "replace").strip()
                os.close(fd)
                raise OutputDirInUse(
                    f"--output_dir {str(self.path.parent)!r} is in use by another training run ({describe(holder)}); "
                    "two runs must not write one folder: wait for it to finish, stop it, or choose another --output_dir"
                ) from None
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break  # the file we locked is still the folder's lock file
            except FileNotFoundError:
                pass
            os.close(fd)  # its holder removed it as we locked it: lock the new one
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(sys.argv)[:500]}  # fmt: skip
        os.write(fd, json.dumps(info).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            try:
                self.path.unlink()  # while still locked: no other run can hold this file meanwhile
            except FileNotFoundError:
                pass
            os.close(self.fd)  # releases the lock
            self.fd = None


def describe(holder: str) -> str:
    try:
        info = json.loads(holder)
        return f"pid {info['pid']} on {info['host']}, started {info['started']}: {info['command']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


def exit_with_launcher() -> bool:
    """Under torchrun on Linux: SIGTERM to this worker when its parent (the launcher) dies; True when set."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
    return True
