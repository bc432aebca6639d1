"""Training throughput: `condiff train cfg` (what `scripts/train_cfg.py` runs) against a bare PyTorch loop over
the same UNet, optimiser, batch, data and loss, measured in steady state by differencing.

Both loops get their settings from one place: the flags below (`SHARED_FLAGS`, train_cfg.py's names) are parsed
from the benchmark's `--train-args`, used by the bare loop and passed explicitly to `condiff train cfg`, so the two
train the same thing whatever train_cfg's defaults are; other flags go to train_cfg only. train_cfg is timed by
its own `training_summary.json` (`train_seconds_this_run`: the loop only, without data loading or saving).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from condiff.pipelines.checks import unet_sample_size
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from condiff.argtypes import float_in, int_in
from condiff.data import image_channels, load_labelled_images, pil_to_model_tensor
from condiff.diffusion import denoising_loss, drop_labels
from condiff.evaluation.reports import Log
from condiff.evaluation.sampling import synchronize
from condiff.models import class_conditional_unet

# flag -> (argparse type, default): what both loops share (the UNet and noise schedule come from the pipeline)
SHARED_FLAGS: dict[str, tuple[Callable[[str], Any], Any]] = {
    "train_batch_size": (int_in(1), 64),
    "max_train_samples": (int_in(1), None),
    "dataset_name": (str, None),
    "dataset_config_name": (str, None),
    "train_data_dir": (str, None),
    "image_column": (str, "image"),
    "label_column": (str, "label"),
    "learning_rate": (float_in(0.0), 1e-3),
    "lr_scheduler": (str, "cosine"),
    "lr_warmup_steps": (int_in(0), 200),
    "adam_beta1": (float_in(0.0, 1.0), 0.9),
    "adam_beta2": (float_in(0.0, 1.0), 0.999),
    "adam_weight_decay": (float_in(0.0), 1e-4),
    "adam_epsilon": (float_in(0.0), 1e-8),
    "max_grad_norm": (float_in(0.0), 1.0),
    "p_uncond": (float_in(0.0, 1.0), 0.1),
    "seed": (int_in(0), 0),
}
# the EMA of condiff's CFG defaults, with warm-up; passed to train_cfg as --ema_max_decay, --ema_inv_gamma, --ema_power
EMA_SETTINGS = {"decay": 0.9999, "use_ema_warmup": True, "inv_gamma": 1.0, "power": 0.75}
EMA_ARGV = ["--ema_max_decay", "0.9999", "--ema_inv_gamma", "1.0", "--ema_power", "0.75"]
# no trackers, checkpoints or validation in timed runs
QUIET_TRAIN_ARGV = ["--report_to", "none", "--checkpointing_steps", "1000000000", "--validation_steps", "1000000000"]
QUIET_TRAIN_ARGV += ["--validation_images_per_class", "1", "--validation_inference_steps", "1"]


def parse_training_flags(train_argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Split train_cfg flags into the shared ones (checked, defaults filled in; plus `use_ema`) and the rest."""
    p = argparse.ArgumentParser(prog="--train-args", add_help=False, exit_on_error=False)
    for flag, (kind, default) in SHARED_FLAGS.items():
        p.add_argument(f"--{flag}", type=kind, default=default)
    p.add_argument("--use_ema", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--gradient_accumulation_steps", type=int, default=1)
    try:
        flags, rest = p.parse_known_args(list(train_argv))
    except argparse.ArgumentError as err:
        raise ValueError(f"--train-args: {err}") from None
    if flags.gradient_accumulation_steps != 1:
        raise ValueError("the bare loop has no gradient accumulation; use --gradient_accumulation_steps 1")
    return flags, rest


def train_cfg_argv(pipe, flags: argparse.Namespace, rest: Sequence[str] = ()) -> list[str]:
    """train_cfg.py flags for the same UNet and noise schedule as `pipe`, every shared flag, then `rest`."""
    cfg, sched = pipe.unet.config, pipe.scheduler.config
    argv = ["--block_out_channels", *(str(c) for c in cfg.block_out_channels)]
    argv += ["--layers_per_block", str(cfg.layers_per_block), "--norm_num_groups", str(cfg.norm_num_groups)]
    argv += ["--resolution", str(unet_sample_size(cfg)[0]), "--num_train_timesteps", str(sched.num_train_timesteps)]
    argv += ["--noise_schedule", sched.beta_schedule, "--prediction_type", sched.prediction_type]
    argv += ["--attention"] if any("Attn" in b for b in cfg.down_block_types) else []
    for flag in SHARED_FLAGS:
        value = getattr(flags, flag)
        argv += [] if value is None else [f"--{flag}", str(value)]
    return [*argv, "--use_ema" if flags.use_ema else "--no-use_ema", *EMA_ARGV, *QUIET_TRAIN_ARGV, *rest]


def load_training_tensors(flags: argparse.Namespace, resolution: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The training data the flags name (default: the vendored MNIST), converted once to tensors (images
    [N, C, H, W] in [-1, 1], labels [N]) as train_cfg's collate does, and the number of classes."""
    data = load_labelled_images(
        flags.dataset_name, flags.dataset_config_name, flags.train_data_dir, flags.image_column, flags.label_column
    )
    dataset = data.dataset
    if flags.max_train_samples:
        dataset = dataset.select(range(min(flags.max_train_samples, len(dataset))))
    pil = list(dataset[flags.image_column])
    images = pil_to_model_tensor(pil, resolution, image_channels(pil[0]))
    labels = torch.tensor([int(v) for v in dataset[flags.label_column]], dtype=torch.long)
    return images, labels, data.num_classes


def train_cfg_seconds(train_argv: Sequence[str], steps: int) -> float:
    """Seconds of `condiff train cfg`'s training loop for `steps` optimizer steps (in-process, in a throw-away
    output folder; from its training_summary.json)."""
    from condiff.train import main as train_main

    with tempfile.TemporaryDirectory(prefix="condiff-train-bench-") as tmp:
        try:
            train_main(["cfg", "--output_dir", tmp, "--max_train_steps", str(int(steps)), *train_argv])
        except SystemExit as stop:
            if stop.code not in (0, None):
                raise ValueError(f"condiff train cfg {' '.join(train_argv)} failed: {stop.code}") from None
        summary = json.loads((Path(tmp) / "training_summary.json").read_text())
    if summary.get("global_step", steps) != steps:
        raise RuntimeError(f"train_cfg ran {summary['global_step']} steps, expected {steps}")
    return float(summary["train_seconds_this_run"])


def _bare_setup(pipe, flags: argparse.Namespace, num_classes: int, steps: int, extras: bool, device: torch.device):
    """A fresh UNet like `pipe`'s, its training schedule and AdamW; with `extras`, the LR schedule and the EMA."""
    cfg = pipe.unet.config
    torch.manual_seed(flags.seed)
    attention = any("Attn" in b for b in cfg.down_block_types)
    unet = class_conditional_unet(
        num_classes, unet_sample_size(cfg)[0], cfg.in_channels, tuple(cfg.block_out_channels),
        cfg.layers_per_block, attention, cfg.norm_num_groups,
    ).to(device)  # fmt: skip
    unet.train()
    optimizer = torch.optim.AdamW(
        unet.parameters(),
        lr=flags.learning_rate,
        betas=(flags.adam_beta1, flags.adam_beta2),
        weight_decay=flags.adam_weight_decay,
        eps=flags.adam_epsilon,
    )
    lr_schedule = ema = None
    if extras:
        lr_schedule = get_scheduler(
            flags.lr_scheduler, optimizer, num_warmup_steps=flags.lr_warmup_steps, num_training_steps=steps
        )
        ema = EMAModel(unet.parameters(), **EMA_SETTINGS) if flags.use_ema else None
    return unet, DDPMScheduler.from_config(pipe.scheduler.config), optimizer, lr_schedule, ema


def bare_training_seconds(
    pipe,
    flags: argparse.Namespace,
    steps: int,
    data: tuple[torch.Tensor, torch.Tensor, int],
    extras: bool = False,
    device: str | torch.device | None = None,
) -> float:
    """Seconds of a bare PyTorch loop for `steps` steps: `pipe`'s UNet architecture (fresh weights) and training
    schedule, AdamW, the batch, data, label dropout and `condiff.diffusion.denoising_loss` of train_cfg, but no
    Accelerate, data loader, EMA, gradient clipping, LR schedule or logging. With `extras`, EMA, clipping and the LR
    schedule are added back (so the remaining gap is the framework's). Timed from before the first step to after
    the last, like train_cfg."""
    device = torch.device(device or next(pipe.unet.parameters()).device)
    images, labels, num_classes = (data[0].to(device), data[1].to(device), data[2])
    unet, scheduler, optimizer, lr_schedule, ema = _bare_setup(pipe, flags, num_classes, steps, extras, device)
    generator = torch.Generator(device).manual_seed(flags.seed)
    order = torch.randperm(len(labels), device=device, generator=generator)
    batch, pos = flags.train_batch_size, 0
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        if pos + batch > len(labels):
            order, pos = torch.randperm(len(labels), device=device, generator=generator), 0
        idx, pos = order[pos : pos + batch], pos + batch
        class_labels = drop_labels(labels[idx], num_classes, flags.p_uncond, generator)
        denoising_loss(unet, scheduler, images[idx], generator, class_labels=class_labels).backward()
        if extras:
            torch.nn.utils.clip_grad_norm_(unet.parameters(), flags.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        if lr_schedule is not None:
            lr_schedule.step()
        if ema is not None:
            ema.step(unet.parameters())
    synchronize(device)
    return time.perf_counter() - start


def _rate(batch: int, short: int, long: int, t_short: float, t_long: float) -> float | None:
    dt = t_long - t_short
    return (long - short) * batch / dt if dt > 0 else None


MIN_DIFFERENCE_SECONDS = 5.0


def training_throughput(
    pipe,
    train_argv: Sequence[str] = (),
    steps: tuple[int, int] = (10, 40),
    repeats: int = 1,
    bare_extras: bool = True,
    log: Log = print,
) -> dict[str, Any]:
    """Steady-state training images/s of train_cfg.py and of the bare loop(s) on `pipe`'s UNet, by differencing
    a short and a long run (after an untimed warm-up; `repeats` rounds in alternating order; the median is
    reported), and train_cfg.py's overhead: seconds per image relative to the bare loop's, minus 1."""
    short, long = (int(s) for s in steps)
    if not 1 <= short < long:
        raise ValueError(f"steps must be (short, long) with 1 <= short < long, got {steps}")
    flags, rest = parse_training_flags(train_argv)
    data = load_training_tensors(flags, unet_sample_size(pipe.unet.config)[0])
    if len(data[1]) < flags.train_batch_size:
        raise ValueError(f"the data set has {len(data[1])} rows, fewer than one batch ({flags.train_batch_size})")
    cfg_argv = train_cfg_argv(pipe, flags, rest)
    loops = {
        "train_cfg.py": lambda k: train_cfg_seconds(cfg_argv, k),
        "bare": lambda k: bare_training_seconds(pipe, flags, k, data),
    }
    if bare_extras:
        loops["bare + EMA, clip, LR schedule"] = lambda k: bare_training_seconds(pipe, flags, k, data, extras=True)
    # untimed warm-up: the process's first training steps pay one-time costs (kernel selection, lazy loading,
    # allocator growth) that would otherwise land in whichever loop runs first
    bare_training_seconds(pipe, flags, 3, data, extras=True)
    seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in loops}
    for r in range(repeats):
        # alternate the order (A B C, C B A, ...) so a drift in machine load does not favour one loop
        for name, loop in list(loops.items())[:: 1 if r % 2 == 0 else -1]:
            seconds[name].append((loop(short), loop(long)))
            log(f"training [{r + 1}/{repeats}] {name}: {short}, {long} steps in {seconds[name][-1]} s")
    return _throughput_report(seconds, flags, short, long, repeats, len(data[1]))


def _throughput_report(
    seconds: dict[str, list[tuple[float, float]]], flags, short: int, long: int, repeats: int, num_images: int
) -> dict[str, Any]:
    rows = []
    for name, pairs in seconds.items():
        rates = [_rate(flags.train_batch_size, short, long, a, b) for a, b in pairs]
        valid = [x for x in rates if x is not None]
        ips = statistics.median(valid) if valid else None
        rows.append({"name": name, "images_per_second": ips, "images_per_second_each_repeat": rates})
        rows[-1]["seconds_short_long"] = pairs
    bare = rows[1]["images_per_second"]
    for row in rows:
        ips = row["images_per_second"]
        row["overhead_vs_bare_percent"] = (bare / ips - 1) * 100 if ips and bare else None
    shortest = min(b - a for pairs in seconds.values() for a, b in pairs)
    notes = []
    if shortest < MIN_DIFFERENCE_SECONDS:
        notes.append(
            f"the long and short runs differ by only {shortest:.2f} s (timings are noisy): use more --train-steps "
            f"for a measurement (>= {MIN_DIFFERENCE_SECONDS:g} s)"
        )
    return {
        "notes": notes,
        "steps_short_long": [short, long],
        "repeats": repeats,
        "batch_size": flags.train_batch_size,
        "num_training_images": num_images,
        "use_ema": flags.use_ema,
        "rows": rows,
        "overhead_percent": rows[0]["overhead_vs_bare_percent"],
    }
