"""Compute efficiency (issue 3, benchmark 3): FLOPs per UNet forward, the machine's measured matmul peak, the
fraction of it achieved while sampling and training, and the training throughput of `train_cfg.py` against a
bare PyTorch loop over the same UNet, batch and data, all in one run.

Training throughput is measured in steady state by differencing: each loop runs a short and a long number of
steps, and images/s = (long - short) * batch / (seconds(long) - seconds(short)), so start-up and warm-up costs
(first-step allocations, data loader start) cancel. `train_cfg.py` is run in-process through
`condiff.training.train` and timed by its own `training_summary.json` (`train_seconds_this_run`, the training
loop only, without data loading, saving or the final sample grid).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from condiff.benchmarking import (
    Log,
    _pyplot,
    add_common_arguments,
    apply_quick,
    check_name,
    check_out_dir,
    default_num_inference_steps,
    generate_textbook_samples,
    load_pipeline,
    machine_info,
    markdown_table,
    pipeline_device,
    synchronize,
    write_report,
)

__all__ = [
    "unet_forward_flops",
    "training_flops_per_image",
    "matmul_peak",
    "sampling_throughput",
    "textbook_throughput",
    "train_args_for",
    "load_training_tensors",
    "train_cfg_seconds",
    "bare_training_seconds",
    "training_throughput",
    "run_compute_benchmark",
    "compute_markdown",
    "plot_compute",
    "compute_main",
]


# --- FLOPs and peak -------------------------------------------------------------------------------------------


def _example_inputs(unet, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, (tuple, list)) else (cfg.sample_size,) * 2
    x = torch.randn(batch_size, cfg.in_channels, *size, device=device, dtype=unet.dtype)
    t = torch.full((batch_size,), 10, device=device)  # the timestep value does not change the work
    labels = torch.zeros(batch_size, dtype=torch.long, device=device)
    return x, t, labels


def unet_forward_flops(unet, batch_size: int = 1) -> int:
    """FLOPs of one UNet forward at `batch_size` (torch.utils.flop_counter: matmuls and convolutions, 2 per
    multiply-add; norms and activations are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(unet.parameters()).device
    x, t, labels = _example_inputs(unet, batch_size, device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        unet(x, t, class_labels=labels)
    return int(counter.get_total_flops())


def training_flops_per_image(unet, batch_size: int = 8) -> float:
    """FLOPs of a training step's forward + backward per image (counted at `batch_size`; the optimizer's
    elementwise work is not counted). The UNet's gradients are cleared afterwards."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(unet.parameters()).device
    x, t, labels = _example_inputs(unet, batch_size, device)
    was_training = unet.training
    unet.train()
    with FlopCounterMode(display=False) as counter:
        loss = F.mse_loss(unet(x, t, class_labels=labels).sample, torch.zeros_like(x))
        loss.backward()
    unet.zero_grad(set_to_none=True)
    unet.train(was_training)
    return counter.get_total_flops() / batch_size


def matmul_peak(n: int = 2048, reps: int = 5, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The machine's measured fp32 peak: `reps` timed n x n x n matmuls (after one warm-up) on `device` with the
    current torch thread count. `flops_per_second` is the best rep's rate, `median_flops_per_second` the
    median's."""
    if n < 1 or reps < 1:
        raise ValueError(f"n and reps must be >= 1, got {n} and {reps}")
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device)
    b = torch.randn(n, n, generator=g).to(device)
    torch.mm(a, b)
    synchronize(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        times.append(time.perf_counter() - start)
    flops = 2.0 * n**3
    return {
        "n": n,
        "reps": reps,
        "dtype": "float32",
        "flops_per_matmul": flops,
        "flops_per_second": flops / min(times),
        "median_flops_per_second": flops / statistics.median(times),
    }


# --- sampling throughput --------------------------------------------------------------------------------------


def sampling_throughput(
    pipe, batch_size: int, guidance_scale: float = 3.0, min_seconds: float = 5.0, num_inference_steps=None
) -> dict[str, Any]:
    """Images/s and UNet image-forwards/s of `pipe(...)` at `batch_size` (one untimed warm-up call, then calls
    until `min_seconds` have passed, at least one)."""
    labels = [i % pipe.num_classes for i in range(batch_size)]
    kwargs = {} if num_inference_steps is None else {"num_inference_steps": num_inference_steps}
    device = pipeline_device(pipe)
    pipe.set_progress_bar_config(disable=True)
    pipe(label=labels, guidance_scale=guidance_scale, num_inference_steps=2, output_type="pt")
    calls, nfe = 0, []
    synchronize(device)
    start = time.perf_counter()
    while calls == 0 or time.perf_counter() - start < min_seconds:
        pipe(label=labels, guidance_scale=guidance_scale, output_type="pt", **kwargs)
        nfe.append(pipe.last_nfe_per_image)
        calls += 1
    synchronize(device)
    wall = time.perf_counter() - start
    images_per_second = calls * batch_size / wall
    nfe_per_image = sum(nfe) / len(nfe)
    return {
        "name": f"pipeline, batch {batch_size}",
        "sampler": type(pipe.scheduler).__name__,
        "num_inference_steps": num_inference_steps or default_num_inference_steps(pipe),
        "guidance_scale": guidance_scale,
        "batch_size": batch_size,
        "num_images": calls * batch_size,
        "wall_seconds": wall,
        "images_per_second": images_per_second,
        "nfe_per_image": nfe_per_image,
        "forwards_per_second": images_per_second * nfe_per_image,
    }


def textbook_throughput(pipe, batch_size: int, timed_steps: int = 20, guidance_scale: float = 3.0) -> dict[str, Any]:
    """Image-forwards/s of the textbook sampler (two separate passes per step) over its first `timed_steps`."""
    samples = generate_textbook_samples(pipe, batch_size, guidance_scale, batch_size, max_steps=timed_steps)
    forwards = samples.nfe_per_image * batch_size
    return {
        "name": f"textbook, batch {batch_size}",
        "sampler": "DDPMScheduler, 2 separate passes/step",
        "num_inference_steps": timed_steps,
        "guidance_scale": guidance_scale,
        "batch_size": batch_size,
        "num_images": batch_size,
        "wall_seconds": samples.wall_seconds,
        "images_per_second": None,
        "nfe_per_image": samples.nfe_per_image,
        "forwards_per_second": forwards / samples.wall_seconds,
    }


# --- training throughput ------------------------------------------------------------------------------------------


def train_args_for(pipe=None, extra_argv: Sequence[str] = (), output_dir: str | Path = "unused") -> argparse.Namespace:
    """`train_cfg.py` arguments for the same UNet as `pipe` (blocks, layers, groups, resolution, attention, noise
    schedule, prediction type), without trackers, checkpoints or validation; `extra_argv` goes last."""
    from condiff.training import build_parser

    argv = ["--output_dir", str(output_dir), "--report_to", "none"]
    argv += ["--checkpointing_steps", "1000000000", "--validation_steps", "1000000000"]
    argv += ["--validation_images_per_class", "1", "--validation_inference_steps", "1"]
    if pipe is not None:
        cfg, sched = pipe.unet.config, pipe.scheduler.config
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        argv += ["--block_out_channels", *(str(c) for c in cfg.block_out_channels)]
        argv += ["--layers_per_block", str(cfg.layers_per_block), "--norm_num_groups", str(cfg.norm_num_groups)]
        argv += ["--resolution", str(size), "--num_train_timesteps", str(sched.num_train_timesteps)]
        argv += ["--noise_schedule", sched.beta_schedule, "--prediction_type", sched.prediction_type]
        if any("Attn" in b for b in cfg.down_block_types):
            argv.append("--attention")
    return build_parser().parse_args([*argv, *extra_argv])


def load_training_tensors(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The training data `train_cfg.py` would use for `args`, converted once to tensors (images [N, C, H, W] in
    [-1, 1], labels [N]) with the same function its collate uses, and the number of classes."""
    from condiff.data import pil_to_model_tensor
    from condiff.training import load_training_data

    data, dataset = load_training_data(args)
    first = dataset[0][args.image_column]
    channels = 1 if first.mode in ("L", "1", "I", "F", "I;16") else 3
    images = pil_to_model_tensor(list(dataset[args.image_column]), args.resolution, channels)
    labels = torch.tensor([int(v) for v in dataset[args.label_column]], dtype=torch.long)
    return images, labels, data.num_classes


def train_cfg_seconds(args: argparse.Namespace, steps: int) -> float:
    """Seconds of `condiff.training.train`'s training loop for `steps` optimizer steps (in-process, in a
    throw-away output folder; from its training_summary.json)."""
    from condiff.training import train

    with tempfile.TemporaryDirectory(prefix="condiff-train-bench-") as tmp:
        run = argparse.Namespace(**vars(args))
        run.output_dir, run.max_train_steps, run.resume_from_checkpoint = tmp, int(steps), None
        out = train(run)
        summary = json.loads((Path(out) / "training_summary.json").read_text())
    if summary["global_step"] != steps:
        raise RuntimeError(f"train_cfg ran {summary['global_step']} steps, expected {steps}")
    return float(summary["train_seconds_this_run"])


def bare_training_seconds(
    args: argparse.Namespace,
    steps: int,
    data: tuple[torch.Tensor, torch.Tensor, int],
    extras: bool = False,
    device: str | torch.device | None = None,
) -> float:
    """Seconds of a bare PyTorch training loop for `steps` steps: the same UNet (`class_conditional_unet` from
    `args`), AdamW settings, batch size, data tensors, label dropout, noise and timestep sampling and loss as
    `train_cfg.py`, but no Accelerate, data loader, EMA, gradient clipping, LR schedule or logging. With
    `extras`, EMA, gradient clipping and the LR schedule are added back (so the remaining gap is the
    framework's). Timed like train_cfg: from just before the first step to after the last."""
    from diffusers.optimization import get_scheduler

    from condiff.models import class_conditional_unet, training_scheduler
    from condiff.training import diffusion_target, drop_labels, make_ema

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    images, labels, num_classes = data
    torch.manual_seed(args.seed)
    unet = class_conditional_unet(
        num_classes,
        args.resolution,
        images.shape[1],
        tuple(args.block_out_channels),
        args.layers_per_block,
        args.attention,
        args.norm_num_groups,
    ).to(device)
    unet.train()
    scheduler = training_scheduler(args.noise_schedule, args.prediction_type, args.num_train_timesteps)
    optimizer = torch.optim.AdamW(
        unet.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    ema = lr_schedule = None
    if extras:
        lr_schedule = get_scheduler(
            args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps, num_training_steps=steps
        )
        ema = make_ema(args, unet)
        if ema is not None:
            ema.to(device)
    images, labels = images.to(device), labels.to(device)
    batch = args.train_batch_size
    n = len(labels)
    order = torch.randperm(n)
    pos = 0
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        if pos + batch > n:
            order, pos = torch.randperm(n), 0
        idx = order[pos : pos + batch].to(device)
        pos += batch
        clean, y = images[idx], labels[idx]
        noise = torch.randn_like(clean)
        timesteps = torch.randint(0, args.num_train_timesteps, (clean.shape[0],), device=device)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        target = diffusion_target(scheduler, clean, noise, timesteps)
        pred = unet(noisy, timesteps, class_labels=drop_labels(y, num_classes, args.p_uncond)).sample
        loss = F.mse_loss(pred.float(), target.float())
        loss.backward()
        if extras:
            torch.nn.utils.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        if lr_schedule is not None:
            lr_schedule.step()
        if ema is not None:
            ema.step(unet.parameters())
    synchronize(device)
    return time.perf_counter() - start


def check_train_argv(train_argv: Sequence[str]) -> None:
    """Reject bad train_cfg.py flags before any work (train_cfg's own checks, on a throw-away folder)."""
    from condiff.training import check_args

    with tempfile.TemporaryDirectory(prefix="condiff-train-check-") as tmp:
        check_args(train_args_for(None, train_argv, tmp))


def _rate(batch: int, short: int, long: int, t_short: float, t_long: float) -> float | None:
    dt = t_long - t_short
    return (long - short) * batch / dt if dt > 0 else None


MIN_DIFFERENCE_SECONDS = 5.0


def training_throughput(
    args: argparse.Namespace,
    steps: tuple[int, int] = (10, 40),
    repeats: int = 1,
    bare_extras: bool = True,
    log: Log = print,
) -> dict[str, Any]:
    """Steady-state training images/s of `train_cfg.py` and of the bare loop(s), by differencing a short and a
    long run (after an untimed warm-up; `repeats` rounds, in alternating order; the median is reported), and the
    overhead of train_cfg.py: seconds per image relative to the bare loop's, minus 1."""
    short, long = (int(s) for s in steps)
    if not 1 <= short < long:
        raise ValueError(f"steps must be (short, long) with 1 <= short < long, got {steps}")
    if args.gradient_accumulation_steps != 1:
        raise ValueError("the bare loop has no gradient accumulation; use --gradient_accumulation_steps 1")
    data = load_training_tensors(args)
    if len(data[1]) < args.train_batch_size:
        raise ValueError(f"the data set has {len(data[1])} rows, fewer than one batch ({args.train_batch_size})")
    loops = {
        "train_cfg.py": lambda k: train_cfg_seconds(args, k),
        "bare": lambda k: bare_training_seconds(args, k, data),
    }
    if bare_extras:
        loops["bare + EMA, clip, LR schedule"] = lambda k: bare_training_seconds(args, k, data, extras=True)
    # untimed warm-up: the process's first training steps pay one-time costs (kernel selection, lazy loading,
    # allocator growth) that would otherwise land in whichever loop runs first
    bare_training_seconds(args, 3, data, extras=True)
    seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in loops}
    for r in range(repeats):
        # alternate the order (A B C, C B A, ...) so a drift in machine load does not favour one loop
        order = list(loops.items()) if r % 2 == 0 else list(reversed(loops.items()))
        for name, loop in order:
            t_short, t_long = loop(short), loop(long)
            seconds[name].append((t_short, t_long))
            log(f"training [{r + 1}/{repeats}] {name}: {short} steps {t_short:.2f} s, {long} steps {t_long:.2f} s")
    rows = []
    for name, pairs in seconds.items():
        rates = [_rate(args.train_batch_size, short, long, a, b) for a, b in pairs]
        valid = [x for x in rates if x is not None]
        rows.append(
            {
                "name": name,
                "images_per_second": statistics.median(valid) if valid else None,
                "images_per_second_each_repeat": rates,
                "seconds_short_long": pairs,
            }
        )
    bare = rows[1]["images_per_second"]
    for row in rows:
        ips = row["images_per_second"]
        row["overhead_vs_bare_percent"] = (bare / ips - 1) * 100 if ips and bare else None
    shortest = min(b - a for pairs in seconds.values() for a, b in pairs)
    notes = []
    if shortest < MIN_DIFFERENCE_SECONDS:
        notes.append(
            f"the long and short runs differ by only {shortest:.2f} s (train_cfg.py's summary rounds to 0.1 s and "
            f"timings are noisy): use more --train-steps for a measurement (>= {MIN_DIFFERENCE_SECONDS:g} s)"
        )
    return {
        "notes": notes,
        "steps_short_long": [short, long],
        "repeats": repeats,
        "batch_size": args.train_batch_size,
        "num_training_images": len(data[1]),
        "use_ema": args.use_ema,
        "rows": rows,
        "overhead_percent": rows[0]["overhead_vs_bare_percent"],
    }


# --- the benchmark --------------------------------------------------------------------------------------------


def run_compute_benchmark(
    pipe,
    sampling_batch_sizes: Sequence[int] = (1, 32, 250),
    guidance_scale: float = 3.0,
    min_seconds: float = 5.0,
    textbook_batch_size: int = 10,
    textbook_timed_steps: int = 20,
    matmul_size: int = 2048,
    matmul_reps: int = 5,
    train_argv: Sequence[str] = (),
    train_steps: tuple[int, int] | None = (10, 40),
    train_repeats: int = 3,
    bare_extras: bool = True,
    log: Log = print,
) -> dict[str, Any]:
    """FLOPs per UNet forward (batch 1), the fp32 matmul peak, achieved FLOP/s and fraction of peak while
    sampling (pipeline at each batch size, textbook sampler) and training, and the training throughput of
    train_cfg.py vs the bare loop (`train_steps=None` skips training). Returns a JSON-able dict."""
    if any(b < 1 for b in sampling_batch_sizes):
        raise ValueError(f"sampling batch sizes must be >= 1, got {list(sampling_batch_sizes)}")
    device = pipeline_device(pipe)
    flops = unet_forward_flops(pipe.unet, 1)
    log(f"UNet forward: {flops / 1e6:.1f} MFLOP per image")
    peak = matmul_peak(matmul_size, matmul_reps, device)
    log(f"peak: {peak['flops_per_second'] / 1e9:.1f} GFLOP/s ({matmul_size}^3 fp32 matmul, best of {matmul_reps})")
    sampling = [sampling_throughput(pipe, b, guidance_scale, min_seconds) for b in sampling_batch_sizes]
    sampling.append(textbook_throughput(pipe, textbook_batch_size, textbook_timed_steps, guidance_scale))
    for row in sampling:
        row["achieved_flops_per_second"] = row["forwards_per_second"] * flops
        row["fraction_of_peak"] = row["achieved_flops_per_second"] / peak["flops_per_second"]
        log(
            f"sampling {row['name']}: {row['forwards_per_second']:.1f} forwards/s, "
            f"{row['achieved_flops_per_second'] / 1e9:.2f} GFLOP/s = {100 * row['fraction_of_peak']:.1f}% of peak"
        )
    report: dict[str, Any] = {
        "benchmark": "compute",
        "settings": {
            "sampling_batch_sizes": list(sampling_batch_sizes),
            "guidance_scale": guidance_scale,
            "min_seconds": min_seconds,
            "textbook_batch_size": textbook_batch_size,
            "textbook_timed_steps": textbook_timed_steps,
            "unet_parameters": sum(p.numel() for p in pipe.unet.parameters()),
            "unet_config": {
                k: pipe.unet.config[k]
                for k in ("sample_size", "block_out_channels", "layers_per_block", "down_block_types")
            },
        },
        "machine": machine_info(device),
        "flops_per_forward": flops,
        "flop_counter": "torch.utils.flop_counter.FlopCounterMode (matmul/conv only, 2 FLOPs per multiply-add)",
        "peak": peak,
        "sampling": sampling,
        "training": None,
    }
    if train_steps is not None:
        args = train_args_for(pipe, train_argv)
        training = training_throughput(args, train_steps, train_repeats, bare_extras, log)
        per_image = training_flops_per_image(pipe.unet, min(8, args.train_batch_size))
        training["flops_per_image_forward_backward"] = per_image
        for row in training["rows"]:
            ips = row["images_per_second"]
            row["achieved_flops_per_second"] = ips * per_image if ips else None
            row["fraction_of_peak"] = ips * per_image / peak["flops_per_second"] if ips else None
        training["train_argv"] = list(train_argv)
        report["training"] = training
        overhead = training["overhead_percent"]
        log("training overhead of train_cfg.py vs the bare loop: " + ("-" if overhead is None else f"{overhead:.1f}%"))
    return report


SAMPLING_COLUMNS = (
    ("sampler", "name", ""),
    ("steps", "num_inference_steps", "d"),
    ("NFE/img", "nfe_per_image", ".0f"),
    ("img/s", "images_per_second", ".3g"),
    ("forwards/s", "forwards_per_second", ".1f"),
    ("GFLOP/s", "achieved_gflops", ".2f"),
    ("% of peak", "percent_of_peak", ".1f"),
)
TRAINING_COLUMNS = (
    ("loop", "name", ""),
    ("img/s (steady state)", "images_per_second", ".1f"),
    ("overhead vs bare", "overhead_vs_bare_percent", "+.1f"),
    ("GFLOP/s", "achieved_gflops", ".2f"),
    ("% of peak", "percent_of_peak", ".1f"),
)


def _with_units(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        r = dict(r)
        r["achieved_gflops"] = (
            None if r.get("achieved_flops_per_second") is None else r["achieved_flops_per_second"] / 1e9
        )
        r["percent_of_peak"] = None if r.get("fraction_of_peak") is None else 100 * r["fraction_of_peak"]
        out.append(r)
    return out


def compute_markdown(report: dict[str, Any]) -> str:
    m, p, s = report["machine"], report["peak"], report["settings"]
    lines = [
        "# Compute efficiency",
        "",
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, device "
        f"{m['device']}{', ' + m['gpu'] if m.get('gpu') else ''}, 1-min load {m.get('load_average_1min')}.",
        "",
        f"- UNet ({s['unet_parameters'] / 1e6:.2f}M parameters): **{report['flops_per_forward'] / 1e6:.1f} MFLOP per "
        "forward** at batch 1 (FlopCounterMode: matmuls and convolutions).",
        f"- Measured peak: **{p['flops_per_second'] / 1e9:.1f} GFLOP/s** ({p['n']}^3 fp32 matmul, best of "
        f"{p['reps']}; median {p['median_flops_per_second'] / 1e9:.1f}).",
        "",
        *(
            [
                "- On this GPU cuDNN may run the convolutions in TF32 (torch.backends.cudnn.allow_tf32), while the "
                "peak is a plain fp32 matmul: fractions of peak are relative to fp32.",
            ]
            if m.get("tf32_cudnn")
            else []
        ),
        "",
        "## Sampling",
        "",
        markdown_table(_with_units(report["sampling"]), SAMPLING_COLUMNS),
        "",
    ]
    t = report.get("training")
    if t:
        overhead = t["overhead_percent"]
        lines += [
            "## Training",
            "",
            *(f"**Note:** {n}." for n in t.get("notes", [])),
            *([""] if t.get("notes") else []),
            f"Batch {t['batch_size']}, {t['num_training_images']} training images, "
            f"EMA {'on' if t['use_ema'] else 'off'}"
            f"; steady state from {t['steps_short_long'][1]} - {t['steps_short_long'][0]} steps (differenced), "
            f"median of {t['repeats']}; forward + backward {t['flops_per_image_forward_backward'] / 1e6:.1f} MFLOP "
            "per image.",
            "",
            "**Overhead of train_cfg.py vs the bare loop: "
            + ("-" if overhead is None else f"{overhead:+.1f}%")
            + "** (seconds per image relative to the bare loop's; target <= 10%).",
            "",
            markdown_table(_with_units(t["rows"]), TRAINING_COLUMNS),
            "",
        ]
    return "\n".join(lines)


def plot_compute(report: dict[str, Any], path: str | Path) -> Path:
    """Left: % of peak achieved while sampling and training; right: training images/s of each loop."""
    plt = _pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    rows = _with_units(report["sampling"])
    training = report.get("training")
    if training:
        rows += [r | {"name": f"training: {r['name']}"} for r in _with_units(training["rows"])]
    names = [r["name"] for r in rows]
    values = [r["percent_of_peak"] or 0.0 for r in rows]
    ax.barh(names, values, color="tab:blue")
    ax.invert_yaxis()
    ax.set_xlabel(f"% of measured peak ({report['peak']['flops_per_second'] / 1e9:.1f} GFLOP/s)")
    ax.set_title(f"Achieved FLOP/s ({report['flops_per_forward'] / 1e6:.0f} MFLOP per forward)")
    ax.tick_params(axis="y", labelsize=8)
    if training:
        trows = training["rows"]
        ax2.bar(
            [r["name"] for r in trows],
            [r["images_per_second"] or 0.0 for r in trows],
            color=["tab:orange"] + ["tab:gray"] * (len(trows) - 1),
        )
        ax2.set_ylabel("training images / s (steady state)")
        overhead = training["overhead_percent"]
        ax2.set_title("train_cfg.py overhead vs bare: " + ("-" if overhead is None else f"{overhead:+.1f}%"))
        ax2.tick_params(axis="x", labelsize=8)
    else:
        ax2.text(0.5, 0.5, "training not measured", ha="center", transform=ax2.transAxes)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def build_compute_parser(default_out_dir: str | Path = "benchmarks/results") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Compute efficiency: FLOPs per UNet forward, measured peak, achieved fraction while sampling "
        "and training; train_cfg.py throughput vs a bare PyTorch loop."
    )
    add_common_arguments(p, default_out_dir, "compute_efficiency", batch_size=False)
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--sampling-batch-sizes", type=int, nargs="+", default=[1, 32, 250])
    p.add_argument("--min-seconds", type=float, default=5.0, help="time each sampling measurement at least this")
    p.add_argument("--textbook-batch-size", type=int, default=10)
    p.add_argument("--textbook-timed-steps", type=int, default=20)
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument("--matmul-reps", type=int, default=5)
    p.add_argument("--train-steps", type=int, nargs=2, default=[10, 40], metavar=("SHORT", "LONG"))
    p.add_argument("--train-repeats", type=int, default=3, help="rounds of all loops; the median is reported")
    p.add_argument("--no-training", action="store_true", help="skip the training throughput measurement")
    p.add_argument("--no-bare-extras", action="store_true", help="skip the bare loop with EMA/clip/LR schedule")
    p.add_argument(
        "--train-args",
        default="",
        help='extra train_cfg.py flags, e.g. "--train_batch_size 128" (the UNet comes from the pipeline)',
    )
    return p


QUICK_COMPUTE = {
    "sampling_batch_sizes": [1, 8],
    "min_seconds": 0.2,
    "textbook_batch_size": 2,
    "textbook_timed_steps": 3,
    "matmul_size": 512,
    "matmul_reps": 2,
    "train_steps": [2, 4],
    "train_repeats": 1,
}
QUICK_TRAIN_ARGV = ["--train_batch_size", "8", "--max_train_samples", "256"]


def compute_main(argv: list[str] | None = None, default_out_dir: str | Path = "benchmarks/results") -> int:
    """`benchmarks/compute_efficiency.py`: run `run_compute_benchmark`, print, write JSON + Markdown + PNG."""
    import shlex

    parser = build_compute_parser(default_out_dir)
    args = parser.parse_args(argv)
    train_argv = shlex.split(args.train_args)
    if args.quick:
        apply_quick(args, QUICK_COMPUTE, parser)
        train_argv = QUICK_TRAIN_ARGV + train_argv  # later flags win
    try:
        out_dir = check_out_dir(args.out_dir)
        name = check_name(args.name)
        for flag in ("textbook_batch_size", "textbook_timed_steps", "matmul_size", "matmul_reps", "train_repeats"):
            if getattr(args, flag) < 1:
                raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
        if not (args.min_seconds >= 0 and math.isfinite(args.min_seconds)):
            raise ValueError(f"--min-seconds must be >= 0, got {args.min_seconds}")
        check_train_argv(train_argv)
        pipe = load_pipeline(args.model, None, args.device)
        report = run_compute_benchmark(
            pipe,
            sampling_batch_sizes=args.sampling_batch_sizes,
            guidance_scale=args.guidance_scale,
            min_seconds=args.min_seconds,
            textbook_batch_size=args.textbook_batch_size,
            textbook_timed_steps=args.textbook_timed_steps,
            matmul_size=args.matmul_size,
            matmul_reps=args.matmul_reps,
            train_argv=train_argv,
            train_steps=None if args.no_training else tuple(args.train_steps),
            train_repeats=args.train_repeats,
            bare_extras=not args.no_bare_extras,
        )
    except (ValueError, TypeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report["settings"] |= {"model": args.model or "shipped", "quick": args.quick}
    markdown = compute_markdown(report)
    paths = write_report(out_dir, name, report, markdown)
    paths["png"] = plot_compute(report, out_dir / f"{name}.png")
    print(markdown)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
