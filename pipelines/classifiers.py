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
from .saved_folder import check_saved_folder
from .weights import component_load_kwargs, refusing_unsafe_pickles

CLASSIFIER_FILE = "noise_aware_classifier.py"
# the classifier classes whose code a pipeline folder carries (saved next to their weights): class -> file
CLASSIFIER_CODE = {
    "NoiseAwareClassifier": CLASSIFIER_FILE,
    "NoiseAwareClassifierEnsemble": CLASSIFIER_FILE,
    "MnistClassifier": "digit_classifier.py",
}
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
    """Copy a `NoiseAwareClassifier`'s (or its ensemble's) or `MnistClassifier`'s code next to its saved weights
    and name it in model_index.json, so the folder loads without condiff."""
    name = type(classifier).__name__
    if classifier is None or name not in CLASSIFIER_CODE:
        return
    source = Path(sys.modules[type(classifier).__module__].__file__)
    shutil.copyfile(source, Path(save_directory) / "classifier" / CLASSIFIER_CODE[name])
    index_path = Path(save_directory) / "model_index.json"
    index = json.loads(index_path.read_text())
    index["classifier"] = [CLASSIFIER_CODE[name][:-3], name]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def saved_classifier_class(path: str | os.PathLike, kwargs: dict) -> str | None:
    """The class name of the saved pipeline's classifier when it is one saved with its code, else None."""
    from diffusers import DiffusionPipeline as _Pipeline

    hub = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
    try:
        index = _Pipeline.load_config(path, **hub)
    except (OSError, ValueError):
        return None
    name = list(index.get("classifier") or [None, None])[1]
    return name if name in CLASSIFIER_CODE else None


def load_saved_classifier(path: str | os.PathLike, kwargs: dict) -> Any:
    """The saved pipeline's classifier (`NoiseAwareClassifier`, its ensemble or `MnistClassifier`), loaded with this
    package's class (no `trust_remote_code`) and the dtype and variant `kwargs` ask for; None when it holds none."""
    name = saved_classifier_class(path, kwargs)
    if name is None:
        return None
    from .digit_classifier import MnistClassifier
    from .noise_aware_classifier import NoiseAwareClassifier, NoiseAwareClassifierEnsemble

    classes = {"MnistClassifier": MnistClassifier, "NoiseAwareClassifier": NoiseAwareClassifier}
    classes["NoiseAwareClassifierEnsemble"] = NoiseAwareClassifierEnsemble
    loading = component_load_kwargs(kwargs, path, "classifier")
    return classes[name].from_pretrained(path, subfolder="classifier", **loading)


class ClassifierComponent:
    """A pipeline's optional `classifier` component (mixed in before the pipeline class): `from_pretrained` /
    `save_pretrained` (the classifier's code is saved next to its weights and loaded with this package's class), its
    fit with the UNet and scheduler, and the classifier-guidance method the scheduler allows."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> Any:
        """diffusers' `from_pretrained`. A `classifier=` passed here replaces the saved one; a saved classifier is
        loaded with this package's class (no `trust_remote_code` needed), with the dtype and variant asked for.
        Weights load as diffusers loads them: safetensors first, a `.bin` through torch's weights-only unpickler
        (`UnsafeWeightsError` if it holds more)."""
        classifier = kwargs.pop("classifier", None)
        check_saved_folder(pretrained_model_name_or_path, cls)  # before the classifier is loaded
        with refusing_unsafe_pickles():
            if classifier is None:
                classifier = load_saved_classifier(pretrained_model_name_or_path, kwargs)
            # diffusers would import the saved classifier's library to type-check a passed one: load without it.
            pipe = super().from_pretrained(
                pretrained_model_name_or_path, classifier=None, _folder_checked=True, **kwargs
            )
        if classifier is not None:
            pipe.register_modules(classifier=classifier)
            pipe.check_components()
        return pipe

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """diffusers' `save_pretrained`; the classifier's code is saved next to its weights, so the folder loads
        with `DiffusionPipeline.from_pretrained(folder, custom_pipeline=folder, trust_remote_code=True)`."""
        super().save_pretrained(save_directory, **kwargs)
        save_classifier_code(self.classifier, save_directory)

    def check_components(self) -> None:
        """Raise a ValueError when the classifier does not fit the UNet and scheduler (classes, channels, image
        size, number of training timesteps)."""
        check_classifier_fits(self.unet.config, self.classifier, self.scheduler.config)

    def default_guidance_method(self) -> str:
        """The mean shift for an ancestral DDPM scheduler, the score correction for every other scheduler."""
        return classifier_guidance_method(self.scheduler, None)

    def check_guidance_method(self, guidance_method: Any) -> str:
        return classifier_guidance_method(self.scheduler, guidance_method)

    def _classify(self, sample: Any, *timestep: Any) -> Any:
        """The classifier's logits for `sample` (at `timestep` for a noise-aware one), in the classifier's dtype."""
        return self.classifier(sample.to(self.classifier.dtype), *timestep)


def classifier_guidance_method(scheduler: Any, method: Any) -> str:
    """`method` checked against the scheduler; None: the mean shift for an ancestral DDPM scheduler (Algorithm 1),
    the score correction (Algorithm 2) for every other one."""
    if method is None:
        return "mean_shift" if supports_mean_shift(scheduler) else "score"
    if method not in GUIDANCE_METHODS:
        raise ValueError(f"guidance_method must be one of {GUIDANCE_METHODS}, got {method!r}")
    if method == "mean_shift" and not supports_mean_shift(scheduler):
        raise ValueError(
            f"guidance_method='mean_shift' needs an ancestral DDPMScheduler with a known variance (fixed_small, "
            f"fixed_small_log, fixed_large, learned or learned_range); "
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
