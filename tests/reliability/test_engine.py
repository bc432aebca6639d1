"""The training engine itself, driven by a tiny fake task (tests/reliability/_fake_task.py) and by the real tasks:
randomness only from the batch generator, frozen modules, faults, signals, kills, corrupt checkpoints."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _tiny import REPO, TINY, Spawned, env, max_abs_difference, tensors, wait_for

from condiff.engine.checkpoints import MARKER, CheckpointError, complete_checkpoints, read_marker
from condiff.engine.distributed import cpu_threads_for
from condiff.engine.signals import TrainingInterrupted
from condiff.engine.trainer import NonFiniteLossError
from condiff.tasks import TASKS
from condiff.train import build_parser, run, task_class

FAKE_SCRIPT = str(Path(__file__).with_name("_fake_task.py"))
TASKS.setdefault("fake", "_fake_task:FakeTask")


def fake(out: Path, *extra: str) -> Path:
    return run(["fake", "--output_dir", str(out), *extra])


def fake_command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, FAKE_SCRIPT, "--output_dir", str(out), *extra]


@pytest.mark.parametrize(
    "name,argv",
    [
        ("fake", []),
        ("cfg", TINY),
        ("evaluator", ["--train_batch_size", "8"]),
        ("unconditional", TINY[:7] + ["--max_train_samples", "16"]),
        ("classifier", TINY[:7] + ["--max_train_samples", "16"]),
    ],
)
def test_all_randomness_of_a_loss_comes_from_its_generator(tmp_path, name, argv):
    task_cls = task_class(name)
    args = build_parser(task_cls).parse_args(["--output_dir", str(tmp_path), *argv])
    task = task_cls(args)
    task.check_args()
    data = task.dataset()
    modules = task.build()
    batch = task.collate([data[i] for i in range(8)])

    def loss(seed: int) -> float:
        torch.manual_seed(seed + 1000)  # the global RNG must not matter
        return task.loss(modules, batch, torch.Generator().manual_seed(seed))[0].item()

    assert loss(1) == loss(1)
    assert loss(1) != loss(2)


def test_frozen_modules_are_used_but_never_trained_or_saved(tmp_path):
    out = fake(tmp_path / "run", "--max_train_steps", "6", "--checkpointing_steps", "3")
    # The frozen scale (weight 2, bias 0.5) is not in the checkpoint; the trained regressor is, with its EMA.
    saved = tensors(out / "checkpoint-6" / "model.safetensors")
    assert all(k.startswith("net.") for k in saved) and len(saved) == 4
    assert len(tensors(out / "checkpoint-6" / "ema.safetensors")) == 4
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["task"] == "fake" and summary["global_step"] == 6
    exported = tensors(out / "diffusion_pytorch_model.safetensors")
    assert max_abs_difference(exported, tensors(out / "checkpoint-6" / "model.safetensors")) > 0  # EMA weights
    card = (out / "README.md").read_text()
    assert f"`{out}`" in card and ".tmp-" not in card and "validation loss" in card


def test_nonfinite_loss_stops_at_the_named_step(tmp_path):
    with pytest.raises(NonFiniteLossError, match="at step 4; training stopped") as err:
        fake(tmp_path / "run", "--fault", "nan@4", "--max_train_steps", "8", "--checkpointing_steps", "2")
    assert "checkpoint-2" in str(err.value)
    assert [p.name for p in complete_checkpoints(tmp_path / "run")] == ["checkpoint-2"]


def test_skip_nonfinite_drops_only_that_update(tmp_path):
    out = fake(tmp_path / "run", "--fault", "inf@3", "--skip_nonfinite", "--max_train_steps", "4",
               "--checkpointing_steps", "1", "--no-use_ema")  # fmt: skip
    w2, w3, w4 = (tensors(out / f"checkpoint-{s}" / "model.safetensors") for s in (2, 3, 4))
    assert max_abs_difference(w2, w3) == 0 and max_abs_difference(w3, w4) > 0
    assert json.loads((out / "training_summary.json").read_text())["skipped_nonfinite_steps"] == 1


def test_sigterm_in_process_checkpoints_the_current_step(tmp_path):
    with pytest.raises(TrainingInterrupted) as stop:
        fake(tmp_path / "run", "--fault", "sigterm@3", "--max_train_steps", "50")
    assert stop.value.step == 3 and stop.value.checkpoint == tmp_path / "run" / "checkpoint-3"
    assert [p.name for p in complete_checkpoints(tmp_path / "run")] == ["checkpoint-3"]


def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(tmp_path):
    steps = ["--max_train_steps", "24", "--checkpointing_steps", "4", "--num_examples", "40"]  # 5 batches per epoch
    reference = fake(tmp_path / "ref", *steps)
    out = tmp_path / "killed"
    spawned = Spawned(fake_command(out, *steps, "--sleep", "0.05"), tmp_path / "logs", "killed")
    try:
        wait_for(lambda: len(complete_checkpoints(out)) >= 2, timeout=120, spawned=spawned)
        spawned.proc.send_signal(signal.SIGKILL)
        spawned.wait(timeout=60)
    finally:
        spawned.kill()
    assert not (out / "training_summary.json").exists()
    done = fake(out, *steps, "--resume_from_checkpoint", "latest")
    name = "diffusion_pytorch_model.safetensors"
    assert max_abs_difference(tensors(done / name), tensors(reference / name)) == 0
    assert json.loads((done / "training_summary.json").read_text())["resumed_from"].startswith("checkpoint-")


def test_sigterm_subprocess_exits_0_and_resumes(tmp_path):
    out = tmp_path / "run"
    spawned = Spawned(fake_command(out, "--max_train_steps", "400", "--sleep", "0.02"), tmp_path / "logs", "term")
    try:
        wait_for(lambda: "steps:" in spawned.stderr and "it/s" in spawned.stderr, timeout=120, spawned=spawned)
        spawned.proc.send_signal(signal.SIGTERM)
        assert spawned.wait(timeout=120) == 0
    finally:
        spawned.kill()
    assert "stopped by SIGTERM" in spawned.stdout
    saved = complete_checkpoints(out)
    assert len(saved) == 1
    done = fake(out, "--max_train_steps", "400", "--resume_from_checkpoint", "latest")
    assert json.loads((done / "training_summary.json").read_text())["resumed_from"] == saved[0].name


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    out = fake(tmp_path / "run", "--max_train_steps", "6", "--checkpointing_steps", "2")
    optimizer = out / "checkpoint-6" / "optimizer.bin"
    optimizer.write_bytes(b"\0" * optimizer.stat().st_size)  # passes the size check, fails to load
    done = fake(out, "--max_train_steps", "8", "--resume_from_checkpoint", "latest")
    assert json.loads((done / "training_summary.json").read_text())["resumed_from"] == "checkpoint-4"


def test_a_checkpoint_of_another_task_is_refused(tmp_path):
    out = fake(tmp_path / "run", "--max_train_steps", "2", "--checkpointing_steps", "2")
    marker = out / "checkpoint-2" / MARKER
    marker.write_text(marker.read_text().replace('"task": "fake"', '"task": "cfg"'))
    with pytest.raises(CheckpointError, match="none of the checkpoints"):
        fake(out, "--max_train_steps", "4", "--resume_from_checkpoint", "latest")


def test_thread_count_under_accelerate_launch():
    launched = {"ACCELERATE_DYNAMO_BACKEND": "NO", "OMP_NUM_THREADS": "1"}
    cores = __import__("os").cpu_count()
    assert cpu_threads_for(None, launched) == cores
    assert cpu_threads_for(None, {**launched, "LOCAL_WORLD_SIZE": "2"}) == max(cores // 2, 1)
    assert cpu_threads_for(3, launched) == 3  # an explicit --num_threads wins
    assert cpu_threads_for(None, {"OMP_NUM_THREADS": "1"}) is None  # the user's own OMP setting is kept
    assert cpu_threads_for(None, {"ACCELERATE_DYNAMO_BACKEND": "NO", "OMP_NUM_THREADS": "4"}) is None


def test_evaluator_task_end_to_end(tmp_path):
    from condiff.evaluator import load_evaluator

    out = run(["evaluator", "--output_dir", str(tmp_path / "ev"), "--max_train_steps", "30",
               "--validation_steps", "15", "--report_to", "none", "--checkpointing_steps", "15"])  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.5  # 30 steps of 128 images: far above chance (0.1)
    model = load_evaluator(out)
    assert sum(p.numel() for p in model.parameters()) == metrics["num_parameters"]
    assert [p.name for p in complete_checkpoints(out)] == ["checkpoint-15", "checkpoint-30"]
    assert "Test-split accuracy" in (out / "README.md").read_text()


def test_train_entry_points_help_without_torch():
    code = (
        "import sys\nfrom condiff.train import main\n"
        "try:\n    main(['cfg', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported for --help'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "--p_uncond" in result.stdout and "(default: 0.1)" in result.stdout
    missing = subprocess.run([sys.executable, "-m", "condiff.training"], capture_output=True, text=True, env=env())
    assert missing.returncode != 0 and "No module named condiff.training" in missing.stderr
    bad = subprocess.run([sys.executable, "-m", "condiff.train", "nope"], capture_output=True, text=True, env=env())
    assert (
        bad.returncode != 0
        and "unknown task 'nope'; the tasks are cfg, evaluator, unconditional, classifier" in bad.stderr
    )
    # `python -m condiff` is the condiff command; its `train` forwards to condiff.train.
    forwarded = subprocess.run([sys.executable, "-m", "condiff", "train", "evaluator", "--help"], capture_output=True,
                               text=True, env=env())  # fmt: skip
    assert forwarded.returncode == 0 and "--no_augment" in forwarded.stdout and "(default: 128)" in forwarded.stdout


def test_cpu_seconds_add_up_across_a_resume(tmp_path):
    """The card's training cost: CPU time is stored in each checkpoint and added to the resumed run's own."""
    out = fake(tmp_path / "run", "--max_train_steps", "4", "--checkpointing_steps", "2")
    first = json.loads((out / "training_summary.json").read_text())
    marker = read_marker(out / "checkpoint-4")
    assert 0 < marker["cpu_seconds"] and first["cpu_seconds_total"] == first["cpu_seconds_this_run"] > 0
    done = fake(out, "--max_train_steps", "6", "--resume_from_checkpoint", "latest")
    summary = json.loads((done / "training_summary.json").read_text())
    assert summary["resumed_from"] == "checkpoint-4"
    expected = marker["cpu_seconds"] + summary["cpu_seconds_this_run"]
    assert summary["cpu_seconds_total"] == pytest.approx(expected, abs=0.11)
