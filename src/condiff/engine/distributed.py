"""Accelerate set-up and the few collective decisions every rank must take together."""

from __future__ import annotations

import gc
import os
import time

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration


def make_accelerator(args) -> Accelerator:
    """The Accelerator for the engine's flags: gloo on CPU under torchrun, seedable data order, trackers."""
    # Accelerate only picks gloo data parallelism on CPU when told to; torchrun on a CPU-only machine needs it.
    cpu_only_distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available()
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # Accelerate keeps its state in process-wide singletons; a second run in the same process (tests,
        # benchmarks) with another --mixed_precision or accumulation would otherwise fail with "already initialized".
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state()
        GradientState._reset_state()
    return Accelerator(
        cpu=cpu_only_distributed,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(args.output_dir), logging_dir=os.path.join(str(args.output_dir), args.logging_dir)
        ),
        # The data order is a function of (seed, epoch): resumed runs see the same batches as uninterrupted ones.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        # The LR schedule counts optimizer updates whatever the number of processes, so a checkpoint resumes at
        # the right learning rate under a different world size (the loop steps it once per update).
        step_scheduler_with_optimizer=False,
    )


def cpu_threads_for(requested: int | None, environ: dict | None = None) -> int | None:
    """The torch CPU thread count to set, or None to leave torch's own.

    `accelerate launch` exports OMP_NUM_THREADS=1 unless told otherwise, which halved training speed on a CPU
    (35 vs 73 images/s here). When the launcher (recognised by its ACCELERATE_DYNAMO_BACKEND variable) left one
    thread, use the cores per local process instead; an explicit `--num_threads` always wins.
    """
    env = os.environ if environ is None else environ
    if requested:
        return requested
    if env.get("ACCELERATE_DYNAMO_BACKEND") is not None and env.get("OMP_NUM_THREADS") == "1":
        local = max(int(env.get("LOCAL_WORLD_SIZE", "1")), 1)
        return max((os.cpu_count() or 1) // local, 1)
    return None


def batch_generator(seed: int, process_index: int, epoch: int, batch: int, device) -> torch.Generator:
    """The random stream of one micro-batch: a function of the seed, the process and the batch's place only.

    Why not the global RNG that Accelerate saves and restores: DataLoader iterators also draw from it when an epoch
    starts, so a run resumed in the middle of an epoch would draw different noise from an uninterrupted one. With a
    per-batch seed, resumed runs are exact and the checkpoint needs no RNG state of ours.
    """
    state = np.random.SeedSequence([seed, process_index, epoch, batch]).generate_state(1, np.uint64)[0]
    generator = torch.Generator(device=device)
    generator.manual_seed(int(state) >> 1)
    return generator


def agreed_max(accelerator: Accelerator, value: int) -> int:
    """The largest `value` over all processes (so that every rank takes the same decision at the same step)."""
    if accelerator.num_processes == 1:
        return int(value)
    return int(accelerator.gather(torch.tensor([int(value)], device=accelerator.device)).max().item())


def all_ranks_agree(accelerator: Accelerator, ok: bool) -> bool:
    """True on every process when `ok` is true on every process."""
    return agreed_max(accelerator, 0 if ok else 1) == 0


def parameter_checksums(accelerator: Accelerator, modules) -> list[float]:
    """Sum of all parameters of `modules` on every rank (gathered); data-parallel ranks must agree."""
    local = torch.stack([p.detach().double().sum() for m in modules for p in m.parameters()]).sum().reshape(1)
    return accelerator.gather(local.to(accelerator.device)).tolist()


def process_cpu_seconds(accelerator: Accelerator) -> float:
    """CPU time (user + system, all threads) of every training process since it started, summed over ranks
    (DataLoader worker processes are not counted)."""
    local = torch.tensor([time.process_time()], dtype=torch.float64, device=accelerator.device)
    return float(accelerator.reduce(local, reduction="sum").item())


def end_training(accelerator: Accelerator) -> None:
    """Free the prepared (DDP) models, then end Accelerate's trackers and process group.

    The caller drops its own references first. Order matters with gloo: if the DDP model outlives the process
    group (Accelerate's `end_training` destroys it), the model's release later runs the process group's C++
    destructor with the GIL held, while a gloo worker thread may be waiting for the GIL to free a finished
    collective's tensors: a deadlock at exit, seen here in about 1 of 5 two-process CPU runs (PyTorch issue #56297).
    Freed first, the model drops a reference the Python process group object still backs, and destroying that
    object releases the GIL.
    """
    accelerator.free_memory()  # drops Accelerate's references to the models, optimizer, scheduler, data loader
    gc.collect()
    accelerator.end_training()
