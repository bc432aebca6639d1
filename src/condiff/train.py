"""Train any condiff task: `python -m condiff.train <task> --output_dir DIR ...` (= `condiff train <task> ...`,
= `accelerate launch scripts/train_<task>.py ...`). Arguments are parsed before torch is imported."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from pathlib import Path

from condiff.engine.args import DefaultsHelpFormatter, add_engine_arguments, command_line
from condiff.tasks import TASKS


def task_class(name: str) -> type:
    """The Task class registered as `name` in `condiff.tasks.TASKS`."""
    if name not in TASKS:
        raise SystemExit(f"error: unknown task {name!r}; the tasks are {', '.join(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_parser(task: type) -> argparse.ArgumentParser:
    """The task's flags, then the engine's, with the task's engine defaults applied."""
    p = argparse.ArgumentParser(
        prog=f"condiff train {task.name}",
        description=task.description,
        formatter_class=DefaultsHelpFormatter,
    )
    task.add_arguments(p)
    add_engine_arguments(p)
    p.set_defaults(**task.defaults)
    return p


def run(argv: list[str]) -> Path:
    """Parse `[task, *flags]` and train; return the output folder (exceptions propagate)."""
    return fit(*parse(argv))


def fit(task_cls: type, args: argparse.Namespace, parser: argparse.ArgumentParser) -> Path:
    from condiff.engine.trainer import Trainer

    command = command_line(parser, args, f"scripts/train_{task_cls.name}.py")
    return Trainer(task_cls(args), args, command=command).fit()


def parse(argv: list[str]) -> tuple[type, argparse.Namespace, argparse.ArgumentParser]:
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: condiff train <task> [flags]   (tasks: {', '.join(TASKS)}; `<task> --help` for its flags)")
        raise SystemExit(0 if argv else 2)
    task_cls = task_class(argv[0])
    parser = build_parser(task_cls)
    return task_cls, parser.parse_args(argv[1:]), parser


def main(argv: list[str] | None = None) -> Path:
    """Exit status: 0 done (or stopped by SIGTERM after a checkpoint), 1 error with a one-line message, 2 bad
    command line, 130 stopped by Ctrl-C after a checkpoint. Returns the output folder."""
    import faulthandler

    if hasattr(faulthandler, "register"):  # `kill -USR1 <pid>` prints every thread's stack (a hung run)
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    argv = sys.argv[1:] if argv is None else list(argv)
    parsed = parse(argv)
    from condiff.engine.checkpoints import CheckpointError
    from condiff.engine.export import OutputWriteError
    from condiff.engine.signals import TrainingInterrupted
    from condiff.engine.trainer import NonFiniteLossError
    from condiff.hub import HubUploadError

    try:
        return fit(*parsed)
    except TrainingInterrupted as stop:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"condiff: {stop}", flush=True)
        raise SystemExit(130 if stop.signum == signal.SIGINT else 0) from None
    except (ValueError, HubUploadError, NonFiniteLossError, CheckpointError, OutputWriteError) as err:
        raise SystemExit(f"error: {err}") from err


if __name__ == "__main__":
    main()
