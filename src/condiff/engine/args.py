"""The engine's command-line flags (shared by every training task) and their checks.

Light on purpose (argparse only): `--help` and bad flags are answered before torch is imported.
"""

from __future__ import annotations

import argparse
import copy
import math

from condiff.argtypes import int_problem, real_problem
from condiff.files import check_writable_dir

LR_SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
MIXED_PRECISION = ("no", "fp16", "bf16")


def require_int(name: str, value, low: int = 1, high: int | None = None, allow_none: bool = False) -> None:
    """Raise ValueError naming `--name` unless `value` is an integer in low..high (or None when allowed)."""
    problem = None if value is None and allow_none else int_problem(value, low, high)
    if problem:
        raise ValueError(f"--{name} {problem}")


def require_real(name: str, value, low: float, high: float = math.inf, open_low: bool = False, open_high=False):
    """Raise ValueError naming `--name` unless `value` is a finite number in the given interval."""
    problem = real_problem(value, low, high, open_low, open_high)
    if problem:
        raise ValueError(f"--{name} {problem}")


def require_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"--{name} must be one of {tuple(choices)}, got {value!r}")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" for every option, also those without help text (argparse's own formatter shows it only
    for options with help); not when the help already states it, the default is None or the flag is a switch."""

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and action.option_strings and self._shows_default(action):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return super()._get_help_string(action) if self._shows_default(action) else action.help

    @staticmethod
    def _shows_default(action: argparse.Action) -> bool:
        default = action.default
        switch = default is False and not isinstance(action, argparse.BooleanOptionalAction)  # a store_true flag
        none = default is None or default is argparse.SUPPRESS or switch
        return not none and "default" not in (action.help or "") and action.help is not argparse.SUPPRESS


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """Optimisation, EMA, precision, checkpoint, logging, validation-cadence and Hub flags."""
    g = p.add_argument_group("optimisation (engine)")
    g.add_argument("--train_batch_size", type=int, default=64, help="per process")
    g.add_argument("--num_epochs", type=int, default=10)
    g.add_argument("--max_train_steps", type=int, default=None, help="overrides --num_epochs")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--learning_rate", type=float, default=1e-3)
    g.add_argument("--lr_scheduler", choices=LR_SCHEDULES, default="cosine")
    g.add_argument("--lr_warmup_steps", type=int, default=200)
    g.add_argument("--adam_beta1", type=float, default=0.9)
    g.add_argument("--adam_beta2", type=float, default=0.999)
    g.add_argument("--adam_weight_decay", type=float, default=1e-4)
    g.add_argument("--adam_epsilon", type=float, default=1e-8)
    g.add_argument("--max_grad_norm", type=float, default=1.0)
    g.add_argument("--use_ema", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--ema_max_decay", type=float, default=0.9999)
    g.add_argument("--ema_inv_gamma", type=float, default=1.0)
    g.add_argument("--ema_power", type=float, default=0.75)
    g.add_argument("--mixed_precision", choices=MIXED_PRECISION, default="no")
    g.add_argument(
        "--skip_nonfinite",
        action="store_true",
        help="skip (and count) an optimizer update whose loss or gradient norm is NaN/inf instead of stopping",
    )
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--dataloader_num_workers", type=int, default=0)
    g.add_argument(
        "--num_threads",
        type=int,
        default=None,
        help="torch CPU threads per process (default: torch's; under `accelerate launch`, which sets "
        "OMP_NUM_THREADS=1, the cores per local process)",
    )
    g = p.add_argument_group("outputs (engine)")
    g.add_argument("--output_dir", required=True)
    g.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="train into a folder holding an earlier run (a finished model or checkpoints, without resuming it): "
        "its checkpoints and outputs are deleted first. Without it such a folder is refused",
    )
    g.add_argument("--logging_dir", default="logs", help="relative to --output_dir")
    g.add_argument("--report_to", default="tensorboard", help='"tensorboard", "wandb", "all" or "none"')
    g.add_argument("--checkpointing_steps", type=int, default=500)
    g.add_argument("--checkpoints_total_limit", type=int, default=None)
    g.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help='"latest" (the newest complete checkpoint; incomplete or corrupt ones are skipped) or a checkpoint folder',
    )
    g.add_argument("--validation_steps", type=int, default=500, help="run the task's validation every N steps")
    g.add_argument("--push_to_hub", action="store_true")
    g.add_argument("--hub_model_id", default=None)
    g.add_argument("--hub_token", default=None)
    g.add_argument("--hub_private_repo", action="store_true")


def check_engine_args(args: argparse.Namespace) -> None:
    """Reject bad engine flags with a message naming the flag (works on namespaces built in code too)."""
    for name in ("train_batch_size", "num_epochs", "gradient_accumulation_steps", "checkpointing_steps"):
        require_int(name, getattr(args, name))
    require_int("validation_steps", args.validation_steps)
    require_int("lr_warmup_steps", args.lr_warmup_steps, 0)
    require_int("dataloader_num_workers", args.dataloader_num_workers, 0)
    require_int("seed", args.seed, 0, 2**32 - 1)
    for name in ("max_train_steps", "checkpoints_total_limit", "num_threads"):
        require_int(name, getattr(args, name), allow_none=True)
    require_real("learning_rate", args.learning_rate, 0.0, open_low=True)
    require_real("adam_beta1", args.adam_beta1, 0.0, 1.0, open_high=True)
    require_real("adam_beta2", args.adam_beta2, 0.0, 1.0, open_high=True)
    require_real("adam_weight_decay", args.adam_weight_decay, 0.0)
    require_real("adam_epsilon", args.adam_epsilon, 0.0, open_low=True)
    require_real("max_grad_norm", args.max_grad_norm, 0.0, open_low=True)
    require_real("ema_max_decay", args.ema_max_decay, 0.0, 1.0)
    require_real("ema_inv_gamma", args.ema_inv_gamma, 0.0, open_low=True)
    require_real("ema_power", args.ema_power, 0.0, open_low=True)
    require_choice("lr_scheduler", args.lr_scheduler, LR_SCHEDULES)
    require_choice("mixed_precision", args.mixed_precision, MIXED_PRECISION)
    if args.push_to_hub and not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (for example 'your-name/mnist-cfg')")
    check_writable_dir(args.output_dir, "--output_dir")


def command_line(parser: argparse.ArgumentParser, args: argparse.Namespace, script: str) -> str:
    """The `accelerate launch` command that reproduces `args` (flags that differ from their defaults)."""
    import shlex

    parts = ["accelerate", "launch", script, "--output_dir", str(args.output_dir)]
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "output_dir", "hub_token"):
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default:
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse.BooleanOptionalAction):
            parts.append(flag if value else "--no-" + flag[2:])
        elif action.nargs == 0:
            parts.append(flag)
        else:
            parts += [flag, *(str(v) for v in (value if isinstance(value, list) else [value]))]
    return shlex.join(parts)
