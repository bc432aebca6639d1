"""The classifier component of classifier guidance: which kind it is, whether it fits the UNet and scheduler, and
its code saved next to its weights so a folder loads without condiff.

Part of the Hub-loadable pipeline code: imports only torch, diffusers and the standard library.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from .checks import unet_sample_size
from .guidance import supports_mean_shift
from .weights import component_load_kwargs

CLASSIFIER_FILE = "noise_aware_classifier.py"
GUIDANCE_METHODS = ("mean_shift", "score")
HUB_KWARGS = ("cache_dir", "token", "revision", "local_files_only", "force_download", "proxies")


def is_noise_aware(classifier: Any) -> bool:
    """A noise-aware classifier takes (x_t, t) and records its schedule length; a clean one takes images only."""
    return "num_train_timesteps" in getattr(classifier, "config", {})


def check_classifier_fits(unet_cfg: Any, classifier: Any, scheduler_config: Any) -> None:
    """Raise a ValueError when `classifier` does not fit the UNet and scheduler (classes, channels, image size, number
    of training timesteps); an unconditional UNet, or a class-conditional one with the null class, alone is fine."""
    class_conditional_unet, clf = unet_cfg.num_class_embeds is not None, classifier
    if class_conditional_unet and unet_cfg.num_class_embeds < 2:
        raise ValueError("unet must be unconditional or have num_class_embeds = number of classes + 1")
    if clf is None:
        return
    c = clf.config
    if class_conditional_unet and c.num_classes != unet_cfg.num_class_embeds - 1:
        raise ValueError(
            f"classifier has {c.num_classes} classes but the class-conditional unet has "
            f"{unet_cfg.num_class_embeds - 1} (num_class_embeds includes the null class)"
        )
    if c.in_channels != unet_cfg.in_channels:
        raise ValueError(f"classifier takes {c.in_channels} channels but the unet makes {unet_cfg.in_channels}")
    size = c.get("sample_size", c.get("image_size"))
    if size is not None and unet_sample_size(unet_cfg) != (size, size):
        raise ValueError(f"classifier takes {size}x{size} images but the unet makes {unet_sample_size(unet_cfg)}")
    trained_on, steps = c.get("num_train_timesteps"), scheduler_config.num_train_timesteps
    if trained_on is not None and trained_on != steps:
        raise ValueError(
            f"classifier was trained on {trained_on} timesteps but the scheduler has num_train_timesteps={steps}"
        )


def save_classifier_code(classifier: Any, save_directory: str | os.PathLike) -> None:
    """Copy a `NoiseAwareClassifier`'s code next to its saved weights and name it in model_index.json."""
    if classifier is None or type(classifier).__name__ != "NoiseAwareClassifier":
        return
    source = Path(sys.modules[type(classifier).__module__].__file__)
    shutil.copyfile(source, Path(save_directory) / "classifier" / CLASSIFIER_FILE)
    index_path = Path(save_directory) / "model_index.json"
    index = json.loads(index_path.read_text())
    index["classifier"] = [CLASSIFIER_FILE[:-3], "NoiseAwareClassifier"]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def saved_classifier_is_ours(path: str | os.PathLike, kwargs: dict) -> bool:
    """Whether the saved pipeline's model_index names a NoiseAwareClassifier saved with its code."""
    from diffusers import DiffusionPipeline as _Pipeline

    hub = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
    try:
        index = _Pipeline.load_config(path, **hub)
    except (OSError, ValueError):
        return False
    return list(index.get("classifier") or [None, None])[1] == "NoiseAwareClassifier"


def load_saved_classifier(path: str | os.PathLike, kwargs: dict) -> Any:
    """The saved pipeline's `NoiseAwareClassifier`, loaded with this package's class (no `trust_remote_code`) and
    the dtype and variant `kwargs` ask for; None when the folder holds another classifier or none."""
    if not saved_classifier_is_ours(path, kwargs):
        return None
    from .noise_aware_classifier import NoiseAwareClassifier

    loading = component_load_kwargs(kwargs, path, "classifier")
    return NoiseAwareClassifier.from_pretrained(path, subfolder="classifier", **loading)


def classifier_guidance_method(scheduler: Any, method: Any) -> str:
    """`method` checked against the scheduler; None: the mean shift for an ancestral DDPM scheduler (Algorithm 1),
    the score correction (Algorithm 2) for every other one."""
    if method is None:
        return "mean_shift" if supports_mean_shift(scheduler) else "score"
    if method not in GUIDANCE_METHODS:
        raise ValueError(f"guidance_method must be one of {GUIDANCE_METHODS}, got {method!r}")
    if method == "mean_shift" and not supports_mean_shift(scheduler):
        raise ValueError(
            f"guidance_method='mean_shift' needs an ancestral DDPMScheduler with a fixed variance; "
            f"{type(scheduler).__name__} has none: use guidance_method='score'"
        )
    return method


def check_guidable_scheduler(scheduler: Any) -> None:
    """Classifier guidance turns the gradient into a change of the prediction through the schedule's alphas."""
    if not hasattr(scheduler, "alphas_cumprod"):
        raise ValueError(
            f"scheduler {type(scheduler).__name__} has no alphas_cumprod: classifier guidance needs a "
            "discrete variance-preserving schedule (DDPM, DDIM, DPM-Solver++, UniPC, Euler, ...) to turn the "
            "classifier's gradient into a change of the UNet's prediction; EDM-type schedulers have none"
        )
