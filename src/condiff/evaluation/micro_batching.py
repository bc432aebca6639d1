"""Which micro-batch size runs a large request fastest: one pipeline call of N images, timed at each
`micro_batch_size` (the UNet runs on slices of that many rows), with per-image generators so that every size must
give the same images; the largest difference to the whole-batch call is reported beside the speed."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from condiff.argtypes import int_in
from condiff.evaluation.cli_args import apply_quick, report_parser
from condiff.evaluation.reports import describe_machine, machine_info, markdown_table, pyplot, report_main, save_figure
from condiff.evaluation.sampling import balanced_labels, default_num_inference_steps, pipeline_device, synchronize

COLUMNS = (
    ("micro-batch", "label", ""),
    ("img/s", "images_per_second", ".3g"),
    ("x one batch", "speedup_vs_one_batch", ".3f"),
    ("NFE/img", "nfe_per_image", ".0f"),
    ("max |diff| vs one batch", "max_abs_diff", ".1e"),
)


def timed_call(pipe: Any, labels: list[int], micro_batch_size: int | None, seed: int, **call_kwargs: Any) -> dict:
    """One call with image i drawn from generator seed + i, at `micro_batch_size`; its images and wall time."""
    pipe.register_to_config(micro_batch_size=micro_batch_size)
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(labels))]
    device = pipeline_device(pipe)
    synchronize(device)
    start = time.perf_counter()
    out = pipe(label=labels, generator=generators, output_type="pt", **call_kwargs)
    synchronize(device)
    wall = time.perf_counter() - start
    return {"images": out.images.float().cpu(), "wall_seconds": wall, "nfe_per_image": out.nfe_per_image}


def measure_micro_batch_sizes(
    pipe: Any,
    sizes: Sequence[int],
    num_images: int = 1000,
    seed: int = 0,
    **call_kwargs: Any,
) -> dict[str, Any]:
    """Time one `num_images` call (balanced classes) at each size in `sizes` and as one batch (micro_batch_size None).

    Returns {"rows": [...], "fastest": size}; the pipeline's own `micro_batch_size` is restored afterwards.
    """
    original = pipe.config.get("micro_batch_size")
    labels = balanced_labels(pipe.num_classes, max(1, num_images // pipe.num_classes)).tolist()[:num_images]
    try:
        pipe(label=labels[:8], num_inference_steps=2, output_type="pt")  # warm-up: first-call allocations
        whole = timed_call(pipe, labels, None, seed, **call_kwargs)
        rows = [row_of(None, whole, whole)]
        for size in sizes:
            rows.append(row_of(size, timed_call(pipe, labels, size, seed, **call_kwargs), whole))
    finally:
        pipe.register_to_config(micro_batch_size=original)
    fastest = max(rows, key=lambda r: r["images_per_second"])
    return {"rows": rows, "fastest": fastest["micro_batch_size"], "num_images": len(labels)}


def row_of(size: int | None, run: dict, whole: dict) -> dict[str, Any]:
    n = run["images"].shape[0]
    ips = n / run["wall_seconds"]
    return {
        "micro_batch_size": size,
        "label": "one batch" if size is None else str(size),
        "images_per_second": ips,
        "speedup_vs_one_batch": ips / (n / whole["wall_seconds"]),
        "wall_seconds": run["wall_seconds"],
        "nfe_per_image": run["nfe_per_image"],
        "max_abs_diff": float((run["images"] - whole["images"]).abs().max()),
    }


def micro_batching_markdown(report: dict[str, Any]) -> str:
    s, m = report["settings"], report["machine"]
    lines = [
        "# Micro-batching large requests",
        "",
        f"One call of {report['num_images']} images (balanced classes, per-image generators), "
        f"{s['num_inference_steps']} steps, guidance scale {s['guidance_scale']}, the model's default interval; "
        f"{describe_machine(m)}.",
        "",
        f"**Fastest: micro_batch_size {report['fastest']}.**",
        "",
        markdown_table(report["rows"], COLUMNS),
        "",
    ]
    return "\n".join(lines)


def plot_micro_batching(report: dict, path: Path) -> Path:
    plt = pyplot()
    rows = [r for r in report["rows"] if r["micro_batch_size"] is not None]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["micro_batch_size"] for r in rows], [r["images_per_second"] for r in rows], "o-", label="micro-batched")
    ax.axhline(report["rows"][0]["images_per_second"], color="gray", ls="--", label="one batch")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("micro_batch_size (UNet rows per forward)")
    ax.set_ylabel("images / s")
    ax.legend()
    return save_figure(fig, path)


def main(argv: list[str] | None = None, default_out_dir: str | Path = "benchmarks/results") -> int:
    """`benchmarks/micro_batching.py`: measure, print the table, write JSON + Markdown + PNG."""
    description = "Micro-batching benchmark: one large request at several micro-batch sizes"
    p = report_parser(description, default_out_dir, "micro_batching", batch_size=False)
    p.add_argument("--num-images", type=int_in(1), default=1000)
    p.add_argument("--sizes", type=int_in(1), nargs="+", default=[16, 32, 64, 128, 256])
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--steps", type=int_in(1), default=None, help="default: the model's default")
    args = p.parse_args(argv)
    if args.quick:
        apply_quick(args, {"num_images": 40, "sizes": [8, 16]}, p)

    def run() -> dict:
        from condiff.loading import load_pipeline

        pipe = load_pipeline(args.model, device=args.device)
        pipe.set_progress_bar_config(disable=True)
        steps = args.steps or default_num_inference_steps(pipe)
        call = {"guidance_scale": args.guidance_scale, "num_inference_steps": steps}
        result = measure_micro_batch_sizes(pipe, args.sizes, args.num_images, args.seed, **call)
        settings = {"guidance_scale": args.guidance_scale, "num_inference_steps": steps, "sizes": args.sizes}
        return result | {"settings": settings, "machine": machine_info(pipeline_device(pipe))}

    return report_main(args, run, micro_batching_markdown, plot_micro_batching)
