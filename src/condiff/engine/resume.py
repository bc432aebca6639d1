"""`--resume_from_checkpoint`: restore the newest loadable complete checkpoint, agreed by every rank."""

from __future__ import annotations

from pathlib import Path

from accelerate.logging import get_logger

from condiff.engine.checkpoints import (
    EMA_FILE,
    CheckpointError,
    list_checkpoints,
    load_ema,
    load_tracked,
    read_marker,
    resume_candidates,
)
from condiff.engine.distributed import all_ranks_agree

logger = get_logger(__name__)


def resume(trainer) -> Path | None:
    """Load the first candidate checkpoint that every rank can load; set `trainer.global_step`; return its path."""
    acc, args = trainer.accelerator, trainer.args
    candidates = resume_candidates(trainer.output_dir, args.resume_from_checkpoint)
    if args.resume_from_checkpoint and not candidates:
        present = list_checkpoints(trainer.output_dir)
        if present:  # the README's promise: an error, never a silent restart over them
            raise CheckpointError(
                f"--resume_from_checkpoint latest: none of the checkpoints in {trainer.output_dir} "
                f"({', '.join(p.name for p in present)}) is complete and intact (see the warnings above); nothing "
                "was changed. Move them away, or pass --overwrite_output_dir, to start a new run."
            )
        acc.print(f"No checkpoint in {trainer.output_dir} yet; starting a new run.")
    for path in candidates:
        error = None
        try:
            trainer.global_step = load_checkpoint(trainer, path)
        except Exception as err:  # a corrupt file shows up as many exception types (safetensors, torch, json)
            error = err
        if all_ranks_agree(acc, error is None):
            acc.print(f"Resumed from {path} at step {trainer.global_step}")
            trainer.last_saved = trainer.global_step
            return path
        logger.warning(f"could not load checkpoint {path}: {error}", main_process_only=False)
    if candidates:
        raise CheckpointError(
            f"none of the checkpoints in {trainer.output_dir} could be loaded "
            f"({', '.join(p.name for p in candidates)}); see the warnings above. Move them away to start a new run."
        )
    return None


def load_checkpoint(trainer, path: Path) -> int:
    """Restore a complete checkpoint (Accelerate state + condiff's EMA); return its global step."""
    acc, args, ema = trainer.accelerator, trainer.args, trainer.ema
    info = read_marker(path)
    if info.get("task", trainer.task.name) != trainer.task.name:
        raise CheckpointError(f"{path} was written by the {info['task']!r} task, not {trainer.task.name!r}")
    acc.load_state(str(path))
    trainer.cpu_seconds_before = float(info.get("cpu_seconds", 0.0))
    load_tracked(path, trainer.modules.tracked)
    if ema is not None:
        if (path / EMA_FILE).is_file():
            load_ema(path / EMA_FILE, ema)
        else:
            logger.warning(f"{path} has no EMA (trained with --no-use_ema); the EMA starts from the loaded weights")
            params = [p for m in trainer.modules.trained.values() for p in acc.unwrap_model(m).parameters()]
            ema.shadow_params = [p.detach().clone() for p in params]
            ema.optimization_step = 0
    same = {
        "num_processes": acc.num_processes,
        "train_batch_size": args.train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "seed": args.seed,
    }
    changed = {k: (info.get(k), v) for k, v in same.items() if info.get(k, v) != v}
    if changed:
        logger.warning(
            f"{path.name} was written with different settings {changed} (saved, now): the step count and the "
            "learning-rate schedule continue, but the data order differs from an uninterrupted run.",
            main_process_only=True,
        )
    return int(info["step"])
