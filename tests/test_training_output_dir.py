"""An output folder holding an earlier run (a finished model or checkpoints) is refused unless the run resumes it
or `--overwrite_output_dir` is given, which then removes that run's checkpoints and outputs (never mixing two runs'
checkpoints). Driven by the engine's fake task (tests/reliability/_fake_task.py)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).with_name("reliability")))

from _fake_task import FakeTask  # noqa: E402

from condiff.engine.checkpoints import complete_checkpoints  # noqa: E402
from condiff.engine.output_dir import clear_earlier_run  # noqa: E402
from condiff.engine.signals import TrainingInterrupted  # noqa: E402
from condiff.tasks import TASKS  # noqa: E402
from condiff.train import main, run  # noqa: E402

TASKS.setdefault("fake", "_fake_task:FakeTask")


def fake(out: Path, *extra: str) -> Path:
    return run(["fake", "--output_dir", str(out), *extra])


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` with its content hash."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file()}  # fmt: skip


def refuse_data(self):
    raise AssertionError("the refusal came after the data was loaded")


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Fail the test if the engine gets as far as loading data."""
    monkeypatch.setattr(FakeTask, "dataset", refuse_data)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    fake(out, "--max_train_steps", "4", "--checkpointing_steps", "2")
    return out


def test_a_finished_model_is_refused_before_any_work_and_left_intact(finished, no_heavy_work):
    before = snapshot(finished)
    with pytest.raises(ValueError) as err:
        fake(finished, "--max_train_steps", "2")
    message = str(err.value)
    assert f"--output_dir {str(finished)!r} already holds an earlier run" in message
    assert "training_summary.json" in message and "checkpoint-4" in message
    assert "--overwrite_output_dir" in message and "--resume_from_checkpoint latest" in message
    assert snapshot(finished) == before
    assert not [p for p in finished.iterdir() if p.name.startswith(".")]
    with pytest.raises(SystemExit, match="error: --output_dir .* already holds an earlier run"):
        main(["fake", "--output_dir", str(finished), "--max_train_steps", "2"])


def test_checkpoints_of_an_interrupted_run_are_refused_unless_resumed(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        fake(out, "--fault", "sigterm@3", "--max_train_steps", "50")
    assert [p.name for p in complete_checkpoints(out)] == ["checkpoint-3"]
    assert not (out / "training_summary.json").exists()
    with pytest.raises(ValueError, match=r"already holds an earlier run \(checkpoint-3\)"):
        fake(out, "--max_train_steps", "5")
    done = fake(out, "--max_train_steps", "5", "--resume_from_checkpoint", "latest")
    assert json.loads((done / "training_summary.json").read_text())["resumed_from"] == "checkpoint-3"


def test_resuming_a_folder_with_no_checkpoint_does_not_replace_its_model(tmp_path, monkeypatch):
    out = tmp_path / "run"
    fake(out, "--max_train_steps", "2", "--checkpointing_steps", "100")
    assert not list(out.glob("checkpoint-*"))
    before = snapshot(out)
    monkeypatch.setattr(FakeTask, "dataset", refuse_data)
    with pytest.raises(ValueError, match="already holds an earlier run .* has no complete checkpoint to resume from"):
        fake(out, "--max_train_steps", "4", "--resume_from_checkpoint", "latest")
    assert snapshot(out) == before


def test_overwrite_removes_the_earlier_runs_checkpoints_and_outputs_only(tmp_path):
    out = tmp_path / "run"
    fake(out, "--max_train_steps", "4", "--checkpointing_steps", "2")
    (out / "notes.txt").write_text("mine")
    (out / "samples").mkdir()
    (out / "samples" / "step-0000002.png").write_bytes(b"old grid")
    with pytest.raises(ValueError, match="give only one of them"):
        fake(out, "--overwrite_output_dir", "--resume_from_checkpoint", "latest")
    done = fake(out, "--max_train_steps", "3", "--checkpointing_steps", "3", "--overwrite_output_dir")
    assert [p.name for p in done.glob("checkpoint-*")] == ["checkpoint-3"]
    summary = json.loads((done / "training_summary.json").read_text())
    assert summary["global_step"] == 3 and summary["resumed_from"] is None
    assert (done / "notes.txt").read_text() == "mine" and not (done / "samples").exists()
    assert sorted(summary["output_files"]) == sorted(
        n for n in snapshot(done) if not n.startswith("checkpoint-") and n != "notes.txt"
    )
    # `latest` now means this run's checkpoint, not the earlier run's checkpoint-4.
    again = fake(out, "--max_train_steps", "5", "--resume_from_checkpoint", "latest")
    assert json.loads((again / "training_summary.json").read_text())["resumed_from"] == "checkpoint-3"


def test_clear_earlier_run_removes_listed_files_and_nothing_outside(tmp_path):
    root = tmp_path / "run"
    (root / "unet").mkdir(parents=True)
    (root / "unet" / "weights.safetensors").write_bytes(b"w")
    (root / "checkpoint-2").mkdir()
    (root / "checkpoint-2" / "model.safetensors").write_bytes(b"c")
    (root / "logs" / "condiff-fake").mkdir(parents=True)
    (tmp_path / "outside.txt").write_text("keep")
    (root / "keep.txt").write_text("keep")
    listed = ["unet/weights.safetensors", "../outside.txt", "/etc/hostname", "model_index.json"]
    (root / "training_summary.json").write_text(json.dumps({"output_files": listed}))
    (root / "model_index.json").write_text("{}")
    clear_earlier_run(root, "logs")
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == ["keep.txt"]
    assert (tmp_path / "outside.txt").read_text() == "keep"
