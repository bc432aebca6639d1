"""ClassifierGuidedPipeline: a diffusion UNet steered by the gradient of a classifier (Dhariwal & Nichol 2021).

The classifier is either noise-aware, p(y | x_t, t) (`NoiseAwareClassifier`), or a classifier of clean images applied
to the denoiser's estimate of x0 (training-free guidance). Hub-loadable: this file and its siblings import only torch
and diffusers, so `DiffusionPipeline.from_pretrained(folder, custom_pipeline=folder, trust_remote_code=True)` works
without condiff installed (the classifier's code travels in `classifier/noise_aware_classifier.py`).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline, UNet2DModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.schedulers import SchedulerMixin
from diffusers.utils import logging

from .checks import (
    MAX_IMAGES_PER_CALL,
    check_callback_inputs,
    check_generators,
    check_output_type,
    check_positive_int,
    check_scale,
    resolve_num_images,
    unet_sample_size,
)
from .guidance import (
    alpha_prod_at,
    ancestral_variance,
    check_guidance_arguments,
    classifier_log_prob_grad,
    denoised_log_prob_grad,
    guided_prediction,
    in_guidance_interval,
    mean_shift,
    score_correction,
    supports_mean_shift,
)
from .labels import LabelInput, normalize_id2label, parse_labels
from .locking import serialized_call
from .outputs import CondiffPipelineOutput, to_output_type
from .sampling import (
    GuidedPipelineState,
    check_schedule,
    initial_noise,
    scheduler_step_kwargs,
    step_callback,
    unet_extra_inputs,
)
from .weights import component_load_kwargs, refusing_unsafe_pickles

GUIDANCE_METHODS = ("mean_shift", "score")
CLASSIFIER_FILE = "noise_aware_classifier.py"
HUB_KWARGS = ("cache_dir", "token", "revision", "local_files_only", "force_download", "proxies")
StepCallback = Callable[[Any, int, Any, dict], dict]
logger = logging.get_logger(__name__)


def is_noise_aware(classifier: Any) -> bool:
    """A noise-aware classifier takes (x_t, t) and records its schedule length; a clean one takes images only."""
    return "num_train_timesteps" in getattr(classifier, "config", {})


class ClassifierGuidedPipeline(GuidedPipelineState, DiffusionPipeline):
    r"""Classifier guidance for any diffusers scheduler.

    Parameters:
        unet ([`UNet2DModel`]): an unconditional denoiser, or a class-conditional one with `num_class_embeds = K + 1`
            (class K the learned null class); then `guidance_scale` (CFG) and `classifier_scale` combine.
        scheduler ([`SchedulerMixin`]): DDPM (ancestral: the mean shift), or DDIM, DPM-Solver++, UniPC, Euler, ...
            (the score correction).
        classifier (`ModelMixin`, *optional*): a noise-aware classifier `classifier(x_t, t) -> logits` whose config
            has `num_train_timesteps` (condiff's `NoiseAwareClassifier`), or a classifier of clean images
            `classifier(x0) -> logits` (e.g. condiff's MNIST evaluator): training-free guidance through the denoiser.
        id2label (`dict[int, str]`, *optional*): class names, so `label="three"` works.

    `classifier_scale`, `guidance_scale`, `num_timesteps` and `interrupt` are properties backed by state the loop
    reads each step: a `callback_on_step_end` may set `pipe._classifier_scale` or `pipe._interrupt`.
    """

    model_cpu_offload_seq = "unet->classifier"
    _optional_components = ["classifier"]
    _callback_tensor_inputs = ["latents", "prompt_embeds"]

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: SchedulerMixin,
        classifier: Any = None,
        id2label: dict | None = None,
        default_num_inference_steps: int = 50,
        default_classifier_scale: float = 1.0,
        default_guidance_interval: tuple | list = (0.0, 1.0),
    ):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, classifier=classifier)
        check_positive_int("default_num_inference_steps", default_num_inference_steps)
        check_scale("default_classifier_scale", default_classifier_scale)
        check_guidance_arguments(1.0, 0.0, default_guidance_interval)
        self.register_to_config(
            id2label=normalize_id2label(id2label),
            default_num_inference_steps=default_num_inference_steps,
            default_classifier_scale=float(default_classifier_scale),
            default_guidance_interval=[float(v) for v in default_guidance_interval],
        )
        self.check_components()
        self._classifier_scale, self._guidance_scale = 0.0, 1.0
        self._num_timesteps, self._interrupt = 0, False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> Any:
        """diffusers' `from_pretrained`. A `classifier=` passed here replaces the saved one; a saved
        `NoiseAwareClassifier` is loaded with this package's class (no `trust_remote_code` needed), with the dtype and
        variant asked for. Weights load as diffusers loads them: safetensors first, a `.bin` through torch's
        weights-only unpickler (`UnsafeWeightsError` if it holds more)."""
        classifier = kwargs.pop("classifier", None)
        with refusing_unsafe_pickles():
            if classifier is None and saved_classifier_is_ours(pretrained_model_name_or_path, kwargs):
                from .noise_aware_classifier import NoiseAwareClassifier

                loading = component_load_kwargs(kwargs, pretrained_model_name_or_path, "classifier")
                classifier = NoiseAwareClassifier.from_pretrained(
                    pretrained_model_name_or_path, subfolder="classifier", **loading
                )
            # diffusers would import the saved classifier's library to type-check a passed one: load without it.
            pipe = super().from_pretrained(pretrained_model_name_or_path, classifier=None, **kwargs)
        if classifier is not None:
            pipe.register_modules(classifier=classifier)
            pipe.check_components()
        return pipe

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """diffusers' `save_pretrained`; a noise-aware classifier's code is saved next to its weights, so the folder
        loads with `DiffusionPipeline.from_pretrained(folder, custom_pipeline=folder, trust_remote_code=True)`."""
        super().save_pretrained(save_directory, **kwargs)
        if self.classifier is not None and type(self.classifier).__name__ == "NoiseAwareClassifier":
            source = Path(sys.modules[type(self.classifier).__module__].__file__)
            shutil.copyfile(source, Path(save_directory) / "classifier" / CLASSIFIER_FILE)
            index_path = Path(save_directory) / "model_index.json"
            index = json.loads(index_path.read_text())
            index["classifier"] = [CLASSIFIER_FILE[:-3], "NoiseAwareClassifier"]
            index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    # ------------------------------------------------------------------------------------------- state and checks
    @property
    def class_conditional_unet(self) -> bool:
        return self.unet.config.num_class_embeds is not None

    @property
    def num_classes(self) -> int | None:
        """K: the classifier's classes, else the class-conditional UNet's (its null class not counted)."""
        if self.classifier is not None:
            return int(self.classifier.config.num_classes)
        return self.unet.config.num_class_embeds - 1 if self.class_conditional_unet else None

    @property
    def classifier_scale(self) -> float:
        """s of the running call; the loop reads `_classifier_scale` each step."""
        return self._classifier_scale

    def check_components(self) -> None:
        """Raise a ValueError when the classifier does not fit the UNet and scheduler (classes, channels, image
        size, number of training timesteps)."""
        unet_cfg, clf = self.unet.config, self.classifier
        if self.class_conditional_unet and unet_cfg.num_class_embeds < 2:
            raise ValueError("unet must be unconditional or have num_class_embeds = number of classes + 1")
        if clf is None:
            return
        c = clf.config
        if self.class_conditional_unet and c.num_classes != unet_cfg.num_class_embeds - 1:
            raise ValueError(
                f"classifier has {c.num_classes} classes but the class-conditional unet has "
                f"{unet_cfg.num_class_embeds - 1} (num_class_embeds includes the null class)"
            )
        if c.in_channels != unet_cfg.in_channels:
            raise ValueError(f"classifier takes {c.in_channels} channels but the unet makes {unet_cfg.in_channels}")
        size = c.get("sample_size", c.get("image_size"))
        if size is not None and unet_sample_size(unet_cfg) != (size, size):
            raise ValueError(f"classifier takes {size}x{size} images but the unet makes {unet_sample_size(unet_cfg)}")
        trained_on, steps = c.get("num_train_timesteps"), self.scheduler.config.num_train_timesteps
        if trained_on is not None and trained_on != steps:
            raise ValueError(
                f"classifier was trained on {trained_on} timesteps but the scheduler has num_train_timesteps={steps}"
            )

    def default_guidance_method(self) -> str:
        """The mean shift for an ancestral DDPM scheduler, the score correction for every other scheduler."""
        return "mean_shift" if supports_mean_shift(self.scheduler) else "score"

    def check_guidance_method(self, guidance_method: Any) -> str:
        if guidance_method is None:
            return self.default_guidance_method()
        if guidance_method not in GUIDANCE_METHODS:
            raise ValueError(f"guidance_method must be one of {GUIDANCE_METHODS}, got {guidance_method!r}")
        if guidance_method == "mean_shift" and not supports_mean_shift(self.scheduler):
            raise ValueError(
                f"guidance_method='mean_shift' needs an ancestral DDPMScheduler with a fixed variance; "
                f"{type(self.scheduler).__name__} has none: use guidance_method='score'"
            )
        if guidance_method == "score" and not hasattr(self.scheduler, "alphas_cumprod"):
            raise ValueError(f"guidance_method='score' needs a scheduler with alphas_cumprod, not {self.scheduler}")
        return guidance_method

    def check_inputs(
        self, label: LabelInput, num_images: int, steps: int, generator: Any, classifier_scale: Any, guidance_scale: Any
    ) -> list[int] | None:
        """Class ids, one per image (None: unguided, unconditional); raises before any model work."""
        check_positive_int("num_inference_steps", steps, self.scheduler.config.num_train_timesteps)
        check_scale("classifier_scale", classifier_scale)
        if guidance_scale is not None:
            check_guidance_arguments(guidance_scale, 0.0, (0.0, 1.0))
            if not self.class_conditional_unet and guidance_scale != 1:
                logger.warning(
                    "guidance_scale=%s is ignored: the unet is unconditional (use classifier_scale)", guidance_scale
                )
        if not hasattr(self.scheduler, "alphas_cumprod"):
            raise ValueError(
                f"scheduler {type(self.scheduler).__name__} has no alphas_cumprod: classifier guidance needs a "
                "discrete variance-preserving schedule (DDPM, DDIM, DPM-Solver++, UniPC, Euler, ...) to turn the "
                "classifier's gradient into a change of the UNet's prediction; EDM-type schedulers have none"
            )
        self.check_components()
        if label is not None and self.num_classes is None:
            raise ValueError("label needs a classifier (or a class-conditional unet); this pipeline has neither")
        labels = None if label is None else parse_labels(label, self.num_classes, self.id2label)
        batch_size = (1 if labels is None else len(labels)) * num_images
        if batch_size > MAX_IMAGES_PER_CALL:
            raise ValueError(f"label x num_images_per_label = {batch_size} images; at most {MAX_IMAGES_PER_CALL}")
        check_generators(generator, batch_size)
        return None if labels is None else [c for c in labels for _ in range(num_images)]

    # ----------------------------------------------------------------------------------------------- the loop
    def _predict(self, sample: torch.Tensor, class_labels: torch.Tensor | None, t: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, t, class_labels=class_labels, **unet_extra_inputs(self.unet)).sample

    def _classify(self, sample: torch.Tensor, *timestep: Any) -> torch.Tensor:
        return self.classifier(sample.to(self.classifier.dtype), *timestep)

    def _conditions(self, labels: torch.Tensor | None, batch_size: int, device: torch.device):
        """(cond, uncond) class labels for the UNet, made once per call (None for an unconditional UNet)."""
        if not self.class_conditional_unet:
            return None, None
        uncond = torch.full((batch_size,), self.unet.config.num_class_embeds - 1, device=device)
        return (labels if labels is not None else uncond), uncond

    def _prediction_and_gradient(self, x, t, cond, uncond, w: float, scale: float, labels, abar):
        """(prediction with CFG, classifier gradient or None when `scale` is 0, UNet rows) for one step."""
        model = functools.partial(self._predict, t=t)
        if scale == 0 or is_noise_aware(self.classifier):
            pred, rows = guided_prediction(model, x, cond, uncond, w)
            grad = None if scale == 0 else classifier_log_prob_grad(self._classify, x, t, labels)
            return pred, grad, rows
        rows = []

        def predict(sample: torch.Tensor) -> torch.Tensor:
            out, used = guided_prediction(model, sample, cond, uncond, w)
            rows.append(used)
            return out

        ptype = self.scheduler.config.prediction_type
        pred, grad = denoised_log_prob_grad(predict, self._classify, x, abar, ptype, labels)
        return pred, grad, rows[0]

    def _denoise(self, latents: torch.Tensor, labels, method: str, interval, generator, callback, tensor_inputs):
        """The sampling loop; returns (final latents, UNet rows evaluated). Reads the guidance state each step."""
        step_kwargs = scheduler_step_kwargs(self.scheduler, generator)
        num_train_timesteps, ptype = self.scheduler.config.num_train_timesteps, self.scheduler.config.prediction_type
        cond, uncond = self._conditions(labels, latents.shape[0], latents.device)
        # What a callback sees as "prompt_embeds": the UNet's class ids; an unconditional UNet takes none (the
        # requested labels, or -1, are shown, and what comes back is not used).
        shown = torch.full((latents.shape[0],), -1, device=latents.device) if labels is None else labels
        shown = (shown, shown) if cond is None else (uncond, cond)
        guided = labels is not None and self.classifier is not None
        rows = 0
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            if self.interrupt:
                continue
            model_input = self.scheduler.scale_model_input(latents, t)
            inside = in_guidance_interval(t, num_train_timesteps, interval)
            w = 0.0 if labels is None else (self._guidance_scale if inside else 1.0)  # CFG: class-conditional UNets
            w = w if self.class_conditional_unet else 1.0  # an unconditional UNet has one branch
            scale = self._classifier_scale if inside and guided else 0.0
            abar = alpha_prod_at(self.scheduler, t) if scale else None
            pred, grad, used = self._prediction_and_gradient(model_input, t, cond, uncond, w, scale, labels, abar)
            rows += used
            if grad is not None and method == "score":
                pred = score_correction(pred, grad, abar, scale, ptype)
            latents = self.scheduler.step(pred, t, latents, **step_kwargs).prev_sample
            if grad is not None and method == "mean_shift":
                latents = mean_shift(latents, grad, ancestral_variance(self.scheduler, t).to(latents.device), scale)
            latents, shown = step_callback(self, callback, i, t, latents, tensor_inputs, shown)
            uncond, cond = shown if cond is not None else (None, None)
        return latents, rows

    @serialized_call  # schedulers are stateful: concurrent calls on one pipeline take turns (locking.py)
    @torch.no_grad()  # not inference_mode: the classifier's gradient needs autograd inside the loop
    def __call__(  # long: the documented argument list and its checks; the work is in the methods above
        self,
        label: LabelInput = None,
        num_images_per_label: int = 1,
        classifier_scale: float | None = None,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        guidance_method: str | None = None,
        guidance_interval: tuple[float, float] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        num_images_per_prompt: int | None = None,
    ) -> CondiffPipelineOutput | tuple:
        r"""Generate images of the requested classes with classifier guidance.

        Args:
            label: class id(s) or name(s); `None` samples without guidance (unconditionally).
            num_images_per_label: images generated for each entry of `label` (alias: `num_images_per_prompt`).
            classifier_scale: s, the weight of grad log p(y | x_t); 0 = unguided, bit for bit. Default: the
                model's `default_classifier_scale`.
            guidance_scale: CFG's w for a class-conditional UNet (default 1: the conditional prediction); ignored,
                as in diffusers pipelines, for an unconditional UNet (a warning when it is not 1).
            num_inference_steps: denoising steps; default: the model's `default_num_inference_steps`.
            generator, latents: as in diffusers pipelines.
            guidance_method: "mean_shift" (Algorithm 1, ancestral DDPM only) or "score" (Algorithm 2, any
                scheduler). Default: "mean_shift" for DDPM, "score" otherwise.
            guidance_interval: (lo, hi) fractions of the noise range where both guidances apply.
            output_type: "pil", "np", "pt" or "latent".
            callback_on_step_end: `fn(pipe, step, timestep, {"latents": ...})` after each step; may return a new
                "latents" (or "prompt_embeds": the UNet's class ids, [null; labels], as in the CFG pipeline), and
                may set `pipe._classifier_scale`, `pipe._guidance_scale` (0.0 = CFG off: conditional only, as in
                diffusers' `SDCFGCutoffCallback`; classifier guidance stays) or `pipe._interrupt`.

        Returns:
            [`CondiffPipelineOutput`] with `images` and `nfe_per_image` (UNet rows per image; training-free guidance
            also runs one UNet backward pass per guided step), or `(images,)` when `return_dict` is False.
        """
        num_images = resolve_num_images(num_images_per_label, num_images_per_prompt)
        cfg = self.config
        steps = cfg.default_num_inference_steps if num_inference_steps is None else num_inference_steps
        scale = cfg.default_classifier_scale if classifier_scale is None else classifier_scale
        interval = tuple(cfg.default_guidance_interval) if guidance_interval is None else guidance_interval
        class_ids = self.check_inputs(label, num_images, steps, generator, scale, guidance_scale)
        method = self.check_guidance_method(guidance_method)
        check_guidance_arguments(1.0, 0.0, interval)
        check_output_type(output_type)
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        check_callback_inputs(callback_on_step_end_tensor_inputs, self._callback_tensor_inputs, callback_on_step_end)
        self._classifier_scale, self._interrupt = float(scale), False
        self._guidance_scale = 1.0 if guidance_scale is None else float(guidance_scale)

        batch_size = num_images if class_ids is None else len(class_ids)
        shape = (batch_size, self.unet.config.in_channels, *unet_sample_size(self.unet.config))
        device, dtype = self._execution_device, self.unet.dtype
        latents = initial_noise(shape, generator, latents, device, dtype, self.scheduler.init_noise_sigma)
        self.scheduler.set_timesteps(steps, device=device)
        check_schedule(self.scheduler)
        self._num_timesteps = len(self.scheduler.timesteps)
        labels = None if class_ids is None else torch.tensor(class_ids, device=device)
        latents, rows = self._denoise(
            latents, labels, method, interval, generator, callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        images = to_output_type(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return CondiffPipelineOutput(images=images, nfe_per_image=rows / batch_size)


def saved_classifier_is_ours(path: str | os.PathLike, kwargs: dict) -> bool:
    """Whether the saved pipeline's model_index names a NoiseAwareClassifier saved with its code."""
    from diffusers import DiffusionPipeline as _Pipeline

    hub = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
    try:
        index = _Pipeline.load_config(path, **hub)
    except (OSError, ValueError):
        return False
    return list(index.get("classifier") or [None, None])[1] == "NoiseAwareClassifier"
