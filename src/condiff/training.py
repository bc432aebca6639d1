"""Train a class-conditional diffusion model with classifier-free guidance (label dropout), with Accelerate.

`scripts/train_cfg.py` is a thin wrapper over `main()`; `accelerate launch` and `torchrun` both work.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from condiff.checkpoints import checkpoint_step, prune_checkpoints, resolve_resume_path
from condiff.data import load_labelled_images, pil_to_model_tensor
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
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("outputs")
    g.add_argument("--output_dir", required=True)
    g.add_argument("--logging_dir", default="logs", help="relative to --output_dir")
    g.add_argument("--report_to", default="tensorboard", help='"tensorboard", "wandb", "all" or "none"')
    g.add_argument("--checkpointing_steps", type=int, default=500)
    g.add_argument("--checkpoints_total_limit", type=int, default=None)
    g.add_argument("--resume_from_checkpoint", default=None, help='"latest" or a checkpoint folder')
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
    """Reject bad arguments with a message naming the flag, before any data or model work."""

    def positive(name: str, value, allow_none: bool = False) -> None:
        if value is None and allow_none:
            return
        if value is None or value < 1:
            raise ValueError(f"--{name} must be an integer >= 1, got {value}")

    if not 0.0 <= args.p_uncond <= 1.0 or math.isnan(args.p_uncond):
        raise ValueError(f"--p_uncond must be in [0, 1], got {args.p_uncond}")
    for name in (
        "resolution",
        "train_batch_size",
        "num_epochs",
        "gradient_accumulation_steps",
        "layers_per_block",
        "num_train_timesteps",
        "checkpointing_steps",
        "validation_steps",
        "validation_images_per_class",
        "validation_inference_steps",
    ):
        positive(name, getattr(args, name))
    for name in ("max_train_steps", "checkpoints_total_limit", "max_train_samples"):
        positive(name, getattr(args, name), allow_none=True)
    if not (args.learning_rate > 0 and math.isfinite(args.learning_rate)):
        raise ValueError(f"--learning_rate must be a finite number > 0, got {args.learning_rate}")
    if any(c < 1 or c % args.norm_num_groups for c in args.block_out_channels):
        raise ValueError(
            f"--block_out_channels {args.block_out_channels} must be positive multiples of --norm_num_groups "
            f"({args.norm_num_groups})"
        )
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


def drop_labels(labels: torch.Tensor, null_class: int, p_uncond: float) -> torch.Tensor:
    """Replace each label by the null class with probability p_uncond, per sample (CFG training)."""
    drop = torch.rand(labels.shape, device=labels.device) < p_uncond
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


def train(args: argparse.Namespace) -> Path:
    """Run training; return the folder of the saved pipeline."""
    check_args(args)
    output_dir = Path(args.output_dir)
    # Accelerate only picks gloo data parallelism on CPU when told to; torchrun on a CPU-only machine needs it.
    cpu_only_distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available()
    accelerator = Accelerator(
        cpu=cpu_only_distributed,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)
        ),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(args.seed)

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
    channels = 1 if dataset[0][args.image_column].mode in ("L", "1", "I", "F", "I;16") else 3
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
    ema = None
    if args.use_ema:
        ema = EMAModel(
            unet.parameters(),
            decay=args.ema_max_decay,
            use_ema_warmup=True,
            inv_gamma=args.ema_inv_gamma,
            power=args.ema_power,
            model_cls=type(unet),
            model_config=unet.config,
        )

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
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )
    unet, optimizer, dataloader, lr_scheduler = accelerator.prepare(unet, optimizer, dataloader, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)

    if accelerator.is_main_process and args.report_to != "none":
        accelerator.init_trackers("condiff-cfg", config={k: str(v) for k, v in vars(args).items()})

    global_step, first_epoch, skip_batches = 0, 0, 0
    resume_path = resolve_resume_path(output_dir, args.resume_from_checkpoint)
    if args.resume_from_checkpoint and resume_path is None:
        accelerator.print("No checkpoint found to resume from; starting a new run.")
    if resume_path is not None:
        accelerator.print(f"Resuming from {resume_path}")
        accelerator.load_state(str(resume_path))
        global_step = checkpoint_step(resume_path)
        first_epoch = global_step // updates_per_epoch
        skip_batches = (global_step % updates_per_epoch) * args.gradient_accumulation_steps

    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(
        f"{len(dataset)} examples, {data.num_classes} classes, {num_epochs} epochs, {max_train_steps} steps, "
        f"batch {total_batch} in all, {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M parameters",
        main_process_only=True,
    )
    progress = tqdm(range(max_train_steps), initial=global_step, disable=not accelerator.is_local_main_process)
    progress.set_description("steps")
    start = time.perf_counter()
    images_seen = 0
    for epoch in range(first_epoch, num_epochs):
        unet.train()
        batches = accelerator.skip_first_batches(dataloader, skip_batches) if skip_batches else dataloader
        if hasattr(dataloader, "set_epoch"):
            dataloader.set_epoch(epoch)
        skip_batches = 0
        for batch in batches:
            clean, labels = batch["images"], batch["labels"]
            noise = torch.randn_like(clean)
            timesteps = torch.randint(
                0, noise_scheduler.config.num_train_timesteps, (clean.shape[0],), device=clean.device
            )
            noisy = noise_scheduler.add_noise(clean, noise, timesteps)
            target = diffusion_target(noise_scheduler, clean, noise, timesteps)
            with accelerator.accumulate(unet):
                pred = unet(noisy, timesteps, class_labels=drop_labels(labels, null_class, args.p_uncond)).sample
                loss = F.mse_loss(pred.float(), target.float())
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            images_seen += clean.shape[0]

            if not accelerator.sync_gradients:
                continue
            if ema is not None:
                ema.step(unet.parameters())
            global_step += 1
            progress.update(1)
            logs = {"loss": loss.detach().item(), "lr": lr_scheduler.get_last_lr()[0], "epoch": epoch}
            if ema is not None:
                logs["ema_decay"] = ema.cur_decay_value
            progress.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}")
            accelerator.log(logs, step=global_step)

            if global_step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, unet, output_dir, global_step, args.checkpoints_total_limit)
            if global_step % args.validation_steps == 0 and accelerator.is_main_process:
                run_validation(accelerator, unet, ema, noise_scheduler, data, args, global_step)
            if global_step >= max_train_steps:
                break
        if global_step >= max_train_steps:
            break
    progress.close()
    accelerator.wait_for_everyone()
    train_seconds = time.perf_counter() - start
    checksums = parameter_checksums(accelerator, accelerator.unwrap_model(unet))

    pipeline_dir = output_dir
    if accelerator.is_main_process:
        pipeline = build_pipeline(accelerator, unet, ema, noise_scheduler, data)
        pipeline.save_pretrained(pipeline_dir, safe_serialization=True)
        grid_path = output_dir / "samples" / "final.png"
        save_validation_grid(
            pipeline,
            data.num_classes,
            args.validation_images_per_class,
            args.validation_guidance_scale,
            args.validation_inference_steps,
            grid_path,
        )
        summary = {
            "global_step": global_step,
            "train_seconds_this_run": round(train_seconds, 1),
            "images_per_second": round(images_seen * accelerator.num_processes / max(train_seconds, 1e-9), 1),
            "num_processes": accelerator.num_processes,
            "rank_parameter_checksums": checksums,
            "final_loss": logs["loss"] if global_step else None,
        }
        (output_dir / "training_summary.json").write_text(json.dumps(summary, indent=2))
        (output_dir / "training_args.json").write_text(json.dumps(vars(args), indent=2))
        from condiff.hub import write_model_card

        write_model_card(
            pipeline_dir, args, dataset_description(args), summary, sample_grid=grid_path, command=command_line(args)
        )
        accelerator.print(f"Saved the pipeline to {pipeline_dir} ({json.dumps(summary)})")
    accelerator.end_training()
    if args.push_to_hub and accelerator.is_main_process:
        from condiff.hub import push_pipeline_folder

        push_pipeline_folder(pipeline_dir, args.hub_model_id, token=args.hub_token, private=args.hub_private_repo)
    return pipeline_dir


def dataset_description(args: argparse.Namespace) -> str:
    if args.dataset_name:
        return args.dataset_name
    if args.train_data_dir:
        return f"image folder {args.train_data_dir}"
    return "mnist-10k (9,000-image train split vendored in condiff)"


def save_checkpoint(accelerator: Accelerator, unet, output_dir: Path, step: int, total_limit: int | None) -> None:
    """Accelerate state (model, optimizer, LR schedule, EMA, RNG) to output_dir/checkpoint-<step>."""
    path = output_dir / f"checkpoint-{step}"
    checksums = parameter_checksums(accelerator, unet)
    if max(checksums) - min(checksums) > 1e-6 * max(1.0, abs(checksums[0])):
        raise RuntimeError(f"data-parallel ranks are out of sync at step {step}: parameter sums {checksums}")
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        prune_checkpoints(output_dir, total_limit)
    accelerator.wait_for_everyone()


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
    from condiff.hub import HubUploadError

    args = build_parser().parse_args(argv)
    try:
        train(args)
    except (ValueError, HubUploadError) as err:
        raise SystemExit(f"error: {err}") from err
