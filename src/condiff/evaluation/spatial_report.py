"""The spatial-conditioning report (`benchmarks/spatial_conditioning.py`): super-resolution at 4x and 2x beside
bicubic, the real digits and the information limit of the input, layout maps on single digits and on canvases never
trained on, and the README picture."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from condiff.evaluation.reports import markdown_table
from condiff.evaluation.spatial import (
    canvas_rows,
    layout_pictures,
    layout_rows,
    spatial_comparison_grid,
    super_resolution_rows,
    to_pil,
)  # fmt: skip

# canvases never trained on: (slot rows, slot columns) of digit-sized regions, digits placed per canvas
CANVASES = (((1, 4), 3), ((2, 4), 4))


def low_resolution_limit(low_size: int, folder: Path, threads: int = 1) -> dict[str, Any]:
    """The information limit of `low_size` inputs: the test accuracy of the evaluator's CNN trained on the inputs
    themselves (area-downsampled, bicubic-upsampled back; `condiff train evaluator --input_resolution`). Trained
    into `folder` once (about 3 CPU minutes), read back from its metrics.json afterwards."""
    from condiff.train import run

    metrics = Path(folder) / "metrics.json"
    if not metrics.is_file():
        run(["evaluator", "--input_resolution", str(low_size), "--output_dir", str(folder), "--num_threads",
             str(threads), "--report_to", "none"])  # fmt: skip
    return json.loads(metrics.read_text())


def input_classifier_limit(pipe: Any, images: torch.Tensor, labels: np.ndarray, low_size: int) -> dict | None:
    """The information limit measured on the same digits by the pipeline's own classifier of `low_size` inputs (the
    class hint of `label="auto"`); None when it has none or one of another input size."""
    classifier = getattr(pipe, "classifier", None)
    if classifier is None or pipe.config.get("classifier_resolution") != low_size:
        return None
    from condiff.pipelines.spatial_conditions import downsample_area

    hints = pipe.most_likely_classes(downsample_area(images, low_size)).cpu().numpy()
    return {"test_accuracy": float((hints == labels).mean()), "test_samples": len(labels)}


def held_out_digits(num_samples: int) -> tuple[torch.Tensor, np.ndarray]:
    from condiff.data import load_mnist_arrays, uint8_to_model_tensor

    images, labels = load_mnist_arrays("test")
    if not 2 <= num_samples <= len(labels):
        raise ValueError(f"num_samples must be in [2, {len(labels)}] (the test split), got {num_samples}")
    return uint8_to_model_tensor(images[:num_samples]), labels[:num_samples]


def spatial_report(
    sr_pipe: Any, layout_pipe: Any, num_samples: int, limit_folder: Path, noise_levels: tuple[int, ...] = (0,),
    num_canvases: int = 250,
) -> dict[str, Any]:  # fmt: skip
    """Every measurement of the report, on the first `num_samples` test digits, seed 0."""
    images, labels = held_out_digits(num_samples)
    size = images.shape[-1]
    limit = input_classifier_limit(sr_pipe, images, labels, size // 4) or low_resolution_limit(size // 4, limit_folder)
    rows, started = [], time.perf_counter()
    for low_size in (size // 4, size // 2):
        for level in noise_levels:
            found = super_resolution_rows(sr_pipe, images, labels, low_size, noise_level=level)
            rows += [r for r in found if r["method"].startswith("condiff") or level == noise_levels[0]]
    layout = layout_rows(layout_pipe, images, labels)
    for slots, per_canvas in CANVASES:
        canvas, _, _ = canvas_rows(layout_pipe, images, labels, num_canvases, slots, per_canvas)
        layout.append(canvas | {"digits_per_canvas": per_canvas})
    return {
        "super_resolution": rows,
        "limit": {"input_size": size // 4, **{k: limit[k] for k in ("test_accuracy", "test_samples")}},
        "layout": layout,
        "settings": {
            "num_samples": num_samples,
            "seed": 0,
            "num_canvases": num_canvases,
            "sr_steps": sr_pipe.config.default_num_inference_steps,
            "layout_steps": layout_pipe.config.default_num_inference_steps,
        },  # fmt: skip
        "seconds": round(time.perf_counter() - started, 1),
    }


def spatial_markdown(report: dict[str, Any]) -> str:
    limit = report["limit"]
    sr_columns = [("input", "input_size", "d"), ("method", "method", ""), ("noise level", "noise_level", "d"),
                  ("accuracy", "accuracy", ".1%"), ("FD / floor", "fd_ratio", ".2f"),
                  ("consistency PSNR (dB)", "consistency_psnr_db", ".1f")]  # fmt: skip
    layout_columns = [
        ("canvas", "canvas", ""),
        ("method", "method", ""),
        ("accuracy", "accuracy", ".1%"),
        ("FD / floor", "fd_ratio", ".2f"),
        ("ink IoU", "ink_iou", ".3f"),
        ("digits", "num_samples", "d"),
    ]
    s = report["settings"]
    return "\n\n".join([
        f"# Spatial conditioning: super-resolution and layout maps ({s['num_samples']} held-out test digits, seed 0; "
        "`python benchmarks/spatial_conditioning.py`)",
        f"Information limit of {limit['input_size']}x{limit['input_size']} inputs: a CNN trained on them scores "
        f"**{limit['test_accuracy']:.1%}** on the {limit['test_samples']} test digits. FD is against the train split; "
        "the floor is the real test digits' FD (so real = 1.00). Consistency: PSNR of the output area-downsampled "
        f"back against the input. Super-resolution {s['sr_steps']} steps, layouts {s['layout_steps']} steps.",
        markdown_table(report["super_resolution"], sr_columns),
        f"Layout maps: single digits (28x28, the training size) and {s['num_canvases']} canvases of each size never "
        "trained on, with 3 or 4 held-out digits' maps in random digit-sized slots (each region cropped and "
        "classified against its class).",
        markdown_table(report["layout"], layout_columns),
        f"Measured in {report['seconds']:.0f} s.",
    ]) + "\n"  # fmt: skip


def spatial_figure(sr_pipe: Any, layout_pipe: Any, path: Path) -> Path:
    """The README picture: super-resolution rows (input | bicubic | condiff | real, at 4x and 2x) above one generated
    canvas beside its layout."""
    from PIL import Image

    images, labels = held_out_digits(8)
    grid = spatial_comparison_grid(sr_pipe, images, torch.as_tensor(labels), None, Path(path).with_suffix(".sr.png"))
    _, maps, canvases = canvas_rows(layout_pipe, images, labels, num_canvases=1, per_canvas=5, seed=3)
    cell = layout_pipe.config.layout_cell
    size = (maps.shape[-2] * cell, maps.shape[-1] * cell)
    layout_image = layout_pictures(maps, layout_pipe.background_id, size)[0]
    canvas = to_pil(canvases)[0]
    width = max(grid.width, 2 * size[1] + 8)
    figure = Image.new("RGB", (width, grid.height + size[0] + 8), "white")
    figure.paste(grid, (0, 0))
    figure.paste(layout_image, (0, grid.height + 8))
    figure.paste(canvas, (size[1] + 8, grid.height + 8))
    figure = figure.resize((figure.width * 2, figure.height * 2), Image.NEAREST)
    figure.save(path)
    Path(path).with_suffix(".sr.png").unlink(missing_ok=True)
    return Path(path)
