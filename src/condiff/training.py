"""Train a class-conditional diffusion model with classifier-free guidance (label dropout), with Accelerate.

`scripts/train_cfg.py` is a thin wrapper over `main()`; `accelerate launch` and `torchrun` both work.

Reliability (issue 4):
- Checkpoints are crash-safe (`condiff.checkpoints`): written under a temporary name, completed with a marker,
  renamed. `--resume_from_checkpoint latest` uses the newest complete one and skips incomplete or corrupt ones.
- Resuming is exact: the data order is a function of (seed, epoch) (Accelerate's seedable sampler, plus
  `skip_first_batches` inside the epoch), the noise, timesteps and label dropout of each batch are a function of
  (seed, process, epoch, batch), and model, optimizer, LR schedule, EMA and grad scaler come back from the
  checkpoint. A run killed and resumed ends with the same weights as an uninterrupted one.
- SIGTERM and SIGINT (Ctrl-C) stop after the current optimizer step with a checkpoint; `main()` then exits with
  status 0 (SIGTERM) or 130 (SIGINT). A second Ctrl-C stops at once.
- A NaN or inf loss (or gradient norm) stops training with `NonFiniteLossError` naming the step, leaving the last
  checkpoint as it is; with `--skip_nonfinite` the optimizer update is skipped instead and counted.
- Outputs are written to a temporary folder and moved into place file by file: a failed save (disk full, folder
  no longer writable) raises a clear error and never leaves a partial file in place of a good one.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from condiff.checkpoints import (
    EMA_FILE,
    TMP_PIPELINE_PREFIX,
    CheckpointError,
    all_ranks_agree,
    atomic_write_text,
    clean_stale_temporaries,
    describe_write_error,
    load_ema,
    newest_complete_checkpoint,
    read_marker,
    replace_files,
    resume_candidates,
    save_checkpoint,
)
from condiff.data import BAD_IMAGE_POLICIES, check_images, load_labelled_images, pil_to_model_tensor
from condiff.models import (
    NOISE_SCHEDULES,
    PREDICTION_TYPES,
    class_conditional_unet,
    default_sampling_scheduler,
    training_scheduler,
)
from condiff.pipelines import ClassConditionalDDPMPipeline

logger = get_logger(__name__)
LR_SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
MAX_RESOLUTION = 4096
MAX_IMAGES_PER_CALL = 65536  # the pipeline's limit (pipelines/labels.py)


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm became NaN or inf; the message names the step and the checkpoint left intact."""


class OutputWriteError(RuntimeError):
    """The trained pipeline or its files could not be written; files already in the output folder are intact."""


class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT stopped training after a checkpoint was saved."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        where = f"checkpoint saved to {checkpoint}" if checkpoint else "no checkpoint could be saved"
        super().__init__(f"stopped by {name} at step {step}; {where}. Continue with --resume_from_checkpoint latest.")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a class-conditional diffusion model with classifier-free guidance.")
    g = p.add_argument_group("data")
    g.add_argument("--dataset_name", default=None, help="a `datasets` name or local data set folder (default: MNIST)")
    g.add_argument("--dataset_config_name", default=None)
    g.add_argument("--train_data_dir", default=None, help="an image folder (imagefolder layout: one folder per class)")
    g.add_argument("--image_column", default="image")
    g.add_argument("--label_column", default="label")
    g.add_argument("--cache_dir", default=None)
    g.add_argument("--max_train_samples", type=int, default=None, help="use only the first N examples")
    g.add_argument("--resolution", type=int, default=28)
    g.add_argument("--dataloader_num_workers", type=int, default=0)
    g.add_argument(
        "--on_bad_image",
        choices=BAD_IMAGE_POLICIES,
        default="error",
        help="undecodable (corrupt, truncated) images: stop with an error naming them (default) or skip and count them",
    )
    g = p.add_argument_group("model")
    g.add_argument("--block_out_channels", type=int, nargs="+", default=[32, 64, 64])
    g.add_argument("--layers_per_block", type=int, default=1)
    g.add_argument("--attention", action="store_true", help="add attention blocks at the lower resolutions")
    g.add_argument("--norm_num_groups", type=int, default=8)
    g = p.add_argument_group("diffusion")
    g.add_argument("--p_uncond", type=float, default=0.1, help="probability of replacing a label by the null class")
    g.add_argument("--prediction_type", choices=PREDICTION_TYPES, default="epsilon")
    g.add_argument("--noise_schedule", choices=NOISE_SCHEDULES, default="squaredcos_cap_v2")
    g.add_argument("--num_train_timesteps", type=int, default=1000)
    g = p.add_argument_group("optimisation")
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
    g.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default="no")
    g.add_argument(
        "--skip_nonfinite",
        action="store_true",
        help="skip (and count) an optimizer update whose loss or gradient norm is NaN/inf instead of stopping",
    )
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("outputs")
    g.add_argument("--output_dir", required=True)
    g.add_argument("--logging_dir", default="logs", help="relative to --output_dir")
    g.add_argument("--report_to", default="tensorboard", help='"tensorboard", "wandb", "all" or "none"')
    g.add_argument("--checkpointing_steps", type=int, default=500)
    g.add_argument("--checkpoints_total_limit", type=int, default=None)
    g.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help='"latest" (the newest complete checkpoint; incomplete or corrupt ones are skipped) or a checkpoint folder',
    )
    g.add_argument("--validation_steps", type=int, default=500, help="sample a grid of every class every N steps")
    g.add_argument("--validation_images_per_class", type=int, default=8)
    g.add_argument("--validation_guidance_scale", type=float, default=3.0)
    g.add_argument("--validation_inference_steps", type=int, default=20)
    g.add_argument("--push_to_hub", action="store_true")
    g.add_argument("--hub_model_id", default=None)
    g.add_argument("--hub_token", default=None)
    g.add_argument("--hub_private_repo", action="store_true")
    return p


def command_line(args: argparse.Namespace) -> str:
    """The `accelerate launch` command that reproduces `args` (flags that differ from their defaults)."""
    import shlex

    parts = ["accelerate", "launch", "scripts/train_cfg.py", "--output_dir", str(args.output_dir)]
    for action in build_parser()._actions:
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


def check_args(args: argparse.Namespace) -> None:
    """Reject bad arguments with a message naming the flag, before any data or model work.

    Works on a parsed namespace as well as on one built in code (wrong types give a ValueError naming the flag).
    """

    def integer(name: str, low: int = 1, high: int | None = None, allow_none: bool = False) -> None:
        value = getattr(args, name)
        if value is None and allow_none:
            return
        ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        if not ok or value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in {low}..{high}"
            raise ValueError(f"--{name} must be an integer {bounds}, got {value!r}")

    def real(name: str, low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False) -> None:
        value = getattr(args, name)
        ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) and math.isfinite(value)
        if ok:
            ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not ok:
            lo, hi = ("(" if low_open else "[") + f"{low:g}", f"{high:g}" + (")" if high_open else "]")
            raise ValueError(f"--{name} must be in {lo}, {hi} (a finite number), got {value!r}")

    real("p_uncond", 0.0, 1.0)
    for name in (
        "train_batch_size",
        "num_epochs",
        "gradient_accumulation_steps",
        "layers_per_block",
        "num_train_timesteps",
        "checkpointing_steps",
        "validation_steps",
        "validation_images_per_class",
        "validation_inference_steps",
        "norm_num_groups",
    ):
        integer(name)
    integer("resolution", 1, MAX_RESOLUTION)
    integer("validation_images_per_class", 1, MAX_IMAGES_PER_CALL)
    integer("validation_inference_steps", 1, args.num_train_timesteps)
    integer("lr_warmup_steps", 0)
    integer("dataloader_num_workers", 0)
    integer("seed", 0, 2**32 - 1)
    for name in ("max_train_steps", "checkpoints_total_limit", "max_train_samples"):
        integer(name, allow_none=True)
    real("learning_rate", 0.0, low_open=True)
    real("adam_beta1", 0.0, 1.0, high_open=True)
    real("adam_beta2", 0.0, 1.0, high_open=True)
    real("adam_weight_decay", 0.0)
    real("adam_epsilon", 0.0, low_open=True)
    real("max_grad_norm", 0.0, low_open=True)
    real("ema_max_decay", 0.0, 1.0)
    real("ema_inv_gamma", 0.0, low_open=True)
    real("ema_power", 0.0, low_open=True)
    real("validation_guidance_scale", 0.0)
    channels = args.block_out_channels
    if (
        not isinstance(channels, (list, tuple))
        or not channels
        or any(not isinstance(c, int) or isinstance(c, bool) or c < 1 or c % args.norm_num_groups for c in channels)
    ):
        raise ValueError(
            f"--block_out_channels {channels} must be positive multiples of --norm_num_groups ({args.norm_num_groups})"
        )
    if args.on_bad_image not in BAD_IMAGE_POLICIES:
        raise ValueError(f"--on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {args.on_bad_image!r}")
    if args.push_to_hub and not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (for example 'your-name/mnist-cfg')")
    check_writable_dir(args.output_dir, "--output_dir")


def check_writable_dir(path: str | os.PathLike, flag: str) -> None:
    """Create `path` if needed and prove it is writable with a throw-away file."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ValueError(f"{flag} {str(path)!r} cannot be written: {err.strerror or err}") from err


def diffusion_target(scheduler, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the network learns to predict, for the scheduler's prediction type."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(clean, noise, timesteps)
    if kind == "sample":
        return clean
    raise ValueError(f"unsupported prediction_type {kind!r}")


def drop_labels(
    labels: torch.Tensor, null_class: int, p_uncond: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Replace each label by the null class with probability p_uncond, per sample (CFG training)."""
    drop = torch.rand(labels.shape, device=labels.device, generator=generator) < p_uncond
    return torch.where(drop, torch.full_like(labels, null_class), labels)


@torch.no_grad()
def denoising_loss(unet, scheduler, clean: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> float:
    """The training objective on a fixed batch with fixed noise and timesteps (for before/after comparisons)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(clean.shape, generator=g)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (clean.shape[0],), generator=g)
    noisy = scheduler.add_noise(clean, noise, timesteps)
    pred = unet(noisy, timesteps, class_labels=labels).sample
    return F.mse_loss(pred, diffusion_target(scheduler, clean, noise, timesteps)).item()


def batch_generator(seed: int, process_index: int, epoch: int, batch: int, device) -> torch.Generator:
    """The random stream of one micro-batch (noise, timesteps, label dropout): a function of the seed, the process
    and the batch's place in the data only.

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


class StopRequest:
    """SIGTERM / SIGINT handlers that only set a flag; the training loop checks it after each optimizer step.

    Installed only from the main thread (Python allows signal handlers nowhere else); the previous handlers come
    back on exit. A second SIGINT raises KeyboardInterrupt at once.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = self.signum or signum


def parameter_checksums(accelerator: Accelerator, model: torch.nn.Module) -> list[float]:
    """Sum of all parameters on every rank (gathered); data-parallel ranks must agree."""
    local = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    return accelerator.gather(local.to(accelerator.device)).tolist()


def make_collate(image_column: str, label_column: str, resolution: int, channels: int):
    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        images = pil_to_model_tensor([r[image_column] for r in rows], resolution, channels)
        labels = torch.tensor([int(r[label_column]) for r in rows], dtype=torch.long)
        return {"images": images, "labels": labels}

    return collate


def save_validation_grid(pipeline, num_classes: int, per_class: int, guidance_scale: float, steps: int, path: Path):
    """Sample `per_class` images of every class with a fixed seed; save a grid (rows = classes) and return it."""
    from diffusers.utils import make_image_grid

    labels = [c for c in range(num_classes) for _ in range(per_class)]
    generator = torch.Generator(device="cpu").manual_seed(0)
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline(
        label=labels, guidance_scale=guidance_scale, num_inference_steps=steps, generator=generator, output_type="pil"
    ).images
    grid = make_image_grid(images, rows=num_classes, cols=per_class)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return grid


def make_ema(args: argparse.Namespace, unet: torch.nn.Module) -> EMAModel | None:
    """The EMA of `unet`'s weights that `args` asks for (None with --no-use_ema)."""
    if not args.use_ema:
        return None
    return EMAModel(
        unet.parameters(),
        decay=args.ema_max_decay,
        use_ema_warmup=True,
        inv_gamma=args.ema_inv_gamma,
        power=args.ema_power,
        model_cls=type(unet),
        model_config=unet.config,
    )


def load_training_data(args: argparse.Namespace):
    """The labelled data set `args` names, and its first `--max_train_samples` rows (all when unset)."""
    data = load_labelled_images(
        args.dataset_name,
        args.dataset_config_name,
        args.train_data_dir,
        args.image_column,
        args.label_column,
        cache_dir=args.cache_dir,
    )
    dataset = data.dataset
    if args.max_train_samples:
        dataset = dataset.select(range(min(args.max_train_samples, len(dataset))))
    return data, dataset


def train(args: argparse.Namespace) -> Path:
    """Run training; return the folder of the saved pipeline.

    Raises ValueError (bad arguments or data), NonFiniteLossError, CheckpointError, OutputWriteError, or
    TrainingInterrupted (SIGTERM / SIGINT, after saving a checkpoint).
    """
    check_args(args)
    on_bad_image = getattr(args, "on_bad_image", "error")
    skip_nonfinite = getattr(args, "skip_nonfinite", False)
    output_dir = Path(args.output_dir)
    # Accelerate only picks gloo data parallelism on CPU when told to; torchrun on a CPU-only machine needs it.
    cpu_only_distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available()
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # Accelerate keeps its state in process-wide singletons; a second train() in the same process (tests,
        # benchmarks) with another --mixed_precision or accumulation would otherwise fail with "already initialized".
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state()
        GradientState._reset_state()
    accelerator = Accelerator(
        cpu=cpu_only_distributed,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)
        ),
        # The data order is a function of (seed, epoch): resumed runs see the same batches as uninterrupted ones.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        # The LR schedule counts optimizer updates whatever the number of processes, so a checkpoint resumes at
        # the right learning rate under a different world size (the loop steps it once per update).
        step_scheduler_with_optimizer=False,
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(args.seed)
    if accelerator.is_main_process:
        clean_stale_temporaries(output_dir)

    data, dataset = load_training_data(args)
    dataset, image_check = check_images(dataset, args.image_column, on_bad_image)
    channels = image_check.channels
    if args.validation_images_per_class * data.num_classes > MAX_IMAGES_PER_CALL:
        raise ValueError(
            f"--validation_images_per_class {args.validation_images_per_class} x {data.num_classes} classes exceeds "
            f"the pipeline's {MAX_IMAGES_PER_CALL} images per call"
        )
    dataloader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.train_batch_size,
        shuffle=True,
        drop_last=len(dataset) >= args.train_batch_size,
        num_workers=args.dataloader_num_workers,
        collate_fn=make_collate(args.image_column, args.label_column, args.resolution, channels),
    )

    unet = class_conditional_unet(
        data.num_classes,
        args.resolution,
        channels,
        tuple(args.block_out_channels),
        args.layers_per_block,
        args.attention,
        args.norm_num_groups,
    )
    noise_scheduler = training_scheduler(args.noise_schedule, args.prediction_type, args.num_train_timesteps)
    null_class = data.num_classes
    ema = make_ema(args, unet)

    optimizer = torch.optim.AdamW(
        unet.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    updates_per_epoch = math.ceil(len(dataloader) / accelerator.num_processes / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_epochs * updates_per_epoch
    num_epochs = math.ceil(max_train_steps / updates_per_epoch)
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps,
        num_training_steps=max_train_steps,
    )
    unet, optimizer, dataloader, lr_scheduler = accelerator.prepare(unet, optimizer, dataloader, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)  # saved by condiff.checkpoints (safetensors), not registered with Accelerate

    if accelerator.is_main_process and args.report_to != "none":
        accelerator.init_trackers("condiff-cfg", config={k: str(v) for k, v in vars(args).items()})

    global_step, resumed_from = 0, None
    candidates = resume_candidates(output_dir, args.resume_from_checkpoint)
    if args.resume_from_checkpoint and not candidates:
        accelerator.print("No complete checkpoint found to resume from; starting a new run.")
    for path in candidates:
        error = None
        try:
            global_step = load_checkpoint(accelerator, path, unet, ema, args)
        except Exception as err:  # a corrupt file shows up as many exception types (safetensors, torch, json)
            error = err
        if all_ranks_agree(accelerator, error is None):
            resumed_from = path
            break
        logger.warning(f"could not load checkpoint {path}: {error}", main_process_only=False)
    if candidates and resumed_from is None:
        raise CheckpointError(
            f"none of the checkpoints in {output_dir} could be loaded ({', '.join(p.name for p in candidates)}); "
            "see the warnings above. Move them away to start a new run."
        )
    if resumed_from is not None:
        accelerator.print(f"Resumed from {resumed_from} at step {global_step}")
    first_epoch = global_step // updates_per_epoch
    skip_batches = (global_step % updates_per_epoch) * args.gradient_accumulation_steps

    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(
        f"{len(dataset)} examples ({len(image_check.bad)} undecodable skipped), {data.num_classes} classes, "
        f"{channels} channel(s), {num_epochs} epochs, {max_train_steps} steps, batch {total_batch} in all, "
        f"{sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M parameters",
        main_process_only=True,
    )
    progress = tqdm(range(max_train_steps), initial=global_step, disable=not accelerator.is_local_main_process)
    progress.set_description("steps")
    start = time.perf_counter()
    images_seen, skipped_updates, last_saved = 0, 0, global_step if resumed_from else None
    logs: dict = {}

    def checkpoint(epoch: int, batches_in_epoch: int) -> Path:
        checksums = parameter_checksums(accelerator, accelerator.unwrap_model(unet))
        if max(checksums) - min(checksums) > 1e-6 * max(1.0, abs(checksums[0])):
            raise RuntimeError(f"data-parallel ranks are out of sync at step {global_step}: parameter sums {checksums}")
        info = {
            "epoch": epoch,
            "batches_in_epoch": batches_in_epoch,
            "train_batch_size": args.train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "seed": args.seed,
            "skipped_nonfinite_steps": skipped_updates,
        }
        return save_checkpoint(accelerator, output_dir, global_step, ema, info, args.checkpoints_total_limit)

    interrupted: TrainingInterrupted | None = None
    pred = loss = None
    with StopRequest() as stop:
        for epoch in range(first_epoch, num_epochs):
            if global_step >= max_train_steps or interrupted:
                break
            unet.train()
            dataloader.set_epoch(epoch)  # before skip_first_batches: the skipping loader inherits the epoch
            batches = accelerator.skip_first_batches(dataloader, skip_batches) if skip_batches else dataloader
            window_bad = False
            for batch_index, batch in enumerate(batches, start=skip_batches):
                clean, labels = batch["images"], batch["labels"]
                g = batch_generator(args.seed, accelerator.process_index, epoch, batch_index, clean.device)
                noise = torch.randn(clean.shape, generator=g, device=clean.device, dtype=clean.dtype)
                timesteps = torch.randint(
                    0, noise_scheduler.config.num_train_timesteps, (clean.shape[0],), generator=g, device=clean.device
                )
                noisy = noise_scheduler.add_noise(clean, noise, timesteps)
                target = diffusion_target(noise_scheduler, clean, noise, timesteps)
                class_labels = drop_labels(labels, null_class, args.p_uncond, generator=g)
                with accelerator.accumulate(unet):
                    pred = unet(noisy, timesteps, class_labels=class_labels).sample
                    loss = F.mse_loss(pred.float(), target.float())
                    # Decided on all ranks together, so that they all skip (or stop) at the same batch.
                    if agreed_max(accelerator, 0 if torch.isfinite(loss).item() else 1):
                        window_bad = True
                        if not skip_nonfinite:
                            raise NonFiniteLossError(nonfinite_message("loss", loss, global_step + 1, output_dir))
                    if not window_bad:
                        accelerator.backward(loss)
                    if accelerator.sync_gradients and not window_bad:
                        grad_norm = accelerator.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
                        # Gradients are already averaged over ranks here, so every rank sees the same norm.
                        if grad_norm is not None and not torch.isfinite(grad_norm).item():
                            window_bad = True
                            if not skip_nonfinite:
                                raise NonFiniteLossError(
                                    nonfinite_message("gradient norm", grad_norm, global_step + 1, output_dir)
                                )
                    if accelerator.sync_gradients:
                        if not window_bad:
                            optimizer.step()
                        lr_scheduler.step()
                    optimizer.zero_grad()
                images_seen += clean.shape[0]

                if not accelerator.sync_gradients:
                    continue
                global_step += 1
                if window_bad:
                    # The whole accumulation window is dropped: no update, no EMA step; the LR schedule moves on.
                    skipped_updates += 1
                    logger.warning(
                        f"step {global_step}: non-finite loss or gradient; update skipped", main_process_only=True
                    )
                    window_bad = False
                elif ema is not None:
                    ema.step(unet.parameters())
                progress.update(1)
                logs = {"loss": loss.detach().item(), "lr": lr_scheduler.get_last_lr()[0], "epoch": epoch}
                if ema is not None:
                    logs["ema_decay"] = ema.cur_decay_value
                if skipped_updates:
                    logs["skipped_nonfinite_steps"] = skipped_updates
                progress.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}")
                accelerator.log(logs, step=global_step)

                signum = agreed_max(accelerator, stop.signum)
                if global_step % args.checkpointing_steps == 0 or (signum and last_saved != global_step):
                    checkpoint(epoch, batch_index + 1)
                    last_saved = global_step
                if signum:
                    saved = output_dir / f"checkpoint-{last_saved}" if last_saved is not None else None
                    interrupted = TrainingInterrupted(signum, global_step, saved)
                    break
                if global_step % args.validation_steps == 0 and accelerator.is_main_process:
                    run_validation(accelerator, unet, ema, noise_scheduler, data, args, global_step)
                if global_step >= max_train_steps:
                    break
            skip_batches = 0
    progress.close()
    accelerator.wait_for_everyone()
    pipeline_dir = output_dir
    if interrupted is not None:
        unet = optimizer = lr_scheduler = dataloader = batches = pred = loss = None
        end_training(accelerator)
        raise interrupted
    train_seconds = time.perf_counter() - start
    checksums = parameter_checksums(accelerator, accelerator.unwrap_model(unet))

    if accelerator.is_main_process:
        summary = {
            "global_step": global_step,
            "train_seconds_this_run": round(train_seconds, 4),
            "images_per_second": round(images_seen * accelerator.num_processes / max(train_seconds, 1e-9), 1),
            "num_processes": accelerator.num_processes,
            "rank_parameter_checksums": checksums,
            "final_loss": logs.get("loss"),
            "skipped_nonfinite_steps": skipped_updates,
            "skipped_bad_images": len(image_check.bad),
            "resumed_from": resumed_from.name if resumed_from else None,
        }
        save_outputs(accelerator, unet, ema, noise_scheduler, data, args, summary, pipeline_dir)
        accelerator.print(f"Saved the pipeline to {pipeline_dir} ({json.dumps(summary)})")
    unet = optimizer = lr_scheduler = dataloader = batches = pred = loss = None
    end_training(accelerator)
    if args.push_to_hub and accelerator.is_main_process:
        from condiff.hub import push_pipeline_folder

        push_pipeline_folder(pipeline_dir, args.hub_model_id, token=args.hub_token, private=args.hub_private_repo)
    return pipeline_dir


def end_training(accelerator: Accelerator) -> None:
    """Free the prepared (DDP) model, then end Accelerate's trackers and process group.

    The caller drops its own references first. Order matters with gloo: if the DDP model outlives the process
    group (Accelerate's `end_training` destroys it), the model's release later runs the process group's C++
    destructor with the GIL held, while a gloo worker thread may be waiting for the GIL to free a finished
    collective's tensors: a deadlock at exit, seen here in about 1 of 5 two-process CPU runs (PyTorch issue #56297).
    Freed first, the model drops a reference the Python process group object still backs, and destroying that
    object releases the GIL.
    """
    import gc

    accelerator.free_memory()  # drops Accelerate's references to the model, optimizer, scheduler, data loader
    gc.collect()
    accelerator.end_training()


def nonfinite_message(what: str, value: torch.Tensor, step: int, output_dir: Path) -> str:
    kept = newest_complete_checkpoint(output_dir)
    local = value.detach().float().item()
    where = f"{local}" if not math.isfinite(local) else "not finite on another process"
    return (
        f"the training {what} is {where} at step {step}; training stopped. The last good checkpoint, "
        f"{kept if kept else '(none written yet)'}, is kept. Lower --learning_rate, check the data, or pass "
        "--skip_nonfinite to skip such updates."
    )


def load_checkpoint(accelerator: Accelerator, path: Path, unet, ema, args: argparse.Namespace) -> int:
    """Restore a complete checkpoint (Accelerate state + condiff's EMA); return its global step."""
    info = read_marker(path)
    accelerator.load_state(str(path))
    if ema is not None:
        if (path / EMA_FILE).is_file():
            load_ema(path / EMA_FILE, ema)
        else:
            logger.warning(f"{path} has no EMA (trained with --no-use_ema); the EMA starts from the loaded weights")
            ema.shadow_params = [p.detach().clone() for p in accelerator.unwrap_model(unet).parameters()]
            ema.optimization_step = 0
    same = {
        "num_processes": accelerator.num_processes,
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


def save_outputs(accelerator, unet, ema, noise_scheduler, data, args, summary: dict, output_dir: Path) -> None:
    """The final pipeline, sample grid, summary, arguments and model card (main process only).

    Everything is written to a temporary folder inside `output_dir` first and then moved into place one file at a
    time (an atomic rename each): a failed save (disk full, folder no longer writable) leaves the files of a
    previous run and the checkpoints as they were.
    """
    from condiff.hub import write_model_card

    tmp = Path(tempfile.mkdtemp(prefix=TMP_PIPELINE_PREFIX, dir=output_dir))
    try:
        pipeline = build_pipeline(accelerator, unet, ema, noise_scheduler, data)
        pipeline.save_pretrained(tmp, safe_serialization=True)
        grid_path = tmp / "samples" / "final.png"
        save_validation_grid(
            pipeline,
            data.num_classes,
            args.validation_images_per_class,
            args.validation_guidance_scale,
            args.validation_inference_steps,
            grid_path,
        )
        atomic_write_text(tmp / "training_summary.json", json.dumps(summary, indent=2))
        atomic_write_text(tmp / "training_args.json", json.dumps(vars(args), indent=2, default=str))
        write_model_card(
            tmp, args, dataset_description(args), summary, sample_grid=grid_path, command=command_line(args)
        )
        replace_files(tmp, output_dir)
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputWriteError(
            describe_write_error(err, f"the trained pipeline to {output_dir}", output_dir)
            + ". Files already there and the checkpoints are untouched."
        ) from err


def dataset_description(args: argparse.Namespace) -> str:
    if args.dataset_name:
        return args.dataset_name
    if args.train_data_dir:
        return f"image folder {args.train_data_dir}"
    return "mnist-10k (9,000-image train split vendored in condiff)"


def build_pipeline(accelerator, unet, ema, noise_scheduler, data) -> ClassConditionalDDPMPipeline:
    """A pipeline holding a copy of the (EMA) weights, with the default sampling scheduler."""
    model = accelerator.unwrap_model(unet)
    copy = type(model).from_config(model.config)
    copy.load_state_dict(model.state_dict())
    if ema is not None:
        ema.copy_to(copy.parameters())
    copy.to(accelerator.device).eval()
    id2label = dict(enumerate(data.label_names))
    return ClassConditionalDDPMPipeline(
        unet=copy, scheduler=default_sampling_scheduler(noise_scheduler), id2label=id2label
    )


def run_validation(accelerator, unet, ema, noise_scheduler, data, args, step: int) -> None:
    import numpy as np

    pipeline = build_pipeline(accelerator, unet, ema, noise_scheduler, data)
    grid = save_validation_grid(
        pipeline,
        data.num_classes,
        args.validation_images_per_class,
        args.validation_guidance_scale,
        args.validation_inference_steps,
        Path(args.output_dir) / "samples" / f"step-{step:07d}.png",
    )
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            array = np.asarray(grid.convert("RGB"))
            tracker.writer.add_image("validation", array, step, dataformats="HWC")
    unet.train()


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point. Exit status: 0 done (or stopped by SIGTERM after a checkpoint), 1 error with a
    one-line message, 2 bad command line (argparse), 130 stopped by Ctrl-C after a checkpoint."""
    import faulthandler

    from condiff.hub import HubUploadError

    if hasattr(faulthandler, "register"):  # `kill -USR1 <pid>` prints every thread's stack (a hung run)
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    args = build_parser().parse_args(argv)
    try:
        train(args)
    except TrainingInterrupted as stop:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"condiff: {stop}", flush=True)
        raise SystemExit(130 if stop.signum == signal.SIGINT else 0) from None
    except (ValueError, HubUploadError, NonFiniteLossError, CheckpointError, OutputWriteError) as err:
        raise SystemExit(f"error: {err}") from err
