"""World-size changes: a checkpoint written by a 1-process run resumes under `torchrun --nproc_per_node 2` (CPU,
gloo) and the reverse, at the right global step and learning rate; only rank 0 writes checkpoints, model cards and
the pipeline."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time

import torch
from _tiny import run, running_torchrun, tiny_args, torchrun_command, train

from condiff.engine.checkpoints import MARKER, checkpoint_problem, complete_checkpoints

STEPS = ["--train_batch_size", "4", "--checkpointing_steps", "2", "--lr_scheduler", "linear", "--lr_warmup_steps", "2"]


def scheduler_steps(out, step: int) -> int:
    """How many times the LR schedule was stepped, as stored in checkpoint-<step> (via Accelerate)."""
    return torch.load(out / f"checkpoint-{step}" / "scheduler.bin", weights_only=True)["last_epoch"]


def adam_steps(out, step: int) -> int:
    """AdamW's own update counter in checkpoint-<step>: it only reaches `step` if the optimizer state was resumed."""
    state = torch.load(out / f"checkpoint-{step}" / "optimizer.bin", weights_only=True)["state"]
    return int(next(iter(state.values()))["step"])


def check_rank0_outputs(result, out, nproc: int) -> dict:
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["num_processes"] == nproc
    checksums = summary["rank_parameter_checksums"]
    assert len(checksums) == nproc and max(checksums) - min(checksums) <= 1e-9 * abs(checksums[0])
    assert result.stdout.count("Saved to ") == 1  # rank 0 only
    assert (out / "README.md").read_text().count("# ") >= 1
    assert not list(out.glob(".tmp-*"))
    return summary


def test_one_process_checkpoint_resumes_under_torchrun_2(tmp_path):
    out = tmp_path / "run"
    train(tiny_args(out, *STEPS, "--max_train_steps", "2"))
    result = run(torchrun_command(2, out, *STEPS, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"))
    summary = check_rank0_outputs(result, out, 2)
    assert summary["global_step"] == 4 and summary["resumed_from"] == "checkpoint-2"
    assert f"Resumed from {out / 'checkpoint-2'} at step 2" in result.stdout
    assert "written with different settings" in result.stderr  # the data order cannot be kept: said, not hidden
    marker = json.loads((out / "checkpoint-4" / MARKER).read_text())
    assert marker["num_processes"] == 2 and checkpoint_problem(out / "checkpoint-4") is None
    # One optimizer update = one scheduler step whatever the world size: step 4 is 4 scheduler steps in.
    assert scheduler_steps(out, 2) == 2 and scheduler_steps(out, 4) == 4 and adam_steps(out, 4) == 4
    names = {p.name for p in (out / "checkpoint-4").iterdir()}
    assert {"random_states_0.pkl", "random_states_1.pkl", "model.safetensors", "ema.safetensors"} <= names


def test_torchrun_2_checkpoint_resumes_in_one_process(tmp_path):
    out = tmp_path / "run"
    result = run(torchrun_command(2, out, *STEPS, "--max_train_steps", "2"))
    check_rank0_outputs(result, out, 2)
    done = train(tiny_args(out, *STEPS, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"))
    summary = json.loads((done / "training_summary.json").read_text())
    assert summary["global_step"] == 4 and summary["resumed_from"] == "checkpoint-2"
    assert [p.name for p in complete_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]
    assert scheduler_steps(out, 4) == 4 and adam_steps(out, 4) == 4


def test_sigterm_to_one_rank_stops_both_at_the_same_step_with_one_checkpoint(tmp_path):
    """SIGTERM reaches only rank 1 (as when a scheduler signals one task): the flag is agreed on by all ranks, so
    both save the same checkpoint together and exit 0."""
    out = tmp_path / "run"
    proc, workers = running_torchrun(out, tmp_path)
    try:
        os.kill(workers[-1], signal.SIGTERM)
        returncode = proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        for pid in workers:  # print the stacks of a hung run (faulthandler, registered by main())
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)
        time.sleep(2)
        raise AssertionError(f"hung after SIGTERM:\n{proc.stderr[-8000:]}") from None
    finally:
        proc.kill()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    stdout, stderr = proc.stdout, proc.stderr
    assert returncode == 0, stderr[-4000:]
    lines = [x for x in stdout.splitlines() if "stopped by SIGTERM" in x]
    assert len(lines) == 1, stdout[-2000:]  # printed by rank 0 only
    step = int(lines[0].split(" at step ")[1].split(";")[0])
    assert complete_checkpoints(out)[-1].name == f"checkpoint-{step}"
    names = {p.name for p in (out / f"checkpoint-{step}").iterdir()}
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= names
    assert not (out / "model_index.json").exists()
