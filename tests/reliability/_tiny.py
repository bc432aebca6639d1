"""Shared helpers of the reliability suite: tiny training arguments, subprocess runs, weight comparison."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = str(REPO / "scripts" / "train_cfg.py")
# The TINY model of tests/test_training.py: 8x8 images, 0.05M parameters, 64 examples (8 batches of 8 per epoch).
TINY = [
    "--resolution", "8", "--block_out_channels", "8", "16", "--norm_num_groups", "4",
    "--train_batch_size", "8", "--max_train_samples", "64", "--validation_images_per_class", "1",
    "--validation_inference_steps", "2", "--report_to", "none", "--validation_steps", "100000",
]  # fmt: skip


def env() -> dict:
    """Subprocess environment: one thread (deterministic float sums, fair to the 2 shared cores), offline."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}


def tiny_args(output_dir: Path, *extra: str) -> list[str]:
    """The command line of a tiny CFG run (task name first), for `train`."""
    return ["cfg", "--output_dir", str(output_dir), *TINY, *extra]


def train(argv: list[str]) -> Path:
    """Run a task in this process through the engine (as `condiff train ...` does); return the output folder."""
    from condiff.train import run

    return run(argv)


def train_command(output_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, TRAIN_SCRIPT, "--output_dir", str(output_dir), *TINY, *extra]


def torchrun_command(nproc: int, output_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
        str(free_port()), TRAIN_SCRIPT, "--output_dir", str(output_dir), *TINY, *extra,
    ]  # fmt: skip


def free_port() -> int:
    """A TCP port nobody listens on now (fixed ports collide when two test runs share a machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """Run to the end; on timeout kill the whole process group (torchrun's workers too), then fail."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=REPO,
                            start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        raise AssertionError(f"timed out after {timeout} s: {cmd}\n{err[-4000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process started with start_new_session=True and everything it started."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def wait_for(predicate, timeout: float, spawned: Spawned | None = None, poll: float = 0.01) -> None:
    """Poll until `predicate()` is true; fail early if the spawned process exits first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if spawned is not None and spawned.proc.poll() is not None:
            raise AssertionError(
                f"process ended (rc {spawned.proc.returncode}) before the awaited state:\n{spawned.stderr[-3000:]}"
            )
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(poll)


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def max_abs_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


class Spawned:
    """A training process whose output goes to files (a pipe nobody reads while we wait could fill and stall it)."""

    def __init__(self, cmd: list[str], log_dir: Path, name: str):
        log_dir.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = log_dir / f"{name}.out", log_dir / f"{name}.err"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(cmd, env=env(), cwd=REPO, stdout=out, stderr=err, start_new_session=True)

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """Kill the process and anything it started (torchrun workers), if still running."""
        if self.proc.poll() is None:
            kill_group(self.proc)
        else:  # the launcher ended; make sure no worker outlives it
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def running_torchrun(out: Path, tmp_path: Path) -> tuple[Spawned, list[int]]:
    """A 2-process torchrun of the tiny model writing checkpoints every 3 steps into `out` for a long time, once its
    first checkpoint is complete: (the launcher, its two workers' pids)."""
    steps = ["--train_batch_size", "4", "--max_train_steps", "5000", "--checkpointing_steps", "3"]
    proc = Spawned(torchrun_command(2, out, *steps), tmp_path, "torchrun")
    wait_for(lambda: (out / "checkpoint-3" / "condiff_complete.json").exists(), 240, proc)
    pid = proc.proc.pid
    workers = [int(w) for w in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    assert len(workers) == 2
    return proc, workers
