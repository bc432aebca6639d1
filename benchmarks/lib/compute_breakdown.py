"""Where a sampling call's time goes, for the compute benchmark: the profiler's time per kind of operator (the
convolutions' own fraction of peak among them), and the pipeline's throughput at one batch size over the levers
that could raise it: micro-batch size, memory layout and `torch.compile` (with its compile time and the number of
images after which it pays)."""

from __future__ import annotations

import functools
import os
import tempfile
import time
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import torch
from condiff.pipelines.guidance import guidance_scale_embedding
from condiff.pipelines.networks import unet_extra_inputs
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from condiff.evaluation.sampling import nfe_per_image, pipeline_device, synchronize
from lib.compute import _example_inputs

# aten operator name fragments -> kind; the first kind whose fragment occurs in the name wins
OP_KINDS = (
    ("convolution", ("conv",)),
    ("matmul", ("addmm", "bmm", "aten::mm", "linear", "matmul")),
    ("normalisation", ("group_norm", "layer_norm", "batch_norm")),
    ("activation", ("silu", "gelu", "relu", "sigmoid", "tanh")),
    ("copies, layout, resampling", ("copy", "cat", "contiguous", "clone", "upsample", "pad", "as_strided")),
    ("elementwise arithmetic", ("add", "mul", "div", "sub", "exp", "sin", "cos", "pow", "clamp", "sqrt")),
)


def op_kind(name: str) -> str:
    """The kind of an aten operator name (`OP_KINDS`), "other" when none matches."""
    return next((kind for kind, fragments in OP_KINDS if any(f in name for f in fragments)), "other")


def _call(pipe, batch_size: int, guidance_scale: float, out: dict | None = None) -> float:
    labels = [i % pipe.num_classes for i in range(batch_size)]
    device = pipeline_device(pipe)
    synchronize(device)
    start = time.perf_counter()
    result = pipe(label=labels, guidance_scale=guidance_scale, output_type="pt")
    synchronize(device)
    if out is not None:
        out["nfe_per_image"] = nfe_per_image(result)
    return time.perf_counter() - start


@contextmanager
def cold_compile_cache():
    """A fresh, empty inductor cache for the duration (compile time as a first-time user pays it)."""
    previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        torch._dynamo.reset()
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR")
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous


def conv_flops_share(unet) -> float:
    """The convolutions' share of one UNet forward's counted FLOPs (the rest: matmuls)."""
    x, t, labels = _example_inputs(unet, 1)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        unet(x, t, class_labels=labels, **unet_extra_inputs(unet))
    counts = counter.get_flop_counts().get("Global", {})
    conv = sum(v for op, v in counts.items() if "convolution" in str(op))
    return conv / max(1, counter.get_total_flops())


def op_time_shares(pipe, batch_size: int, guidance_scale: float) -> dict[str, Any]:
    """One profiled pipeline call at `batch_size`: the self time of each operator kind and its share of the total
    (device time on CUDA, CPU time otherwise). One untimed call first."""
    device = pipeline_device(pipe)
    _call(pipe, batch_size, guidance_scale)
    cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    call: dict[str, Any] = {}
    with profile(activities=activities) as prof:
        wall = _call(pipe, batch_size, guidance_scale, call)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    seconds: dict[str, float] = {}
    for event in prof.key_averages():
        kind = op_kind(event.key)
        seconds[kind] = seconds.get(kind, 0.0) + getattr(event, key) / 1e6
    total = sum(seconds.values())
    rows = [{"kind": k, "seconds": s, "share": s / total} for k, s in sorted(seconds.items(), key=lambda kv: -kv[1])]
    return {"batch_size": batch_size, "nfe_per_image": call["nfe_per_image"], "wall_seconds_profiled": wall,
            "self_seconds_total": total, "kinds": rows}  # fmt: skip


def _best_of(fn, repeats: int) -> float:
    return min(fn() for _ in range(repeats))


def sampling_variants(
    pipe,
    batch_size: int = 250,
    guidance_scale: float = 3.0,
    micro_batch_sizes: Sequence[int | None] = (16, 32, 64, None),
    repeats: int = 3,
    compile_unet: bool = True,
    log=print,
) -> list[dict[str, Any]]:
    """Images/s of pipeline calls at `batch_size` (best of `repeats`, variants interleaved) for each micro-batch size
    (None: the whole batch in one pass) and, at the pipeline's own, with a `torch.compile`d UNet (its compile time and
    the images after which it pays); then the UNet's forwards alone (`unet_alone_rows`). The pipeline is left as it
    was."""
    own = pipe.config.get("micro_batch_size")
    unet = pipe.unet
    micro_batch_sizes = [mb for mb in micro_batch_sizes if mb is None or mb < batch_size]
    variants: list[tuple[str, dict[str, Any]]] = [
        (f"micro-batch {mb or batch_size}" + (" (the pipeline's)" if mb == own else ""), {"micro_batch_size": mb})
        for mb in micro_batch_sizes
    ]
    compiled, compile_seconds = None, None
    if compile_unet:
        pipe.unet = compiled = torch.compile(unet)
        with cold_compile_cache():
            compile_seconds = _call(pipe, batch_size, guidance_scale) - _call(pipe, batch_size, guidance_scale)
        pipe.unet = unet
        log(f"torch.compile: {compile_seconds:.1f} s of compiling in the first call")
        name = f"micro-batch {own or batch_size}, torch.compile"
        variants.append((name, {"micro_batch_size": own, "unet": compiled}))

    def timed(settings: dict[str, Any]) -> float:
        pipe.register_to_config(micro_batch_size=settings["micro_batch_size"])
        pipe.unet = settings.get("unet", unet)
        try:
            return _call(pipe, batch_size, guidance_scale)
        finally:
            pipe.unet, _ = unet, pipe.register_to_config(micro_batch_size=own)

    best = {name: float("inf") for name, _ in variants}
    for _ in range(repeats):
        for name, settings in variants:
            best[name] = min(best[name], timed(settings))
    rows = [{"name": name, "batch_size": batch_size, "seconds": best[name]} for name, _ in variants]
    if compiled is not None and own in micro_batch_sizes:
        saved_per_image = (best[variants[micro_batch_sizes.index(own)][0]] - rows[-1]["seconds"]) / batch_size
        rows[-1]["compile_seconds"] = compile_seconds
        rows[-1]["pays_after_images"] = compile_seconds / saved_per_image if saved_per_image > 0 else None
    rows += unet_alone_rows(pipe, batch_size, guidance_scale, repeats)
    for row in rows:
        row["images_per_second"] = batch_size / row["seconds"]
    return rows


def unet_alone_rows(pipe, batch_size: int, guidance_scale: float, repeats: int = 3) -> list[dict[str, Any]]:
    """The UNet's forwards alone over `batch_size` rows in the pipeline's micro-batches (no scheduler, no output
    conversion), with weights and activations channels_last (the pipeline's layout) and contiguous (NCHW)."""
    unet, micro = pipe.unet, pipe.config.get("micro_batch_size") or batch_size
    x, t, labels = _example_inputs(unet, batch_size)
    cond = {}
    if unet.config.get("time_cond_proj_dim"):
        w = torch.full((batch_size,), float(guidance_scale), device=x.device)
        cond["timestep_cond"] = guidance_scale_embedding(w, unet.config.time_cond_proj_dim).to(unet.dtype)
    extra = unet_extra_inputs(unet)

    @torch.inference_mode()
    def forwards(layout: torch.memory_format) -> float:
        xs = x.contiguous(memory_format=layout)
        synchronize(x.device)
        start = time.perf_counter()
        for i in range(0, batch_size, micro):
            rows = {k: v[i : i + micro] for k, v in cond.items()}
            unet(xs[i : i + micro], t[i : i + micro], class_labels=labels[i : i + micro], **extra, **rows)
        synchronize(x.device)
        return time.perf_counter() - start

    rows = []
    for layout, name in ((torch.channels_last, "channels_last"), (torch.contiguous_format, "contiguous (NCHW)")):
        unet.to(memory_format=layout)
        forwards(layout)
        seconds = _best_of(functools.partial(forwards, layout), repeats)
        rows.append({"name": f"UNet forwards alone, micro-batch {micro}, {name}", "batch_size": batch_size,
                     "seconds": seconds})  # fmt: skip
    unet.to(memory_format=torch.channels_last)
    return rows
