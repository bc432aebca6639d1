"""Injected faults in training: NaN/inf loss, real divergence, disk full / unwritable folder while saving a checkpoint
or the final pipeline, incomplete / truncated / corrupt checkpoints on resume, and checkpoint pruning."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import shutil

import pytest
import torch
from _tiny import tensors, tiny_args, train

import condiff.diffusion as diffusion
from condiff.engine.checkpoints import (
    MARKER,
    CheckpointError,
    checkpoint_problem,
    complete_checkpoints,
    prune_checkpoints,
    resume_candidates,
)
from condiff.engine.export import OutputWriteError
from condiff.engine.trainer import NonFiniteLossError
from condiff.train import main


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def nan_at_call(monkeypatch, k: int, value: float = float("nan")):
    """Fault injection: the k-th training target (step k with one micro-batch per step) is NaN (or inf)."""
    real = diffusion.diffusion_target
    calls = {"n": 0}

    def target(*a, **kw):
        calls["n"] += 1
        out = real(*a, **kw)
        return torch.full_like(out, value) if calls["n"] == k else out

    monkeypatch.setattr(diffusion, "diffusion_target", target)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, value):
    nan_at_call(monkeypatch, 3, value)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"at step 3; training stopped") as err:
        train(tiny_args(out, "--max_train_steps", "6", "--checkpointing_steps", "2"))
    assert f"{out / 'checkpoint-2'}" in str(err.value) and "--skip_nonfinite" in str(err.value)
    assert [p.name for p in complete_checkpoints(out)] == ["checkpoint-2"]
    assert not (out / "model_index.json").exists()
    # main() turns it into a one-line error and exit status 1.
    nan_at_call(monkeypatch, 1, value)
    with pytest.raises(SystemExit, match="error: the training loss is .* at step 1"):
        main(["cfg", "--output_dir", str(tmp_path / "other"), *tiny_args_argv(), "--max_train_steps", "2"])


def tiny_args_argv() -> list[str]:
    from _tiny import TINY

    return list(TINY)


def test_skip_nonfinite_skips_and_counts_the_update(tmp_path, monkeypatch):
    nan_at_call(monkeypatch, 3)
    out = train(tiny_args(tmp_path / "run", "--max_train_steps", "5", "--skip_nonfinite", "--checkpointing_steps", "1"))
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["global_step"] == 5 and summary["skipped_nonfinite_steps"] == 1
    weights = tensors(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    # Step 3 made no update (weights and EMA unchanged), steps 2 and 4 did.
    for name in ("model.safetensors", "ema.safetensors"):
        w2, w3, w4 = (tensors(out / f"checkpoint-{s}" / name) for s in (2, 3, 4))
        assert all(torch.equal(w2[k], w3[k]) for k in w2), name
        assert not all(torch.equal(w3[k], w4[k]) for k in w3), name
    assert json.loads((out / "checkpoint-3" / MARKER).read_text())["skipped_nonfinite_steps"] == 1


def test_real_divergence_from_a_huge_learning_rate_is_caught(tmp_path):
    """No injection: --learning_rate 1e30 really blows the weights up within a couple of updates."""
    with pytest.raises(NonFiniteLossError, match=r"training (loss|gradient norm) is .* at step \d+"):
        train(tiny_args(tmp_path / "run", "--learning_rate", "1e30", "--lr_scheduler", "constant",
                        "--max_train_steps", "30", "--checkpointing_steps", "1"))  # fmt: skip
    kept = complete_checkpoints(tmp_path / "run")
    assert kept, "the steps before the divergence were checkpointed"
    # The last good checkpoint is intact and loads; the diverged step never became a checkpoint.
    assert all(torch.isfinite(t).all() for t in tensors(kept[-1] / "model.safetensors").values())


def partial_write_then_fail(err_no: int):
    """A save function that writes half of a real file, then fails like a full disk / read-only folder."""

    def fake(tensors_, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\0" * 1000)
        raise OSError(err_no, errno.errorcode[err_no] + ": " + __import__("os").strerror(err_no), str(filename))

    return fake


@pytest.mark.parametrize("err_no", [errno.ENOSPC, errno.EROFS])
def test_disk_full_while_checkpointing(tmp_path, monkeypatch, err_no):
    import accelerate.utils.other as accelerate_io

    real_save = accelerate_io.safe_save_file
    calls = {"n": 0}

    def save_file(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # checkpoint-2 succeeds, checkpoint-4 hits the full disk half-way
            return partial_write_then_fail(err_no)(*a, **kw)
        return real_save(*a, **kw)

    monkeypatch.setattr(accelerate_io, "safe_save_file", save_file)
    out = tmp_path / "run"
    with pytest.raises(CheckpointError) as err:
        train(tiny_args(out, "--max_train_steps", "6", "--checkpointing_steps", "2"))
    message = str(err.value)
    assert f"could not write checkpoint {out / 'checkpoint-4'}" in message
    assert __import__("os").strerror(err_no) in message and "MiB free" in message
    assert "newest complete: checkpoint-2" in message
    assert [p.name for p in complete_checkpoints(out)] == ["checkpoint-2"]
    assert not (out / "checkpoint-4").exists() and not list(out.glob(".tmp-*"))
    with pytest.raises(SystemExit, match="error: could not write checkpoint"):
        monkeypatch.setattr(accelerate_io, "safe_save_file", partial_write_then_fail(err_no))
        main(["cfg", "--output_dir", str(tmp_path / "other"), *tiny_args_argv(), "--max_train_steps", "2",
                       "--checkpointing_steps", "1"])  # fmt: skip


def test_disk_full_while_saving_the_pipeline_keeps_the_previous_one(tmp_path, monkeypatch):
    import safetensors.torch

    out = tmp_path / "run"
    train(tiny_args(out, "--max_train_steps", "4", "--checkpointing_steps", "2"))
    unet_file = out / "unet" / "diffusion_pytorch_model.safetensors"
    before = {p: sha(p) for p in (unet_file, out / "model_index.json", out / "README.md", out / "unet/config.json")}
    real = safetensors.torch.save_file

    def save_file(tensors_, filename, metadata=None):
        if str(filename).endswith("diffusion_pytorch_model.safetensors"):  # diffusers' save_pretrained
            return partial_write_then_fail(errno.ENOSPC)(tensors_, filename, metadata)
        return real(tensors_, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    with pytest.raises(OutputWriteError, match="could not write the trained result.*No space left on device"):
        train(tiny_args(out, "--max_train_steps", "6", "--checkpointing_steps", "2", "--resume_from_checkpoint",
                        "latest"))  # fmt: skip
    assert {p: sha(p) for p in before} == before, "a good file was replaced"
    assert not list(out.glob(".tmp-*"))
    assert [p.name for p in complete_checkpoints(out)] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]


@pytest.fixture(scope="module")
def trained_with_checkpoints(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpts") / "run"
    train(tiny_args(out, "--max_train_steps", "6", "--checkpointing_steps", "2"))
    return out


def copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_resume_latest_skips_incomplete_truncated_and_corrupt_checkpoints(trained_with_checkpoints, tmp_path, caplog):
    out = copy_run(trained_with_checkpoints, tmp_path / "run")
    # checkpoint-8: killed while saving with the pre-marker layout (no marker); checkpoint-6: truncated weights;
    # checkpoint-4: sizes right but garbage optimizer state (passes the marker check, fails to load);
    # .tmp-checkpoint-10: what a SIGKILL during a save leaves.
    shutil.copytree(out / "checkpoint-6", out / "checkpoint-8")
    (out / "checkpoint-8" / MARKER).unlink()
    weights = out / "checkpoint-6" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    opt = out / "checkpoint-4" / "optimizer.bin"
    opt.write_bytes(b"\x00" * opt.stat().st_size)
    (out / ".tmp-checkpoint-10").mkdir()
    (out / ".tmp-checkpoint-10" / "model.safetensors").write_bytes(b"partial")

    caplog.set_level(logging.WARNING)
    done = train(tiny_args(out, "--max_train_steps", "8", "--checkpointing_steps", "100",
                           "--resume_from_checkpoint", "latest"))  # fmt: skip
    summary = json.loads((done / "training_summary.json").read_text())
    assert summary["resumed_from"] == "checkpoint-2" and summary["global_step"] == 8
    log = caplog.text
    assert "skipping checkpoint checkpoint-8" in log and "no condiff_complete.json" in log
    assert "skipping checkpoint checkpoint-6" in log and "truncated or corrupt" in log
    assert "skipping checkpoint checkpoint-4" in log and "SHA-256 differs" in log  # the garbage optimizer state
    assert not (out / ".tmp-checkpoint-10").exists()


def test_explicit_resume_from_a_broken_checkpoint_is_a_clear_error(trained_with_checkpoints, tmp_path):
    out = copy_run(trained_with_checkpoints, tmp_path / "run")
    (out / "checkpoint-4" / MARKER).unlink()
    with pytest.raises(ValueError, match=r"--resume_from_checkpoint .*checkpoint-4.* is incomplete"):
        train(tiny_args(out, "--max_train_steps", "8", "--resume_from_checkpoint", str(out / "checkpoint-4")))
    weights = out / "checkpoint-6" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"checkpoint-6/model.safetensors is 100 bytes"):
        train(tiny_args(out, "--max_train_steps", "8", "--resume_from_checkpoint", "checkpoint-6"))


def test_all_checkpoints_unloadable_is_an_error_not_a_silent_restart(trained_with_checkpoints, tmp_path):
    out = copy_run(trained_with_checkpoints, tmp_path / "run")
    for ckpt in complete_checkpoints(out):
        opt = ckpt / "optimizer.bin"
        opt.write_bytes(b"\x00" * opt.stat().st_size)
        marker = json.loads((ckpt / MARKER).read_text())  # hashes that agree: intact files that do not load
        marker["sha256"]["optimizer.bin"] = sha(opt)
        (ckpt / MARKER).write_text(json.dumps(marker))
    with pytest.raises(CheckpointError, match="none of the checkpoints .* could be loaded"):
        train(tiny_args(out, "--max_train_steps", "8", "--resume_from_checkpoint", "latest"))


def test_pruning_counts_only_complete_checkpoints(trained_with_checkpoints, tmp_path):
    out = copy_run(trained_with_checkpoints, tmp_path / "run")
    # Newer incomplete folders (a failed save) must not push the only good checkpoints out.
    for step in (8, 10):
        shutil.copytree(out / "checkpoint-6", out / f"checkpoint-{step}")
        (out / f"checkpoint-{step}" / MARKER).unlink()
    prune_checkpoints(out, 1)
    assert [p.name for p in complete_checkpoints(out)] == ["checkpoint-6"]
    assert (out / "checkpoint-8").exists() and (out / "checkpoint-10").exists()  # left for the user to inspect
    prune_checkpoints(out, 0)  # "no limit"
    assert [p.name for p in complete_checkpoints(out)] == ["checkpoint-6"]
    assert resume_candidates(out, "latest") == [out / "checkpoint-6"]


def test_total_limit_during_training_and_marker_contents(tmp_path):
    out = train(tiny_args(tmp_path / "run", "--max_train_steps", "6", "--checkpointing_steps", "2",
                          "--checkpoints_total_limit", "1"))  # fmt: skip
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-6"]
    marker = json.loads((out / "checkpoint-6" / MARKER).read_text())
    assert marker["step"] == 6 and marker["num_processes"] == 1
    assert set(marker["files"]) >= {"model.safetensors", "optimizer.bin", "scheduler.bin", "ema.safetensors"}
    assert checkpoint_problem(out / "checkpoint-6") is None
    # No pickled EMA (Accelerate's custom_checkpoint_*.pkl): only Accelerate's RNG state is a pickle.
    assert {p.name for p in out.glob("checkpoint-6/*.pkl")} == {"random_states_0.pkl"}


def zero_tensor_bytes(weights) -> None:
    """Keep the safetensors header, zero every tensor byte: same size, a valid file, wrong weights."""
    data = bytearray(weights.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start:] = bytes(len(data) - start)
    weights.write_bytes(bytes(data))


def test_changed_checkpoint_bytes_are_caught_and_latest_falls_back(trained_with_checkpoints, tmp_path, caplog):
    out = copy_run(trained_with_checkpoints, tmp_path / "run")
    zero_tensor_bytes(out / "checkpoint-6" / "model.safetensors")
    flipped = out / "checkpoint-4" / "optimizer.bin"
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 1  # one flipped bit
    flipped.write_bytes(bytes(data))
    assert checkpoint_problem(out / "checkpoint-6") is None  # sizes and header are fine: only the hashes tell
    assert "SHA-256 differs" in checkpoint_problem(out / "checkpoint-6", verify_contents=True)
    with pytest.raises(ValueError, match=r"checkpoint-6/model.safetensors does not hold the bytes that were written"):
        train(tiny_args(out, "--max_train_steps", "8", "--resume_from_checkpoint", "checkpoint-6"))
    caplog.set_level(logging.WARNING)
    done = train(tiny_args(out, "--max_train_steps", "8", "--resume_from_checkpoint", "latest"))
    assert json.loads((done / "training_summary.json").read_text())["resumed_from"] == "checkpoint-2"
    assert "skipping checkpoint checkpoint-6" in caplog.text and "skipping checkpoint checkpoint-4" in caplog.text


def test_every_checkpoint_corrupt_is_an_error_and_nothing_is_overwritten(trained_with_checkpoints, tmp_path):
    out = copy_run(trained_with_checkpoints, tmp_path / "run")
    for ckpt in complete_checkpoints(out):
        zero_tensor_bytes(ckpt / "model.safetensors")
    before = {p: sha(p) for p in out.rglob("*") if p.is_file()}
    with pytest.raises((ValueError, CheckpointError), match="no complete checkpoint|none of the checkpoints"):
        train(tiny_args(out, "--max_train_steps", "8", "--resume_from_checkpoint", "latest"))
    assert {p: sha(p) for p in out.rglob("*") if p.is_file()} == before
    marker = json.loads((out / "checkpoint-6" / MARKER).read_text())
    assert set(marker["sha256"]) == set(marker["files"])  # every file's hash recorded when written
