"""Size limits checked when a saved pipeline folder is loaded, before anything is allocated: a folder is not trusted
for its sizes (a `num_train_timesteps` of 1e9 hangs a scheduler's constructor; a `sample_size` of 20,000 or
`block_out_channels` of 2^20 ask for gigabytes to terabytes). Each limit names the file and field it refuses; raise
one on purpose by editing `LIMITS` (e.g. `condiff.pipelines.limits.LIMITS["max_parameters"] = 2e10`).

Part of the Hub-loadable pipeline code: imports only torch, diffusers and the standard library.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

LIMITS = {
    "max_train_timesteps": 100_000,  # schedules in use have 1,000 (a few 4,000)
    "max_sample_size": 4096,  # a UNet's or VAE's sample_size, per side
    "max_class_embeds": 1_000_000,
    "max_parameters": 20_000_000_000,  # per component, counted on the meta device (no memory used)
}


def _refuse(path: Path, field: str, value: Any, limit: str) -> None:
    raise ValueError(
        f"{path}: {field} = {value!r} is beyond what condiff loads ({limit} = {LIMITS[limit]:g}); a folder whose sizes "
        f"are this large is refused before anything is allocated (raise condiff.pipelines.limits.LIMITS[{limit!r}] "
        f"to load it on purpose)"
    )


def _check_number(path: Path, config: dict, field: str, limit: str) -> None:
    value = config.get(field)
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{path}: {field} must be a non-negative number (or a list of them), got {value!r}")
        if v > LIMITS[limit]:
            _refuse(path, field, value, limit)


def count_parameters_on_meta(config: dict) -> int | None:
    """Parameters of the diffusers model that `config` describes, built on the meta device (no memory); None when
    the class is not one of diffusers' models or the config does not build."""
    import diffusers

    model_class = getattr(diffusers, str(config.get("_class_name")), None)
    if model_class is None or not hasattr(model_class, "from_config"):
        return None
    try:
        with torch.device("meta"):
            model = model_class.from_config(config)
    except Exception:  # noqa: BLE001 - a config diffusers cannot build fails the same way when really loaded
        return None
    return sum(p.numel() for p in model.parameters())


def check_component_config(path: Path) -> None:
    """Refuse a component's config.json / scheduler_config.json whose sizes are beyond `LIMITS`."""
    config = json.loads(path.read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(config).__name__}")
    _check_number(path, config, "num_train_timesteps", "max_train_timesteps")
    _check_number(path, config, "sample_size", "max_sample_size")
    _check_number(path, config, "num_class_embeds", "max_class_embeds")
    if path.name == "config.json":
        count = count_parameters_on_meta(config)
        if count is not None and count > LIMITS["max_parameters"]:
            field = f"the model it describes ({count:.3g} parameters)"
            _refuse(path, field, config.get("_class_name"), "max_parameters")


def check_saved_sizes(folder: str | os.PathLike) -> None:
    """For a local pipeline folder: every component's config checked against `LIMITS` (Hub ids are checked by
    diffusers' own loading, after download)."""
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        return
    index = json.loads((folder / "model_index.json").read_text())
    for name in (k for k in index if not k.startswith("_")):
        for file in ("scheduler_config.json", "config.json"):
            if (folder / name / file).is_file():
                check_component_config(folder / name / file)
