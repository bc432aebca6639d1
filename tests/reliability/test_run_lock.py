"""One run per output folder (reliability round 2, item 12): a second run into a folder in use is refused naming the
holder, a dead holder blocks nothing, and torchrun workers stop (with a checkpoint) when their launcher is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _tiny import running_torchrun, tiny_args, train

from condiff.engine.checkpoints import complete_checkpoints
from condiff.engine.run_lock import LOCK_FILE, OutputDirInUse, RunLock

SHORT = ["--max_train_steps", "2"]
HOLD = "import sys, time; from condiff.engine.run_lock import RunLock; RunLock(sys.argv[1]).__enter__(); print('held', flush=True); time.sleep(600)"  # noqa: E501


def test_a_second_run_into_a_folder_in_use_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    with RunLock(out, rank=0):
        in_use = rf"--output_dir '{out}' is in use by another training run \(pid {os.getpid()}"
        with pytest.raises(OutputDirInUse, match=in_use):
            train(tiny_args(out, *SHORT))
        assert not list(out.glob("checkpoint-*")) and not (out / "model_index.json").exists()
    assert (train(tiny_args(out, *SHORT)) / "model_index.json").exists()  # released: the run goes ahead


def test_a_holder_that_died_blocks_nothing(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputDirInUse, match=f"pid {holder.pid}"):
            with RunLock(out, rank=0):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert (out / LOCK_FILE).exists()  # a killed holder leaves its file, unlocked
    with RunLock(out, rank=0):  # SIGKILL released it
        assert (out / LOCK_FILE).exists()
    assert not (out / LOCK_FILE).exists()  # a run that ends removes it


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_torchrun_workers_stop_when_their_launcher_is_killed(tmp_path):
    out = tmp_path / "run"
    proc, workers = running_torchrun(out, tmp_path)
    try:
        os.kill(proc.proc.pid, signal.SIGKILL)  # the launcher alone (its workers run in their own sessions)
        deadline = time.monotonic() + 120
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(alive(w) for w in workers), "the workers outlived their launcher"
    finally:
        proc.kill()
        for w in workers:
            try:
                os.kill(w, signal.SIGKILL)
            except ProcessLookupError:
                pass
    with RunLock(out, rank=0):  # no orphan holds the folder
        pass
    assert complete_checkpoints(out)  # they stopped with their checkpoints intact
