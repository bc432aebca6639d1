"""Evaluation of the spatially conditioned pipelines: super-resolution of held-out digits (accuracy for the true
label, Frechet distance, consistency PSNR, beside bicubic and the real images) and layout maps (accuracy, ink IoU, and
multi-digit canvases at sizes never trained on), plus the comparison grids of validation and the cards.

Frechet distances here are against the train split: the super-resolved digits come from the test split, so the
floor is the real test digits themselves against the same train features (ratio 1 by construction).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from condiff.evaluation.metrics import (
    classifier_features_and_logits,
    default_classifier,
    frechet_distance,
    real_features,
)
from condiff.pipelines.spatial_conditions import downsample_area, layout_map, psnr, upsample_bicubic

PALETTE = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240],
     [240, 50, 230], [210, 245, 60], [250, 190, 212]], dtype=np.uint8,
)  # fmt: skip


def to_pil(images: torch.Tensor) -> list:
    """[-1, 1] (N, 1, H, W) tensors as RGB PIL images."""
    from PIL import Image

    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    return [Image.fromarray(np.repeat(a[0][..., None], 3, axis=2)) for a in x]


def layout_pictures(ids: torch.Tensor, background_id: int, size: tuple[int, int]) -> list:
    """Layout maps (N, h, w) drawn in colour (background black), nearest-resized to `size`, as PIL images."""
    from PIL import Image

    pictures = []
    for m in ids.cpu().numpy():
        rgb = np.where((m == background_id)[..., None], 0, PALETTE[np.clip(m, 0, len(PALETTE) - 1)]).astype(np.uint8)
        pictures.append(Image.fromarray(rgb).resize((size[1], size[0]), Image.NEAREST))
    return pictures


def _generate(pipe: Any, steps: int | None, seed: int, **inputs) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    out = pipe(**inputs, num_inference_steps=steps, output_type="pt", generator=torch.Generator().manual_seed(seed))
    return out.images * 2 - 1


def spatial_comparison_grid(pipe: Any, images: torch.Tensor, labels: torch.Tensor, steps: int | None, path: Path):
    """Held-out digits through the pipeline, seed 0, saved as a grid: for super-resolution, per input size (1/4 and
    1/2 of the side) the rows input | bicubic | output | real; for layouts the rows map | output | real."""
    from condiff.pipelines import SemanticLayoutPipeline
    from condiff.tasks.denoiser import save_grid

    size = tuple(images.shape[-2:])
    if isinstance(pipe, SemanticLayoutPipeline):
        cell = pipe.config.layout_cell
        ids = layout_map(images, labels, cell, pipe.background_id)
        out = _generate(pipe, steps, 0, image=ids)
        rows = [layout_pictures(ids, pipe.background_id, size), to_pil(out), to_pil(images)]
    else:
        rows = []
        for low_size in (size[0] // 4, size[0] // 2):
            low = downsample_area(images, low_size)
            out = _generate(pipe, steps, 0, image=(low + 1) / 2)
            shown = torch.nn.functional.interpolate(low, size=size, mode="nearest")
            rows += [to_pil(shown), to_pil(upsample_bicubic(low, size).clamp(-1, 1)), to_pil(out), to_pil(images)]
    return save_grid([picture for row in rows for picture in row], len(rows), path)


def score_against_train(images: torch.Tensor, labels: np.ndarray, classifier: Any = None) -> dict[str, float]:
    """Accuracy for `labels` and the Frechet distance to the train split of [-1, 1] 28x28 images."""
    classifier = classifier if classifier is not None else default_classifier()
    feats, logits = classifier_features_and_logits(classifier, images.float().clamp(-1, 1))
    fd = frechet_distance(feats, real_features("train", classifier))
    return {"accuracy": float((logits.argmax(1) == labels).mean()), "frechet_distance": fd}


def super_resolution_rows(
    pipe: Any, images: torch.Tensor, labels: np.ndarray, low_size: int, noise_level: int = 0,
    steps: int | None = None, batch_size: int = 250, seed: int = 0, guidance_scale: float | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Rows "real", "bicubic", "condiff" (and "condiff, label=auto" when the pipeline has a classifier of its inputs,
    the class hint) for super-resolving `images` (area-downsampled to `low_size`): accuracy
    for the true label, Frechet distance to the train split and its ratio to the real images' (the same-N floor),
    and consistency, the PSNR of the output area-downsampled back against the input (dB, mean)."""
    size = tuple(images.shape[-2:])
    low = downsample_area(images, low_size)
    candidates = {"real": images, "bicubic": upsample_bicubic(low, size).clamp(-1, 1)}
    hints = {"condiff": None} | ({"condiff, label=auto": "auto"} if getattr(pipe, "classifier", None) else {})
    for name, label in hints.items():
        outputs = []
        for i in range(0, len(images), batch_size):
            chunk = (low[i : i + batch_size] + 1) / 2
            kwargs = {"noise_level": noise_level, "guidance_scale": guidance_scale, "label": label}
            outputs.append(_generate(pipe, steps, seed + i, image=chunk, **kwargs))
        candidates[name] = torch.cat(outputs)
    rows, floor = [], None
    for name, x in candidates.items():
        scores = score_against_train(x, labels)
        floor = scores["frechet_distance"] if name == "real" else floor
        consistency = psnr(downsample_area(x, low_size), low).mean().item()
        rows.append({"method": name, "input_size": low_size, "noise_level": noise_level, **scores,
                     "fd_ratio": scores["frechet_distance"] / floor, "consistency_psnr_db": consistency,
                     "num_samples": len(x)})  # fmt: skip
    return rows


def _generate_batches(pipe: Any, inputs: list, steps: int | None, seed: int, **kwargs) -> torch.Tensor:
    """The pipeline's [-1, 1] outputs for consecutive chunks of inputs (one seed per chunk: seed + its start)."""
    out = [_generate(pipe, steps, seed + i, image=chunk, **kwargs) for i, chunk in inputs]
    return torch.cat(out)


def ink_iou(images: torch.Tensor, layout: torch.Tensor, cell: int, background_id: int) -> torch.Tensor:
    """Per image, the IoU of the cells where `images` have ink with the map's non-background cells."""
    inked = layout_map(images, torch.zeros(len(images), dtype=torch.long), cell, background_id) != background_id
    wanted = layout != background_id
    union = (inked | wanted).flatten(1).sum(1).clamp_min(1)
    return (inked & wanted).flatten(1).sum(1) / union


def layout_rows(
    pipe: Any, images: torch.Tensor, labels: np.ndarray, steps: int | None = None, batch_size: int = 250,
    seed: int = 0, guidance_scale: float | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Single-digit maps of held-out digits through the pipeline: accuracy for the map's class, Frechet distance to
    the train split and its ratio to the real digits', and the ink IoU with the map; rows "real" and "condiff"."""
    cell, background = pipe.config.layout_cell, pipe.background_id
    ids = layout_map(images, torch.as_tensor(labels), cell, background)
    chunks = [(i, ids[i : i + batch_size]) for i in range(0, len(ids), batch_size)]
    generated = _generate_batches(pipe, chunks, steps, seed, guidance_scale=guidance_scale)
    rows, floor = [], None
    for name, x in (("real", images), ("condiff", generated)):
        scores = score_against_train(x, labels)
        floor = scores["frechet_distance"] if name == "real" else floor
        rows.append({"method": name, "canvas": "28x28", **scores, "fd_ratio": scores["frechet_distance"] / floor,
                     "ink_iou": ink_iou(x, ids, cell, background).mean().item(), "num_samples": len(x)})  # fmt: skip
    return rows


def canvas_layouts(
    labels_pool: np.ndarray, images_pool: torch.Tensor, num_canvases: int, slots: tuple[int, int], per_canvas: int,
    cell: int, background_id: int, seed: int = 0,
) -> tuple[torch.Tensor, list[list[tuple[int, int, int]]]]:  # fmt: skip
    """Layouts of `per_canvas` held-out digits placed in random slots of a `slots` (rows, columns) grid of
    digit-sized regions: (N, rows x h, columns x w) maps and, per canvas, (slot row, slot column, class)."""
    rng = np.random.default_rng(seed)
    side = images_pool.shape[-1] // cell
    maps = torch.full((num_canvases, slots[0] * side, slots[1] * side), background_id, dtype=torch.long)
    placed = []
    for n in range(num_canvases):
        chosen = rng.choice(slots[0] * slots[1], per_canvas, replace=False)
        digits = rng.choice(len(labels_pool), per_canvas, replace=False)
        entries = []
        for slot, d in zip(chosen, digits):
            r, c = divmod(int(slot), slots[1])
            label = torch.tensor([int(labels_pool[d])])
            maps[n, r * side : (r + 1) * side, c * side : (c + 1) * side] = layout_map(
                images_pool[d : d + 1], label, cell, background_id)[0]  # fmt: skip
            entries.append((r, c, int(labels_pool[d])))
        placed.append(entries)
    return maps, placed


def canvas_rows(
    pipe: Any, images: torch.Tensor, labels: np.ndarray, num_canvases: int = 250, slots: tuple[int, int] = (2, 4),
    per_canvas: int = 4, steps: int | None = None, batch_size: int = 25, seed: int = 0,
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:  # fmt: skip
    """Multi-digit canvases at a size never trained on (default 56x112 from 28x28 training): each digit region is
    cropped and classified against its class (accuracy), and its ink compared with the map's (IoU). Returns (the
    row, the maps, the canvases)."""
    cell, background = pipe.config.layout_cell, pipe.background_id
    maps, placed = canvas_layouts(labels, images, num_canvases, slots, per_canvas, cell, background, seed)
    chunks = [(i, maps[i : i + batch_size]) for i in range(0, len(maps), batch_size)]
    canvases = _generate_batches(pipe, chunks, steps, seed)
    size, side = images.shape[-1], images.shape[-1] // cell
    crops, crop_maps, classes = [], [], []
    for n, entries in enumerate(placed):
        for r, c, label in entries:
            crops.append(canvases[n, :, r * size : (r + 1) * size, c * size : (c + 1) * size])
            crop_maps.append(maps[n, r * side : (r + 1) * side, c * side : (c + 1) * side])
            classes.append(label)
    crops, crop_maps, classes = torch.stack(crops), torch.stack(crop_maps), np.array(classes)
    scores = score_against_train(crops, classes)
    row = {"method": "condiff", "canvas": f"{maps.shape[-2] * cell}x{maps.shape[-1] * cell}",
           "accuracy": scores["accuracy"], "ink_iou": ink_iou(crops, crop_maps, cell, background).mean().item(),
           "num_samples": len(crops), "num_canvases": num_canvases}  # fmt: skip
    return row, maps, canvases
