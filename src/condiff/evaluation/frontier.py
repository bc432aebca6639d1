"""The guidance frontier: accuracy against Frechet distance for each guidance method over a sweep of its scale, on one
class-conditional model (with its `guide_unet`), same seeds for every point; each method's best FD at a target accuracy.

Methods: CFG (every step and on an interval), autoguidance (every step and on an interval), autoguidance with CFG on
top, diffusers' APG and CFG-Zero* guiders (every step and on the interval's steps), gated CFG (condiff's: CFG only for
the images whose condition still pulls hard, 14 steps, with plain CFG on its interval at 14 steps beside it), and
classifier guidance on top of CFG (a noise-aware classifier of the same schedule; every step and on the interval).
Points already measured (same method and scale) are read back from the JSON-lines file, so an interrupted run
resumes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from condiff.evaluation.reports import markdown_table, pyplot, save_figure

GATED_INTERVAL = (0.45, 0.75)
SCORE_KEYS = ("accuracy", "frechet_distance", "floor_matched", "fd_ratio_matched", "nfe_per_image", "images_per_second")


@dataclass
class Method:
    """One guidance method: `call(scale)` gives the pipeline's keyword arguments; `pipeline` names which pipeline
    ("cfg": the model itself, "cg": the same UNet and scheduler with a noise-aware classifier)."""

    name: str
    scales: list[float]
    call: Callable[[float], dict[str, Any]]
    pipeline: str = "cfg"
    note: str = ""
    extra: dict = field(default_factory=dict)


def diffusers_guider(name: str, **settings: Any) -> Callable[[float], dict[str, Any]]:
    def call(scale: float) -> dict[str, Any]:
        from diffusers import guiders

        return {"guidance": getattr(guiders, name)(guidance_scale=scale, **settings)}

    return call


def step_window(timesteps: Any, num_train_timesteps: int, interval: tuple[float, float]) -> tuple[float, float]:
    """diffusers' guiders take their window as (start, stop) fractions of the step count; condiff's interval is a
    range of t / T. The window of the steps whose t / T lies in `interval` (which must be consecutive)."""
    inside = [i for i, t in enumerate(timesteps) if interval[0] <= float(t) / num_train_timesteps <= interval[1]]
    if not inside or inside != list(range(inside[0], inside[-1] + 1)):
        raise ValueError(f"no consecutive steps of {list(map(int, timesteps))} lie in the interval {interval}")
    return inside[0] / len(timesteps), (inside[-1] + 1) / len(timesteps)


def default_methods(
    interval: tuple[float, float],
    ag_interval: tuple[float, float],
    ag_cfg: float,
    window: tuple[float, float] = (0.0, 1.0),
) -> list[Method]:
    """The methods of the published frontier; `interval` for CFG, `ag_interval` for autoguidance, `ag_cfg` the CFG
    scale on `interval` added on top of autoguidance, `window` the (start, stop) of diffusers' guiders that matches
    `interval` on the model's own steps (`step_window`)."""
    every = (0.0, 1.0)
    start, stop = window

    def gated(w: float) -> dict:  # the model's gate curve; threshold k = 1 (benchmarks/gated_cfg.py)
        return {"guidance": "gated_cfg", "guidance_scale": w, "guidance_interval": GATED_INTERVAL,
                "num_inference_steps": 14}  # fmt: skip

    def cfg(window: tuple) -> Callable[[float], dict]:
        return lambda w: {"guidance": "cfg", "guidance_scale": w, "guidance_interval": window}

    def auto(window: tuple, cfg_scale: float = 1.0) -> Callable[[float], dict]:
        from condiff.pipelines.guiders import Autoguidance

        return lambda w: {"guidance": Autoguidance(window, cfg_scale, interval), "guidance_scale": w}

    return [
        Method("CFG", [1.0, 1.5, 2.0, 3.0], cfg(every)),
        Method(f"CFG on {interval}", [2.0, 3.0, 3.5, 5.0], cfg(interval)),
        Method("autoguidance", [1.5, 2.0, 3.0], auto(every)),
        Method(f"autoguidance on {ag_interval}", [2.0, 4.0], auto(ag_interval)),
        Method(f"autoguidance + CFG {ag_cfg:g} on {interval}", [1.5, 2.0], auto(every, ag_cfg)),
        Method("APG (eta 0)", [3.5, 6.0], diffusers_guider("AdaptiveProjectedGuidance", eta=0.0)),
        Method("CFG-Zero*", [2.0, 3.0], diffusers_guider("ClassifierFreeZeroStarGuidance")),
        Method(
            "CG (score) + CFG 2",
            [3.0, 5.0],
            lambda s: {"classifier_scale": s, "guidance_scale": 2.0, "guidance_interval": every},
            "cg",
        ),  # fmt: skip
        Method(
            f"APG (eta 0) on {interval}",
            [3.5, 5.0, 7.0],
            diffusers_guider("AdaptiveProjectedGuidance", eta=0.0, start=start, stop=stop),
        ),  # fmt: skip
        Method(
            f"CFG-Zero* on {interval}",
            [3.5, 5.0],
            diffusers_guider("ClassifierFreeZeroStarGuidance", start=start, stop=stop),
        ),  # fmt: skip
        Method(f"gated CFG on {GATED_INTERVAL}, k 1, 14 steps", [2.0, 2.5, 3.0], gated),
        Method(
            f"CFG on {GATED_INTERVAL}, 14 steps",
            [2.5, 3.5],
            lambda w: {**cfg(GATED_INTERVAL)(w), "num_inference_steps": 14},
        ),  # fmt: skip
        Method(
            f"CG (score) + CFG 3.5, both on {interval}",
            [1.0, 2.0],
            lambda s: {"classifier_scale": s, "guidance_scale": 3.5, "guidance_interval": interval},
            "cg",
        ),  # fmt: skip
    ]


def read_points(path: Path) -> dict[tuple[str, float], dict]:
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["method"], float(r["scale"])): r for r in rows}


def measure(
    pipes: dict[str, Any],
    methods: list[Method],
    points_file: Path,
    evaluate: Callable[..., dict[str, Any]],
    num_per_class: int,
    seed: int = 0,
) -> Iterator[dict[str, Any]]:
    """Evaluate every (method, scale) not yet in `points_file` (appended as JSON lines); yield every point."""
    done = read_points(points_file)
    for method in methods:
        for scale in method.scales:
            row = done.get((method.name, float(scale)))
            if row is None:
                result = evaluate(pipes[method.pipeline], num_per_class=num_per_class, seed=seed, **method.call(scale))
                row = {"method": method.name, "scale": float(scale), "num_per_class": num_per_class, "seed": seed}
                row |= {k: result.get(k) for k in SCORE_KEYS}
                with points_file.open("a") as f:
                    f.write(json.dumps(row) + "\n")
            yield row


def best_at_accuracy(rows: list[dict[str, Any]], accuracy: float = 0.99) -> list[dict[str, Any]]:
    """Per method, the point with the lowest FD / floor among those with accuracy >= `accuracy` (None if none)."""
    best: dict[str, dict | None] = {}
    for row in rows:
        best.setdefault(row["method"], None)
        if row["accuracy"] is not None and row["accuracy"] >= accuracy:
            current = best[row["method"]]
            if current is None or row["fd_ratio_matched"] < current["fd_ratio_matched"]:
                best[row["method"]] = row
    return [{"method": m, **(r or {})} for m, r in best.items()]


COLUMNS = [("method", "method", ""), ("scale", "scale", "g"), ("accuracy", "accuracy", ".3f"),
           ("FD", "frechet_distance", ".2f"), ("FD / floor", "fd_ratio_matched", ".2f"),
           ("NFE / image", "nfe_per_image", ".1f")]  # fmt: skip


def frontier_markdown(rows: list[dict[str, Any]], header: str, accuracy: float = 0.99) -> str:
    best = best_at_accuracy(rows, accuracy)
    return "\n".join([header, "", markdown_table(rows, COLUMNS), "", f"Best FD / floor at accuracy >= {accuracy:g}:",
                      "", markdown_table(best, COLUMNS), ""])  # fmt: skip


def plot_frontier(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Accuracy against FD / same-N floor, one line per method, points labelled by scale."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["scale"])
        ax.plot([r["fd_ratio_matched"] for r in mine], [r["accuracy"] for r in mine], marker="o", label=method)
        for r in mine:
            ax.annotate(f"{r['scale']:g}", (r["fd_ratio_matched"], r["accuracy"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")  # fmt: skip
    ax.set_xlabel("Frechet distance / same-N floor (lower is better)")
    ax.set_ylabel("evaluator accuracy")
    ax.axhline(0.99, color="grey", lw=0.5, ls="--")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
