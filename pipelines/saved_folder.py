"""A saved pipeline folder checked before diffusers loads it: its structure (each component named in model_index.json
is a class the pipeline takes there, has its folder, a readable config and weights) and its sizes. Errors name the
folder, the component and the problem, where diffusers' own would name the pipeline folder or an unrelated field.

A folder is not trusted for its sizes: a `num_train_timesteps` of 1e9 hangs a scheduler's constructor; a
`sample_size` of 20,000 or `block_out_channels` of 2^20 ask for gigabytes to terabytes. Each limit names the file and
field it refuses, before anything is allocated; raise one on purpose by editing `LIMITS` (e.g.
`condiff.pipelines.saved_folder.LIMITS["max_parameters"] = 2e10`).

Part of the Hub-loadable pipeline code: imports only torch, diffusers and the standard library.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import typing
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
        f"{path}: {field} = {value!r} is beyond what condiff loads ({limit} = {LIMITS[limit]:g}); a folder whose "
        f"sizes are this large is refused before anything is allocated (raise "
        f"condiff.pipelines.saved_folder.LIMITS[{limit!r}] to load it on purpose)"
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


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


def check_component_config(path: Path) -> None:
    """Refuse a component's config.json / scheduler_config.json whose sizes are beyond `LIMITS`."""
    config = read_json(path)
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


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")


def _accepted_classes(pipeline_class: Any, name: str) -> tuple[type, ...] | None:
    """The classes `pipeline_class.__init__` annotates for component `name` (None: any, or not annotated)."""
    try:
        hint = typing.get_type_hints(pipeline_class.__init__).get(name)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve is not checked
        return None
    options = [a for a in typing.get_args(hint) or (hint,) if isinstance(a, type) and a is not type(None)]
    return tuple(options) or None


def _check_component(folder: Path, name: str, entry: Any, pipeline_class: Any) -> None:
    if not isinstance(entry, (list, tuple)) or len(entry) != 2 or entry[1] is None:
        return  # a config value, or an optional component saved as None
    library, class_name = entry
    accepted = _accepted_classes(pipeline_class, name) if pipeline_class is not None else None
    if accepted is not None and library in ("diffusers", "transformers"):
        saved_class = getattr(importlib.import_module(library), str(class_name), None)
        if not (isinstance(saved_class, type) and issubclass(saved_class, accepted)):
            allowed = " or ".join(f"{a.__module__.split('.')[0]}.{a.__name__}" for a in accepted)
            raise ValueError(f"{folder / 'model_index.json'}: component {name!r} is {library}.{class_name}, but "
                             f"{pipeline_class.__name__} takes {allowed} there")  # fmt: skip
    sub = folder / name
    if library not in ("diffusers",) and not sub.is_dir():
        return  # transformers components and custom code are checked by their own loaders
    configs = [sub / f for f in ("scheduler_config.json", "config.json") if (sub / f).is_file()]
    if not configs:
        raise ValueError(f"component {name!r} of {folder}: {sub} has no config.json (or scheduler_config.json)")
    for config in configs:
        check_component_config(config)
    if configs[0].name == "config.json" and not any(p.name.endswith(WEIGHT_SUFFIXES) for p in sub.iterdir()):
        raise ValueError(f"component {name!r} of {folder}: {sub} has a config.json but no weights file "
                         "(diffusion_pytorch_model.safetensors)")  # fmt: skip


def check_saved_folder(folder: str | os.PathLike, pipeline_class: Any = None) -> None:
    """For a local pipeline folder: each component named in model_index.json is checked (the class
    `pipeline_class` takes there, its folder, config, weights, and sizes against `LIMITS`). Hub ids are left to
    diffusers' loading."""
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        return
    index = read_json(folder / "model_index.json")
    if not isinstance(index, dict):
        raise ValueError(f"{folder / 'model_index.json'} must hold a JSON object")
    for name, entry in index.items():
        if not name.startswith("_"):
            _check_component(folder, name, entry, pipeline_class)
