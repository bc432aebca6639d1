"""Validation cost of short runs: no second render of the final weights, run-sized default grids, and a warning for
a warm-up as long as the run."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).with_name("reliability")))

from _fake_task import FakeTask  # noqa: E402
from _tiny import TINY  # noqa: E402
from PIL import Image  # noqa: E402

from condiff.engine.trainer import warmup_warning  # noqa: E402
from condiff.tasks import TASKS  # noqa: E402
from condiff.tasks.denoiser import plan_grid_size  # noqa: E402
from condiff.train import build_parser, run, task_class  # noqa: E402


class CountingTask(FakeTask):
    """The fake task, recording the step of every validate call (the export's own call passes step 0)."""

    name = "counting"
    steps: list[int] = []

    def validate(self, modules, step, output_dir):
        CountingTask.steps.append(step)
        return super().validate(modules, step, output_dir)


TASKS["counting"] = f"{__name__}:CountingTask"
TASKS.setdefault("fake", "_fake_task:FakeTask")


@pytest.mark.parametrize("max_steps,expected", [("4", [2, 0]), ("5", [2, 4, 0])])
def test_the_final_weights_are_validated_once(tmp_path, max_steps, expected):
    CountingTask.steps = []
    run(["counting", "--output_dir", str(tmp_path / "run"), "--validation_steps", "2", "--max_train_steps", max_steps])
    # Step 4 of a 4-step run is the export's (step 0) render of the same averaged weights: not rendered twice.
    assert CountingTask.steps == expected


def test_warmup_warning_text():
    message = warmup_warning(200, 2, "cosine", 1e-3)
    assert message.startswith("--lr_warmup_steps 200 is >= the run's 2 steps")
    assert "at most 5e-06, not --learning_rate 0.001" in message
    assert warmup_warning(2, 2, "linear", 1e-3) is not None
    assert warmup_warning(1, 2, "cosine", 1e-3) is None
    assert warmup_warning(200, 2, "constant", 1e-3) is None  # no warm-up in that schedule


@pytest.mark.parametrize("warmup,warned", [("10", 1), ("3", 0)])
def test_a_warmup_longer_than_the_run_is_logged_once(tmp_path, caplog, warmup, warned):
    caplog.set_level(logging.WARNING)
    run(["fake", "--output_dir", str(tmp_path / "run"), "--max_train_steps", "4", "--lr_warmup_steps", warmup])
    lines = [r.getMessage() for r in caplog.records if "--lr_warmup_steps" in r.getMessage()]
    assert len(lines) == warned
    if warned:
        assert "--lr_warmup_steps 10 is >= the run's 4 steps" in lines[0] and "\n" not in lines[0]


@pytest.mark.parametrize(
    "task,flag,steps,expected",
    [
        ("cfg", "validation_images_per_class", 2, 1),
        ("cfg", "validation_images_per_class", 250, 2),
        ("cfg", "validation_images_per_class", 8000, 8),
        ("unconditional", "validation_images", 2, 8),
        ("unconditional", "validation_images", 8000, 64),
        ("guidance_distillation", "validation_images_per_class", 450, 4),
        ("latent_cfg", "validation_images_per_prompt", 99, 1),
    ],
)
def test_default_grids_are_sized_to_the_run(tmp_path, task, flag, steps, expected):
    extra = {"latent_cfg": ["--vae", "v"], "guidance_distillation": ["--teacher", "t"]}.get(task, [])
    parser = build_parser(task_class(task))
    args = parser.parse_args(["--output_dir", str(tmp_path), *extra])
    assert getattr(args, flag) is None
    task_class(task)(args).plan(steps)
    assert getattr(args, flag) == expected
    given = parser.parse_args(["--output_dir", str(tmp_path), *extra, f"--{flag}", "3"])
    plan_grid_size(given, flag, steps, 8)
    assert getattr(given, flag) == 3


def test_a_two_step_run_renders_one_image_per_class(tmp_path):
    argv = [a for a in TINY]
    i = argv.index("--validation_images_per_class")
    del argv[i : i + 2]
    out = run(["cfg", "--output_dir", str(tmp_path / "run"), *argv, "--max_train_steps", "2", "--lr_warmup_steps", "0"])
    assert json.loads((out / "training_args.json").read_text())["validation_images_per_class"] == 1
    with Image.open(out / "samples" / "final.png") as grid:
        assert grid.size == (8, 8 * 10)  # 10 classes x 1 image of 8x8 (the default was 8 per class: 64 x 80)
    assert not list((out / "samples").glob("step-*.png"))
