"""FLOPs per UNet forward and per training image, the machine's measured matmul peak, and the sampling throughput
(UNet image-forwards per second) of a pipeline and of the textbook sampler."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from condiff.pipelines.checks import unet_sample_size
from condiff.pipelines.networks import unet_extra_inputs
from torch.utils.flop_counter import FlopCounterMode

from condiff.evaluation.sampling import default_num_inference_steps, nfe_per_image, pipeline_device, synchronize
from lib.textbook import generate_textbook_samples


def _example_inputs(unet, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    device = next(unet.parameters()).device
    cfg = unet.config
    x = torch.randn(batch_size, cfg.in_channels, *unet_sample_size(cfg), device=device, dtype=unet.dtype)
    t = torch.full((batch_size,), 10, device=device)  # the timestep value does not change the work
    labels = torch.zeros(batch_size, dtype=torch.long, device=device)
    return x, t, labels


def unet_forward_flops(unet, batch_size: int = 1) -> int:
    """FLOPs of one UNet forward at `batch_size` (torch.utils.flop_counter: matmuls and convolutions, 2 per
    multiply-add; norms and activations are not counted)."""
    x, t, labels = _example_inputs(unet, batch_size)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        unet(x, t, class_labels=labels, **unet_extra_inputs(unet))
    return int(counter.get_total_flops())


def training_flops_per_image(unet, batch_size: int = 8) -> float:
    """FLOPs of a training step's forward + backward per image (counted at `batch_size`; the optimizer's
    elementwise work is not counted). The UNet's gradients are cleared afterwards."""
    x, t, labels = _example_inputs(unet, batch_size)
    was_training = unet.training
    unet.train()
    with FlopCounterMode(display=False) as counter:
        unet(x, t, class_labels=labels, **unet_extra_inputs(unet)).sample.float().square().mean().backward()
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
        out = pipe(label=labels, guidance_scale=guidance_scale, output_type="pt", **kwargs)
        nfe.append(nfe_per_image(out))
        calls += 1
    synchronize(device)
    wall = time.perf_counter() - start
    images_per_second = calls * batch_size / wall
    mean_nfe = sum(nfe) / len(nfe)
    return {
        "name": f"pipeline, batch {batch_size}",
        "sampler": type(pipe.scheduler).__name__,
        "num_inference_steps": num_inference_steps or default_num_inference_steps(pipe),
        "guidance_scale": guidance_scale,
        "batch_size": batch_size,
        "num_images": calls * batch_size,
        "wall_seconds": wall,
        "images_per_second": images_per_second,
        "nfe_per_image": mean_nfe,
        "forwards_per_second": images_per_second * mean_nfe,
    }


def textbook_throughput(pipe, batch_size: int, timed_steps: int = 20, guidance_scale: float = 3.0) -> dict[str, Any]:
    """Image-forwards/s of the textbook sampler (two separate passes per step) over its first `timed_steps`."""
    samples = generate_textbook_samples(pipe, batch_size, guidance_scale, batch_size, max_steps=timed_steps)
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
        "forwards_per_second": samples.nfe_per_image * batch_size / samples.wall_seconds,
    }
