"""`condiff train <task> --help`: every default shown, no torch imported; the README's command for the shipped model
parses to the shipped model's training arguments."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from condiff.tasks import TASKS
from condiff.train import build_parser, task_class

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "diffusers", "accelerate")


def flat_help(task: str) -> str:
    return re.sub(r"\s+", " ", build_parser(task_class(task)).format_help())


def option_help(parser: argparse.ArgumentParser, flag: str) -> str:
    """The help lines of one option as `--help` prints them, whitespace collapsed."""
    action = next(a for a in parser._actions if f"--{flag}" in a.option_strings)
    return re.sub(r"\s+", " ", parser._get_formatter()._format_action(action))


@pytest.mark.parametrize("task", list(TASKS))
def test_help_shows_every_default(task):
    parser = build_parser(task_class(task))
    for flag in ("learning_rate", "lr_warmup_steps", "num_epochs", "prediction_type", "resolution", "use_ema"):
        default = parser.get_default(flag)
        if default is None and flag in ("prediction_type", "resolution"):
            continue  # a task without that flag (the evaluator has no prediction type)
        assert f"(default: {default})" in option_help(parser, flag), (task, flag)
    for action in parser._actions:
        switch = action.default is False and not isinstance(action, argparse.BooleanOptionalAction)
        if action.default not in (None, argparse.SUPPRESS) and not switch and action.option_strings:
            assert "default" in option_help(parser, action.option_strings[0][2:]), (task, action.dest)


def test_help_states_the_task_defaults():
    assert "--prediction_type {epsilon,v_prediction,sample} (default: v_prediction)" in flat_help("latent_cfg")
    assert "--learning_rate LEARNING_RATE (default: 0.003)" in flat_help("evaluator")
    assert "--learning_rate LEARNING_RATE (default: 0.001)" in flat_help("cfg")
    assert "--output_dir OUTPUT_DIR --overwrite_output_dir" in flat_help("cfg")  # required, no default shown


def test_help_of_every_task_imports_no_torch():
    code = (
        "import sys\nfrom condiff.train import parse\nfrom condiff.tasks import TASKS\nbad = {}\n"
        "for name in TASKS:\n"
        "    try:\n        parse([name, '--help'])\n    except SystemExit:\n        pass\n"
        f"    bad.update({{name: m for m in {HEAVY!r} if m in sys.modules and name not in bad}})\n"
        "print(repr(bad), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == "{}", result.stderr[-2000:]


def test_latent_default_text_encoder_matches_the_pipelines():
    from condiff.pipelines.text_encoding import DEFAULT_TEXT_ENCODER

    from condiff.tasks import latent_cfg

    assert latent_cfg.DEFAULT_TEXT_ENCODER == DEFAULT_TEXT_ENCODER


def readme_reproduce_command() -> list[str]:
    readme = (REPO / "README.md").read_text()
    block = readme.split("reproduces the shipped model", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return shlex.split(block.replace("\\\n", " "))


def test_readme_command_reproduces_the_shipped_training_arguments():
    argv = readme_reproduce_command()
    assert argv[:3] == ["accelerate", "launch", "scripts/train_cfg.py"]
    task_cls = task_class("cfg")
    parser = build_parser(task_cls)
    args = parser.parse_args(argv[3:])
    task_cls(args).plan(args.max_train_steps)  # the run-sized defaults, as the engine settles them
    shipped = json.loads((REPO / "src/condiff/assets/mnist-cfg/training_args.json").read_text())
    parsed = vars(args)
    differ = {k: (parsed.get(k), v) for k, v in shipped.items() if k != "output_dir" and parsed.get(k) != v}
    assert differ == {}
    newer = {k: v for k, v in parsed.items() if k not in shipped}  # flags added since, at their defaults
    assert newer == {"overwrite_output_dir": False, "hub_token": None, "variance_type": "fixed", "vlb_weight": 0.001,
                     "init_unet": None}  # fmt: skip
