"""How condiff pipelines load weights: diffusers' way (safetensors preferred; a `.bin` only through torch's
weights-only unpickler, so no code in a weights file ever runs), with a clear error when that unpickler refuses a
file, and the loading arguments a pipeline hands on to a component it loads itself.

Part of the Hub-loadable pipeline code: imports only torch and the standard library.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

# What `from_pretrained` of a pipeline hands on to a component that it loads itself (besides the dtype).
COMPONENT_LOAD_KWARGS = (
    "cache_dir",
    "token",
    "revision",
    "local_files_only",
    "force_download",
    "proxies",
    "use_safetensors",
    "low_cpu_mem_usage",
    "disable_mmap",
)
_WEIGHTS_FILE = re.compile(r"'([^']+\.(?:bin|pt|pth|ckpt))'")
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


class UnsafeWeightsError(OSError):
    """A pickled weights file holds more than tensors (objects whose unpickling would call code): refused."""


def component_dtype(kwargs: dict, name: str) -> torch.dtype | None:
    """The dtype that `from_pretrained(..., torch_dtype= or dtype=)` asks for component `name`: one dtype for all, or
    a dict by component name with an optional "default" (diffusers' convention); None keeps the saved dtype."""
    dtype = kwargs.get("torch_dtype", kwargs.get("dtype"))
    if isinstance(dtype, dict):
        return dtype.get(name, dtype.get("default"))
    return dtype


def component_load_kwargs(kwargs: dict, folder: str | os.PathLike, subfolder: str) -> dict[str, Any]:
    """The arguments of a pipeline's `from_pretrained` that loading component `subfolder` needs: Hub and file
    options, the component's dtype, and `variant` where the component has files of that variant (as diffusers
    decides per component; a folder that is not local gets the variant as asked)."""
    loading = {k: kwargs[k] for k in COMPONENT_LOAD_KWARGS if k in kwargs}
    dtype = component_dtype(kwargs, subfolder)
    if dtype is not None:
        loading["torch_dtype"] = dtype
    variant = kwargs.get("variant")
    component = Path(folder) / subfolder
    if variant is not None and (not component.is_dir() or any(f".{variant}" in p.name for p in component.iterdir())):
        loading["variant"] = variant
    return loading


def _unpickling_refusal(err: BaseException) -> pickle.UnpicklingError | None:
    """The weights-only unpickler's refusal behind `err` (diffusers re-raises it as a generic OSError)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, pickle.UnpicklingError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


@contextmanager
def refusing_unsafe_pickles(source: str = "a pickled weights file") -> Iterator[None]:
    """Turn the weights-only unpickler's refusal of a pickled weights file (which diffusers reports only as "Unable to
    load weights") into an `UnsafeWeightsError` naming the file (or `source` when the error does not name it) and
    what the unpickler refused."""
    try:
        yield
    except UnsafeWeightsError:
        raise
    except (OSError, pickle.UnpicklingError) as err:
        refusal = _unpickling_refusal(err)
        if refusal is None:
            raise
        files = _WEIGHTS_FILE.findall(str(err)) or _WEIGHTS_FILE.findall(str(refusal))
        refused = _REFUSED_GLOBAL.search(str(refusal))
        raise UnsafeWeightsError(
            f"{files[0] if files else source} holds more than plain tensors, and torch's weights-only unpickler "
            f"refused it{f' (it would call {refused.group(1)})' if refused else ''}: condiff pipelines never run code "
            "from a weights file. Load weights from safetensors, or from a .bin file that holds tensors only."
        ) from refusal
