"""The gate curve of gated CFG (`GatedClassifierFreeGuidance`): for a class-conditional model, the median over
unguided sampling paths of rms(x0(cond) - x0(uncond)) at each timestep. Fitted on noise seeds kept apart from the
evaluation's (which start at 0), stored in the pipeline's config as `gated_cfg_curve`."""

from __future__ import annotations

from typing import Any

import torch

from condiff.pipelines.guiders import GateCurveRecorder

from .sampling import balanced_labels

GATE_SEED = 1000  # evaluation seeds start at 0 (one per batch): the curve's paths never share their noise


def fit_gate_curve(
    pipe: Any,
    num_images: int = 1000,
    num_inference_steps: int | None = None,
    seed: int = GATE_SEED,
    batch_size: int = 250,
) -> list[list[float]]:
    """[[timestep, median rms], ...] over `num_images` conditional, unguided paths (classes balanced) of `pipe`'s
    own scheduler; batch b draws its noise from `seed + b`. Costs two network rows per image and step."""
    if num_images < 2:
        raise ValueError(f"num_images must be >= 2 to take a median, got {num_images}")
    recorder = GateCurveRecorder()
    k = pipe.num_classes
    labels = balanced_labels(k, -(-num_images // k))[:num_images]
    for b, start in enumerate(range(0, num_images, batch_size)):
        generator = torch.Generator().manual_seed(seed + b)
        batch = [int(v) for v in labels[start : start + batch_size]]
        pipe(label=batch, guidance=recorder, num_inference_steps=num_inference_steps, generator=generator,
             output_type="latent")  # fmt: skip
    return [[t, float(torch.cat(rows).median())] for t, rows in sorted(recorder.records.items(), reverse=True)]
