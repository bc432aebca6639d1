"""Evaluation: what users call to measure a pipeline.

- `metrics`: Frechet distance, conditional accuracy, real-data floors and diversity on the shipped MNIST evaluator;
- `sampling`: the one loop that generates balanced, labelled, timed samples with a pipeline;
- `scoring`: `evaluate_pipeline` (what `condiff evaluate` runs) and the per-row fields of reports;
- `gating`: the gate curve of gated CFG (`fit_gate_curve`);
- `sweep` (+ `sweep_report`): the guidance sweep (`condiff sweep`);
- `reports`: JSON/Markdown/PNG report plumbing shared with the scripts in `benchmarks/`.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> submodule; imported on first use, so `condiff.evaluation.cli_args` stays light (the CLI parser uses it)
_EXPORTS = {
    **dict.fromkeys(
        (
            "classifier_features_and_logits",
            "conditional_accuracy",
            "default_classifier",
            "evaluate_images",
            "frechet_distance",
            "guidance_misses",
            "matched_floor",
            "real_diversity",
            "real_features",
            "real_vs_real_floor",
            "within_class_diversity",
        ),
        "metrics",
    ),
    **dict.fromkeys(("Samples", "balanced_labels", "generate_samples"), "sampling"),
    **dict.fromkeys(("evaluate_pipeline", "score_samples"), "scoring"),
    "fit_gate_curve": "gating",
    **dict.fromkeys(("GuidanceSetting", "run_sweep", "sweep_settings"), "sweep"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
