"""Which model each demo view shows, loaded once and shared; a user's folder (`condiff demo --model`) goes to the view
of its pipeline class. Runs take turns on a model (one lock each), so a view may swap its scheduler per run."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from condiff.loading import folder_pipeline, read_folder_json
from condiff.options import FAST_MODEL

# view -> (pipeline kind that loads it, key of `condiff.shipped_model_path`).
VIEWS: dict[str, tuple[str, str]] = {
    "class-conditional": ("class-conditional", "class-conditional"),
    "classifier-guided": ("classifier-guided", "classifier-guided"),
    "latent": ("latent", "latent"),
    "fast": ("class-conditional", FAST_MODEL),
    "super-resolution": ("super-resolution", "super-resolution"),
    "layout": ("layout", "layout"),
}
# the argument that sets the number of images of each kind's call
NUM_IMAGES_ARG = {"class-conditional": "num_images_per_label", "classifier-guided": "num_images_per_label"}
MODEL_SCHEDULER = "model's own"


def view_for_folder(folder: str) -> str:
    """The view a saved pipeline folder belongs in: its pipeline kind (model_index.json), "fast" for a
    guidance-embedded class-conditional student (its UNet takes the scale: `time_cond_proj_dim`)."""
    if not Path(folder).is_dir():
        raise ValueError(f"--model {folder!r}: no such folder")
    kind = folder_pipeline(folder, None)
    if kind is None:
        raise ValueError(f"--model {folder!r} is not a saved pipeline folder (no model_index.json)")
    unet = read_folder_json(folder, "unet/config.json") or {}
    return "fast" if kind == "class-conditional" and unet.get("time_cond_proj_dim") else kind


@dataclass
class Loaded:
    """A loaded pipeline, the scheduler it was saved with, and the lock its runs take turns on."""

    view: str
    folder: str
    pipe: Any
    scheduler: Any
    lock: threading.Lock = field(default_factory=threading.Lock)

    def use_scheduler(self, name: str) -> None:
        """Sample with `name` (a key of `condiff.options.SAMPLERS`) or, for `MODEL_SCHEDULER`, the model's own."""
        from condiff.models import scheduler_for

        own = name in (None, "", MODEL_SCHEDULER)
        self.pipe.scheduler = self.scheduler if own else scheduler_for(name, self.scheduler.config)


class Models:
    """The demo's pipelines by view: the shipped ones, or the folders in `folders` (view -> folder), each loaded
    on first use."""

    def __init__(self, folders: dict[str, str] | None = None, device: str | None = None):
        self.folders = dict(folders or {})
        self.device = device
        self._loaded: dict[str, Loaded] = {}
        self._lock = threading.Lock()

    def folder(self, view: str) -> str:
        from condiff import shipped_model_path

        return self.folders.get(view) or str(shipped_model_path(VIEWS[view][1]))

    def available(self, view: str) -> str | None:
        """None when the view can run here, else why not in one line (a missing optional module)."""
        import importlib.util

        from condiff.options import EXTRAS, PIPELINE_MODULES

        for module in PIPELINE_MODULES.get(VIEWS[view][0], ()):
            if importlib.util.find_spec(module) is None:
                return f'needs {module}, which is not installed: pip install "condiff[{EXTRAS[module]}]"'
        return None

    def get(self, view: str) -> Loaded:
        """The view's pipeline, loaded on first use (quietly: no progress bars)."""
        with self._lock:
            if view not in self._loaded:
                self._loaded[view] = self._load(view)
            return self._loaded[view]

    def is_loaded(self, view: str) -> bool:
        return view in self._loaded

    def _load(self, view: str) -> Loaded:
        from condiff.loading import load_pipeline

        folder = self.folder(view)
        pipe = load_pipeline(folder, None, self.device, pipeline=VIEWS[view][0])
        pipe.set_progress_bar_config(disable=True)
        return Loaded(view, folder, pipe, pipe.scheduler)

    def warm(self, view: str) -> None:
        """Load `view`'s model and sample one image, so that the first click's preview comes at once."""
        import torch

        loaded = self.get(view)
        kind = VIEWS[view][0]
        if kind in NUM_IMAGES_ARG:
            with loaded.lock:
                loaded.pipe(label=0, generator=torch.Generator().manual_seed(0), output_type="pt")

    def config(self, view: str) -> dict[str, Any]:
        """The view's model_index.json (its defaults), read without loading weights."""
        return read_folder_json(self.folder(view), "model_index.json") or {}
