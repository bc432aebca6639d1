"""Crash safety: a real SIGKILL mid-run then `--resume_from_checkpoint latest` ends with exactly the weights of an
uninterrupted run; SIGTERM / Ctrl-C save a checkpoint and exit cleanly."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from _tiny import (
    TINY,
    Spawned,
    max_abs_difference,
    run,
    tensors,
    tiny_args,
    train,
    train_command,
    wait_for,
)

from condiff.engine.checkpoints import checkpoint_problem, complete_checkpoints
from condiff.engine.signals import TrainingInterrupted
from condiff.train import main

# 8 batches per epoch, 2 micro-batches per update -> 4 updates per epoch; 18 updates span 5 epochs. Checkpoint 5
# lies mid-epoch (1 update = 2 batches into epoch 1), so the resume must skip exactly 2 batches of a reshuffled
# epoch. Default EMA, cosine LR schedule with warmup and label dropout all take part.
EXACT = ["--max_train_steps", "18", "--checkpointing_steps", "5", "--gradient_accumulation_steps", "2"]


def test_sigkill_mid_run_then_resume_matches_uninterrupted_run(tmp_path):
    a_dir, b_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    run_a = Spawned(train_command(a_dir, *EXACT), tmp_path / "logs", "a")
    run_b = Spawned(train_command(b_dir, *EXACT), tmp_path / "logs", "b")
    try:
        # Kill B as soon as its first checkpoint is complete: between checkpoints 5 and 10.
        wait_for(lambda: (b_dir / "checkpoint-5" / "condiff_complete.json").exists(), 240, run_b, poll=0.005)
        os.kill(run_b.proc.pid, signal.SIGKILL)
        run_b.wait(timeout=60)
        assert run_a.wait(timeout=300) == 0, run_a.stderr[-3000:]
    finally:
        run_a.kill()
        run_b.kill()
    assert run_b.proc.returncode == -signal.SIGKILL
    assert not (b_dir / "model_index.json").exists(), "B finished before the kill; the test proves nothing"
    assert not (b_dir / "checkpoint-15").exists()
    killed_at = [p.name for p in complete_checkpoints(b_dir)]

    resumed = run(train_command(b_dir, *EXACT, "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resumed from {b_dir / killed_at[-1]}" in resumed.stdout

    for name in ("unet/diffusion_pytorch_model.safetensors", "checkpoint-15/model.safetensors",
                 "checkpoint-15/ema.safetensors"):  # fmt: skip
        # pipeline weights (EMA), raw weights and EMA at the last checkpoint
        diff = max_abs_difference(tensors(a_dir / name), tensors(b_dir / name))
        assert diff <= 1e-6, (name, diff)
    a_summary = json.loads((a_dir / "training_summary.json").read_text())
    b_summary = json.loads((b_dir / "training_summary.json").read_text())
    assert a_summary["global_step"] == b_summary["global_step"] == 18
    # Training really happened after the resume point (the comparison is not between two untouched models).
    before = tensors(b_dir / killed_at[-1] / "model.safetensors")
    after = tensors(b_dir / "checkpoint-15" / "model.safetensors")
    assert max_abs_difference(before, after) > 1e-4


def test_sigterm_saves_a_checkpoint_and_exits_0(tmp_path):
    out = tmp_path / "run"
    proc = Spawned(train_command(out, "--max_train_steps", "5000", "--checkpointing_steps", "3"), tmp_path, "log")
    try:
        wait_for(lambda: (out / "checkpoint-3" / "condiff_complete.json").exists(), 240, proc)
        proc.proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=120)
    finally:
        proc.kill()
    stdout, stderr = proc.stdout, proc.stderr
    assert returncode == 0, stderr[-3000:]
    line = next(x for x in stdout.splitlines() if "stopped by SIGTERM" in x)
    step = int(line.split(" at step ")[1].split(";")[0])
    assert step < 5000 and f"checkpoint saved to {out / f'checkpoint-{step}'}" in line
    assert checkpoint_problem(out / f"checkpoint-{step}") is None
    assert complete_checkpoints(out)[-1].name == f"checkpoint-{step}"
    assert not (out / "model_index.json").exists()
    assert not list(out.glob(".tmp-*"))


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path, monkeypatch):
    """In-process: the 5th loss computation sends this process a real SIGINT."""
    import condiff.diffusion as diffusion

    calls = {"n": 0}
    real_target = diffusion.diffusion_target

    def target_then_ctrl_c(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return real_target(*a, **k)

    monkeypatch.setattr(diffusion, "diffusion_target", target_then_ctrl_c)
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the test runner was started in the background
    out = tmp_path / "run"
    argv = ["cfg", "--output_dir", str(out), *TINY, "--max_train_steps", "50", "--checkpointing_steps", "1000"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 130
    assert [p.name for p in complete_checkpoints(out)] == ["checkpoint-5"]
    assert not (out / "model_index.json").exists()
    # The handlers are restored afterwards, and the run continues from there to the end.
    assert signal.getsignal(signal.SIGINT) is handler_before
    monkeypatch.setattr(diffusion, "diffusion_target", real_target)
    done = train(tiny_args(out, "--max_train_steps", "8", "--resume_from_checkpoint", "latest"))
    assert json.loads((done / "training_summary.json").read_text())["resumed_from"] == "checkpoint-5"


def test_interrupt_exception_carries_step_and_checkpoint(tmp_path, monkeypatch):
    import condiff.diffusion as diffusion

    real_target = diffusion.diffusion_target
    calls = {"n": 0}

    def target_then_sigterm(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_target(*a, **k)

    monkeypatch.setattr(diffusion, "diffusion_target", target_then_sigterm)
    with pytest.raises(TrainingInterrupted) as stop:
        train(tiny_args(tmp_path / "run", "--max_train_steps", "50"))
    assert stop.value.signum == signal.SIGTERM and stop.value.step == 2
    assert stop.value.checkpoint == tmp_path / "run" / "checkpoint-2"
    assert torch.isfinite(tensors(stop.value.checkpoint / "model.safetensors")["conv_in.weight"]).all()
