"""The Accelerate training loop every condiff task runs on.

Reliability, for every task:
- Checkpoints are crash-safe (`engine.checkpoints`); `--resume_from_checkpoint latest` uses the newest complete one
  and falls back to older ones when a newer one cannot be loaded.
- Resuming is exact: the data order is a function of (seed, epoch) (Accelerate's seedable sampler plus
  `skip_first_batches`), and each micro-batch's random stream a function of (seed, process, epoch, batch).
- SIGTERM and SIGINT stop after the current optimizer step with a checkpoint (`TrainingInterrupted`).
- A non-finite loss or gradient norm stops training naming the step (`NonFiniteLossError`), or with
  `--skip_nonfinite` skips that update; every rank takes the same decision.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path

import torch
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from condiff.engine.args import check_engine_args
from condiff.engine.checkpoints import clean_stale_temporaries, newest_complete_checkpoint, save_checkpoint
from condiff.engine.distributed import (
    agreed_max,
    batch_generator,
    cpu_threads_for,
    end_training,
    make_accelerator,
    parameter_checksums,
    process_cpu_seconds,
)
from condiff.engine.ema import make_ema
from condiff.engine.export import log_validation, push_outputs, save_outputs
from condiff.engine.output_dir import check_output_dir, clear_earlier_run
from condiff.engine.resume import resume
from condiff.engine.run_lock import RunLock, exit_with_launcher
from condiff.engine.signals import StopRequest, TrainingInterrupted
from condiff.engine.task import Modules, Task

logger = get_logger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm became NaN or inf; the message names the step and the checkpoint left intact."""


def warmup_warning(warmup_steps: int, total_steps: int, schedule: str, learning_rate: float) -> str | None:
    """The one-line warning for a warm-up as long as the run (the learning rate never reaches its peak), or None."""
    if schedule == "constant" or warmup_steps < total_steps:
        return None
    return (
        f"--lr_warmup_steps {warmup_steps} is >= the run's {total_steps} steps: the learning rate never leaves "
        f"the warm-up (at most {learning_rate * (total_steps - 1) / warmup_steps:.3g}, not --learning_rate "
        f"{learning_rate:g}); lower --lr_warmup_steps for a run this short"
    )


class Trainer:
    """Runs one `Task` with the engine flags in `args` (see `engine.args`); `fit()` returns the output folder."""

    def __init__(self, task: Task, args, command: str = ""):
        self.task, self.args, self.command = task, args, command
        self.output_dir = Path(args.output_dir)
        self.global_step, self.skipped_updates, self.images_seen = 0, 0, 0
        self.last_saved: int | None = None
        self.logs: dict = {}
        self.cpu_seconds_before = 0.0  # CPU time of the runs this one resumed (from the checkpoint's marker)

    def fit(self) -> Path:
        """Train; raises ValueError, NonFiniteLossError, CheckpointError, OutputWriteError or TrainingInterrupted."""
        check_engine_args(self.args)
        self.task.check_args()
        check_output_dir(self.args)  # after the flags, before any data, model or write
        exit_with_launcher()
        threads_before = torch.get_num_threads()
        try:
            with RunLock(self.output_dir):
                return self._fit()
        finally:  # --num_threads is for this run: a notebook or test process keeps its own count afterwards
            torch.set_num_threads(threads_before)

    def _fit(self) -> Path:
        threads = cpu_threads_for(self.args.num_threads)
        if threads:
            torch.set_num_threads(threads)
        self.accelerator = make_accelerator(self.args)
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
        set_seed(self.args.seed)
        if self.accelerator.is_main_process:
            if getattr(self.args, "overwrite_output_dir", False):  # absent from namespaces built in code
                clear_earlier_run(self.output_dir, self.args.logging_dir)
            clean_stale_temporaries(self.output_dir)
        self.accelerator.wait_for_everyone()  # no rank lists checkpoints before the main one has cleared them
        self._prepare()
        resumed_from = resume(self)
        start = time.perf_counter()
        interrupted = self._train()
        train_seconds = time.perf_counter() - start
        self.accelerator.wait_for_everyone()
        if interrupted is not None:
            self._release()
            raise interrupted
        checksums = parameter_checksums(self.accelerator, self._unwrapped())
        cpu_seconds = process_cpu_seconds(self.accelerator)
        if self.accelerator.is_main_process:
            summary = self._summary(train_seconds, checksums, resumed_from, cpu_seconds)
            save_outputs(self, summary)
        self._release()
        if self.args.push_to_hub and self.accelerator.is_main_process:
            push_outputs(self.output_dir, self.args)
        return self.output_dir

    def _prepare(self) -> None:
        """Data loader, modules, optimizer, LR schedule and EMA, prepared by Accelerate."""
        args, acc = self.args, self.accelerator
        self.dataset = self.task.dataset()
        dataloader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=args.train_batch_size,
            shuffle=True,
            drop_last=len(self.dataset) >= args.train_batch_size,
            num_workers=args.dataloader_num_workers,
            collate_fn=self.task.collate,
        )
        self.modules = self.task.build()
        # The same Parameter objects before and after `prepare` (it wraps modules, moving weights in place):
        # listed once for the optimizer, clipping and the EMA.
        params = self.trained_params = [p for m in self.modules.trained.values() for p in m.parameters()]
        self.ema = make_ema(args, params)
        optimizer = torch.optim.AdamW(
            params,
            lr=args.learning_rate,
            betas=(args.adam_beta1, args.adam_beta2),
            weight_decay=args.adam_weight_decay,
            eps=args.adam_epsilon,
        )
        self.updates_per_epoch = math.ceil(len(dataloader) / acc.num_processes / args.gradient_accumulation_steps)
        self.max_train_steps = args.max_train_steps or args.num_epochs * self.updates_per_epoch
        self.num_epochs = math.ceil(self.max_train_steps / self.updates_per_epoch)
        self.task.plan(self.max_train_steps)
        warning = warmup_warning(args.lr_warmup_steps, self.max_train_steps, args.lr_scheduler, args.learning_rate)
        if warning:
            logger.warning(warning, main_process_only=True)
        lr_scheduler = get_scheduler(
            args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps, num_training_steps=self.max_train_steps
        )
        names = list(self.modules.trained)
        prepared = acc.prepare(*self.modules.trained.values(), optimizer, dataloader, lr_scheduler)
        self.modules.trained = dict(zip(names, prepared[: len(names)]))
        self.optimizer, self.dataloader, self.lr_scheduler = prepared[len(names) :]
        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(acc.mixed_precision, torch.float32)
        for module in self.modules.frozen.values():
            module.requires_grad_(False).eval().to(acc.device, dtype=weight_dtype)
        for module in self.modules.tracked.values():  # float32 like the trained weights they follow
            module.requires_grad_(False).to(acc.device)
        if self.ema is not None:
            self.ema.to(acc.device)  # saved by engine.checkpoints (safetensors), not registered with Accelerate
        if acc.is_main_process and args.report_to != "none":
            acc.init_trackers(f"condiff-{self.task.name}", config={k: str(v) for k, v in vars(args).items()})
        logger.info(
            f"{len(self.dataset)} examples, {self.num_epochs} epochs, {self.max_train_steps} steps, batch "
            f"{args.train_batch_size * acc.num_processes * args.gradient_accumulation_steps} in all, "
            f"{sum(p.numel() for p in params) / 1e6:.2f}M trained parameters",
            main_process_only=True,
        )

    def _train(self) -> TrainingInterrupted | None:
        """The loop over epochs and micro-batches; returns how it was interrupted, if it was."""
        acc, args = self.accelerator, self.args
        first_epoch = self.global_step // self.updates_per_epoch
        skip = (self.global_step % self.updates_per_epoch) * args.gradient_accumulation_steps
        self.progress = tqdm(
            range(self.max_train_steps), initial=self.global_step, disable=not acc.is_local_main_process
        )
        self.progress.set_description("steps")
        with StopRequest() as stop:
            for epoch in range(first_epoch, self.num_epochs):
                if self.global_step >= self.max_train_steps:
                    break
                for module in self.modules.trained.values():
                    module.train()
                self.dataloader.set_epoch(epoch)  # before skip_first_batches: the skipping loader inherits it
                batches = acc.skip_first_batches(self.dataloader, skip) if skip else self.dataloader
                self.window_bad = False
                for batch_index, batch in enumerate(batches, start=skip):
                    if not self._micro_batch(batch, epoch, batch_index):
                        continue
                    interrupted = self._after_update(epoch, batch_index, stop)
                    if interrupted is not None:
                        self.progress.close()
                        return interrupted
                    if self.global_step >= self.max_train_steps:
                        break
                skip = 0
        self.progress.close()
        return None

    def _micro_batch(self, batch, epoch: int, batch_index: int) -> bool:
        """Forward and backward of one micro-batch; True when it completed an optimizer update (a step)."""
        acc, args = self.accelerator, self.args
        trained = list(self.modules.trained.values())
        g = batch_generator(args.seed, acc.process_index, epoch, batch_index, acc.device)
        self.task.global_step = self.global_step  # e.g. for tasks that alternate what an update trains
        with acc.accumulate(*trained):
            loss, extra = self.task.loss(self.modules, batch, g)
            # Decided on all ranks together, so that they all skip (or stop) at the same batch.
            if agreed_max(acc, 0 if torch.isfinite(loss).item() else 1):
                self._non_finite("loss", loss)
            if not self.window_bad:
                acc.backward(loss)
            if acc.sync_gradients and not self.window_bad:
                grad_norm = acc.clip_grad_norm_(self.trained_params, args.max_grad_norm)
                # Gradients are already averaged over ranks here, so every rank sees the same norm.
                if grad_norm is not None and not torch.isfinite(grad_norm).item():
                    self._non_finite("gradient norm", grad_norm)
            if acc.sync_gradients:
                if not self.window_bad:
                    self.optimizer.step()
                self.lr_scheduler.step()
            self.optimizer.zero_grad()
        self.images_seen += min(args.train_batch_size, len(self.dataset))
        if not acc.sync_gradients:
            return False
        self.global_step += 1
        if self.window_bad:
            # The whole accumulation window is dropped: no update, no EMA step; the LR schedule moves on.
            self.skipped_updates += 1
            logger.warning(
                f"step {self.global_step}: non-finite loss or gradient; update skipped", main_process_only=True
            )
            self.window_bad = False
        else:
            if self.ema is not None:
                self.ema.step(self.trained_params)
            self.task.after_update(self.modules)
        self.logs = {"loss": loss.detach().item(), **extra, "lr": self.lr_scheduler.get_last_lr()[0], "epoch": epoch}
        return True

    def _non_finite(self, what: str, value: torch.Tensor) -> None:
        self.window_bad = True
        if not self.args.skip_nonfinite:
            kept = newest_complete_checkpoint(self.output_dir, verify_contents=True)
            local = value.detach().float().item()
            where = f"{local}" if not math.isfinite(local) else "not finite on another process"
            raise NonFiniteLossError(
                f"the training {what} is {where} at step {self.global_step + 1}; training stopped. The last good "
                f"checkpoint, {kept if kept else '(none written yet)'}, is kept. Lower --learning_rate, check the "
                "data, or pass --skip_nonfinite to skip such updates."
            )

    def _after_update(self, epoch: int, batch_index: int, stop: StopRequest) -> TrainingInterrupted | None:
        """Log, checkpoint on schedule or on a signal, validate on schedule."""
        acc, args = self.accelerator, self.args
        self.progress.update(1)
        if self.ema is not None:
            self.logs["ema_decay"] = self.ema.cur_decay_value
        if self.skipped_updates:
            self.logs["skipped_nonfinite_steps"] = self.skipped_updates
        self.progress.set_postfix(loss=f"{self.logs['loss']:.4f}", lr=f"{self.logs['lr']:.2e}")
        acc.log(self.logs, step=self.global_step)
        signum = agreed_max(acc, stop.signum)
        if self.global_step % args.checkpointing_steps == 0 or (signum and self.last_saved != self.global_step):
            self.checkpoint(epoch, batch_index + 1)
        if signum:
            saved = self.output_dir / f"checkpoint-{self.last_saved}" if self.last_saved is not None else None
            return TrainingInterrupted(signum, self.global_step, saved)
        # Not at the last step: the export renders (or measures) the same averaged weights right after.
        last = self.global_step >= self.max_train_steps
        if self.global_step % args.validation_steps == 0 and not last and acc.is_main_process:
            log_validation(self, self.task.validate(self.averaged_modules(), self.global_step, self.output_dir))
        return None

    def checkpoint(self, epoch: int, batches_in_epoch: int) -> Path:
        """Save a crash-safe checkpoint of the current step (every process calls this)."""
        checksums = parameter_checksums(self.accelerator, self._unwrapped())
        if max(checksums) - min(checksums) > 1e-6 * max(1.0, abs(checksums[0])):
            raise RuntimeError(f"data-parallel ranks are out of sync at step {self.global_step}: sums {checksums}")
        info = {
            "epoch": epoch,
            "batches_in_epoch": batches_in_epoch,
            "train_batch_size": self.args.train_batch_size,
            "gradient_accumulation_steps": self.args.gradient_accumulation_steps,
            "seed": self.args.seed,
            "skipped_nonfinite_steps": self.skipped_updates,
            "task": self.task.name,
            "cpu_seconds": self.cpu_seconds_before + process_cpu_seconds(self.accelerator),
        }
        limit = self.args.checkpoints_total_limit
        tracked = self.modules.tracked
        path = save_checkpoint(self.accelerator, self.output_dir, self.global_step, self.ema, info, limit, tracked)
        self.last_saved = self.global_step
        return path

    def _unwrapped(self) -> list[torch.nn.Module]:
        return [self.accelerator.unwrap_model(m) for m in self.modules.trained.values()]

    def averaged_modules(self) -> Modules:
        """Copies of the trained modules holding the EMA weights (the live ones when EMA is off), in eval mode."""
        copies = {name: copy.deepcopy(m).eval() for name, m in zip(self.modules.trained, self._unwrapped())}
        if self.ema is not None:
            self.ema.copy_to([p for m in copies.values() for p in m.parameters()])
        return Modules(trained=copies, frozen=self.modules.frozen, tracked=self.modules.tracked)

    def _summary(
        self, train_seconds: float, checksums: list[float], resumed_from: Path | None, cpu_seconds: float
    ) -> dict:
        acc = self.accelerator
        return {
            "task": self.task.name,
            "global_step": self.global_step,
            "train_seconds_this_run": round(train_seconds, 4),
            "images_per_second": round(self.images_seen * acc.num_processes / max(train_seconds, 1e-9), 1),
            "cpu_seconds_this_run": round(cpu_seconds, 1),
            "cpu_seconds_total": round(self.cpu_seconds_before + cpu_seconds, 1),  # with the runs it resumed
            "num_processes": acc.num_processes,
            "torch_threads": torch.get_num_threads(),
            "rank_parameter_checksums": checksums,
            "final_loss": self.logs.get("loss"),
            "skipped_nonfinite_steps": self.skipped_updates,
            **self.task.summary_fields(),
            "resumed_from": resumed_from.name if resumed_from else None,
        }

    def _release(self) -> None:
        self.modules.trained = {}
        self.optimizer = self.lr_scheduler = self.dataloader = None
        end_training(self.accelerator)
