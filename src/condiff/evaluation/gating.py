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


def measure_on_seeds(
    pipe: Any,
    settings: dict[str, dict],
    seeds: list[int],
    points_file: Any,
    evaluate: Any,
    num_per_class: int = 100,
) -> list[dict]:
    """Evaluate every setting (name -> pipeline call arguments) on every seed, appending each (setting, seed) not yet
    in `points_file` (JSON lines, so an interrupted run resumes) and returning every row. Seeds s and s + 1 share
    most of their noise (batch b uses seed + b): give seeds at least num_batches apart for independent samples."""
    import json
    from pathlib import Path

    path = Path(points_file)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    done = {(r["setting"], r["seed"]) for r in rows}
    for name, call in settings.items():
        for seed in seeds:
            if (name, seed) in done:
                continue
            result = evaluate(pipe, num_per_class=num_per_class, seed=seed, **call)
            row = {"setting": name, "seed": seed, "num_per_class": num_per_class}
            row |= {k: result.get(k) for k in ("accuracy", "frechet_distance", "fd_ratio_matched", "nfe_per_image")}
            with path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            rows.append(row)
    return [r for r in rows if r["setting"] in settings and r["seed"] in seeds]


def seeds_markdown(rows: list[dict], header: str) -> str:
    """One row per (setting, seed), then each setting's mean over its seeds."""
    from condiff.evaluation.reports import markdown_table

    columns = [("setting", "setting", ""), ("seed", "seed", "d"), ("accuracy", "accuracy", ".3f"),
               ("FD / floor", "fd_ratio_matched", ".3f"), ("NFE / image", "nfe_per_image", ".1f")]  # fmt: skip
    means = []
    for name in dict.fromkeys(r["setting"] for r in rows):
        mine = [r for r in rows if r["setting"] == name]
        mean = {k: sum(r[k] for r in mine) / len(mine) for k in ("accuracy", "fd_ratio_matched", "nfe_per_image")}
        means.append({"setting": name, "seed": len(mine), **mean})
    mean_columns = [("setting", "setting", ""), ("seeds", "seed", "d"), *columns[2:]]
    return "\n".join([header, "", markdown_table(rows, columns), "", "Mean over the seeds:", "",
                      markdown_table(means, mean_columns), ""])  # fmt: skip
