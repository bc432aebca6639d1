"""Guidance methods as small objects: which network branches a denoising step needs and how their predictions combine.

The sampling loop (`denoising.py`) asks a guidance object, at every step, for `branches(step)` (names below), runs
those branches as batched network passes, and hands the predictions to `combine`; `predict` and `after_step` let a
method that needs more (a classifier's gradient, the mean shift of an ancestral step) take over. Adding a method is
one class here plus its tests. Branch names: "cond" and "uncond" are the main network on the condition and on the
null (or negative) condition; "guide" and "guide_uncond" the guiding network (autoguidance) on the same two.

The formulas live in `guidance.py`. Part of the Hub-loadable pipeline code: imports only torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .guidance import (
    alpha_prod_at,
    ancestral_variance,
    cfg_combine,
    classifier_log_prob_grad,
    denoised_log_prob_grad,
    gate_curve_at,
    in_guidance_interval,
    mean_shift,
    score_correction,
    x0_difference_rms,
)

Predictions = dict[str, torch.Tensor]
Evaluate = Callable[[torch.Tensor, tuple[str, ...]], Predictions]  # (model input, branch names) -> predictions


@dataclass
class Step:
    """One denoising step as a guidance object sees it. The scales are the pipeline's call state, read at every step
    (a `callback_on_step_end` may change them mid-call)."""

    index: int
    timestep: torch.Tensor
    num_inference_steps: int
    sample: torch.Tensor  # x_t before the step
    model_input: torch.Tensor  # x_t after `scheduler.scale_model_input`
    scheduler: Any
    guidance_scale: float = 1.0
    guidance_rescale: float = 0.0
    classifier_scale: float = 0.0
    notes: dict = field(default_factory=dict)  # what `predict` leaves for `after_step`

    @property
    def num_train_timesteps(self) -> int:
        return self.scheduler.config.num_train_timesteps

    def inside(self, interval: tuple[float, float]) -> bool:
        return in_guidance_interval(self.timestep, self.num_train_timesteps, interval)


class Guidance:
    """No guidance: the conditional branch alone. Subclasses override `branches` and `combine`, or `predict`."""

    name = "conditional"
    needs: tuple[str, ...] = ()  # pipeline components the method needs (e.g. "guide_unet")

    def branches(self, step: Step) -> tuple[str, ...]:
        return ("cond",)

    def combine(self, step: Step, predictions: Predictions) -> torch.Tensor:
        return predictions["cond"]

    def predict(self, step: Step, evaluate: Evaluate) -> torch.Tensor:
        """The prediction the scheduler steps with."""
        return self.combine(step, evaluate(step.model_input, self.branches(step)))

    def score_prediction(self, step: Step, evaluate: Evaluate) -> torch.Tensor:
        """The prediction whose noise gives the guided score at `step` (a Langevin corrector's): `predict`, for the
        methods that guide through the prediction."""
        return self.predict(step, evaluate)

    def after_step(self, step: Step, prev_sample: torch.Tensor) -> torch.Tensor:
        """A change of the scheduler's output (classifier guidance's mean shift); none by default."""
        return prev_sample

    def network_scale(self, step: Step) -> float | None:
        """The scale a guidance-embedded network takes as an input; None for networks that take none."""
        return None


@dataclass
class ClassifierFreeGuidance(Guidance):
    """CFG (Ho & Salimans 2022): uncond + w (cond - uncond), w = the call's `guidance_scale` inside `interval`
    (Kynkaanniemi et al. 2024) and 1 outside, with Lin et al.'s rescale. One branch at w = 0 or 1."""

    interval: tuple[float, float] = (0.0, 1.0)
    name = "cfg"

    def scale(self, step: Step) -> float:
        return step.guidance_scale if step.inside(self.interval) else 1.0

    def branches(self, step: Step) -> tuple[str, ...]:
        w = self.scale(step)
        return ("uncond",) if w == 0 else ("cond",) if w == 1 else ("cond", "uncond")

    def combine(self, step: Step, predictions: Predictions) -> torch.Tensor:
        if len(predictions) == 1:
            return next(iter(predictions.values()))
        return cfg_combine(predictions["uncond"], predictions["cond"], self.scale(step), step.guidance_rescale)


@dataclass
class GatedClassifierFreeGuidance(ClassifierFreeGuidance):
    """CFG per image, where it is needed: inside `interval` both branches run and an image is guided (w) only when
    r = rms(x0(cond) - x0(uncond)) / m(t) exceeds `threshold`; the others keep the conditional prediction. m(t) is
    `curve`, the median of that rms over the model's unguided sampling paths (`GateCurveRecorder`), log-interpolated
    in t. Images the condition already determines are left as the model draws them, which keeps diversity (FD);
    those where the condition still pulls hard get the push. condiff's own method, measured in the README."""

    curve: tuple = ()
    threshold: float = 1.2
    name = "gated_cfg"

    def combine(self, step: Step, predictions: Predictions) -> torch.Tensor:
        if len(predictions) == 1:
            return next(iter(predictions.values()))
        cond, uncond = predictions["cond"], predictions["uncond"]
        guided = cfg_combine(uncond, cond, self.scale(step), step.guidance_rescale)
        abar = alpha_prod_at(step.scheduler, step.timestep)
        rms = x0_difference_rms(step.model_input, cond, uncond, abar, step.scheduler.config.prediction_type)
        gate = (rms / gate_curve_at(self.curve, step.timestep) > self.threshold).to(cond.device)
        return torch.where(gate.view(-1, *[1] * (cond.ndim - 1)), guided, cond)


@dataclass
class GateCurveRecorder(Guidance):
    """Conditional sampling (the conditional prediction, unguided) that records, per step, every image's
    rms(x0(cond) - x0(uncond)) in `records` (timestep -> list of per-batch tensors): the data of a gated-CFG curve."""

    records: dict = field(default_factory=dict)
    name = "gate_recorder"

    def branches(self, step: Step) -> tuple[str, ...]:
        return ("cond", "uncond")

    def combine(self, step: Step, predictions: Predictions) -> torch.Tensor:
        cond, uncond = predictions["cond"], predictions["uncond"]
        abar = alpha_prod_at(step.scheduler, step.timestep)
        rms = x0_difference_rms(step.model_input, cond, uncond, abar, step.scheduler.config.prediction_type)
        self.records.setdefault(float(step.timestep), []).append(rms.cpu())
        return cond


@dataclass
class EmbeddedGuidance(ClassifierFreeGuidance):
    """A guidance-distilled network (Meng et al. 2023) takes w as an input: one branch at every scale."""

    name = "embedded"

    @classmethod
    def for_call(cls, guidance: Any, scale: float, rescale: float, trained: Any, interval: tuple) -> EmbeddedGuidance:
        """The guidance of a call on a guidance-embedded UNet trained on scales `trained` ((lo, hi) or None),
        refused before sampling when the call asks for what such a UNet cannot do."""
        if guidance != "cfg":
            raise ValueError(f"guidance={guidance!r} cannot apply to a guidance-embedded UNet: it takes w as an "
                             "input; use guidance='cfg' (the default) and guidance_scale")  # fmt: skip
        if rescale:
            raise ValueError("guidance_rescale must be 0 with a guidance-embedded UNet: it has no separate branches")
        if trained and not trained[0] <= scale <= trained[1]:
            raise ValueError(f"guidance_scale must be in {list(trained)} (this UNet was trained there), got {scale}")
        return cls(interval)

    def branches(self, step: Step) -> tuple[str, ...]:
        return ("cond",)

    def combine(self, step: Step, predictions: Predictions) -> torch.Tensor:
        return predictions["cond"]

    def network_scale(self, step: Step) -> float:
        return self.scale(step)


@dataclass
class Autoguidance(Guidance):
    """Autoguidance (Karras et al. 2024): D = D_guide + w (D - D_guide), both conditional, where the guide is a
    weaker model of the same task (smaller and/or trained for less). w = the call's `guidance_scale` inside
    `interval`, 1 (the main model alone, one branch) outside. With `cfg_scale` != 1, CFG on `cfg_interval` is added
    on top: + (w_cfg - 1) (D - D_uncond), the main model's null branch run only on those steps."""

    interval: tuple[float, float] = (0.0, 1.0)
    cfg_scale: float = 1.0
    cfg_interval: tuple[float, float] = (0.0, 1.0)
    name = "autoguidance"
    needs = ("guide_unet",)

    def scale(self, step: Step) -> float:
        return step.guidance_scale if step.inside(self.interval) else 1.0

    def cfg(self, step: Step) -> float:
        return self.cfg_scale if step.inside(self.cfg_interval) else 1.0

    def branches(self, step: Step) -> tuple[str, ...]:
        auto, cfg = self.scale(step) != 1, self.cfg(step) != 1
        return ("cond",) + (("guide",) if auto else ()) + (("uncond",) if cfg else ())

    def combine(self, step: Step, predictions: Predictions) -> torch.Tensor:
        cond = predictions["cond"]
        guided = cond
        if "guide" in predictions:
            guided = guided + (self.scale(step) - 1) * (cond - predictions["guide"])
        if "uncond" in predictions:
            guided = guided + (self.cfg(step) - 1) * (cond - predictions["uncond"])
        return guided


@dataclass
class ClassifierGuidance(Guidance):
    """Classifier guidance (Dhariwal & Nichol 2021) on top of an `inner` method (CFG for a class-conditional UNet:
    CG + CFG). s = the call's `classifier_scale` inside `interval`, 0 outside. A noise-aware `classifier(x_t, t)`
    gives g = grad log p(y | x_t) directly; a classifier of clean images (`noise_aware=False`) judges Tweedie's x0
    and g is taken through the denoiser (training-free guidance). `method`: "score" corrects the prediction
    (Algorithm 2, any scheduler), "mean_shift" shifts the ancestral step's mean by s Sigma g (Algorithm 1)."""

    inner: Guidance
    classifier: Callable[..., torch.Tensor]
    labels: torch.Tensor
    method: str = "score"
    noise_aware: bool = True
    interval: tuple[float, float] = (0.0, 1.0)
    name = "classifier"

    def branches(self, step: Step) -> tuple[str, ...]:
        return self.inner.branches(step)

    def combine(self, step: Step, predictions: Predictions) -> torch.Tensor:
        return self.inner.combine(step, predictions)

    def predict(self, step: Step, evaluate: Evaluate) -> torch.Tensor:
        scale = step.classifier_scale if step.inside(self.interval) else 0.0
        if scale == 0:
            return self.inner.predict(step, evaluate)
        abar = alpha_prod_at(step.scheduler, step.timestep)
        ptype = step.scheduler.config.prediction_type
        if self.noise_aware:
            prediction = self.inner.predict(step, evaluate)
            grad = classifier_log_prob_grad(self.classifier, step.model_input, step.timestep, self.labels)
        else:

            def denoise(x: torch.Tensor) -> torch.Tensor:
                return self.inner.combine(step, evaluate(x, self.inner.branches(step)))

            prediction, grad = denoised_log_prob_grad(
                denoise, self.classifier, step.model_input, abar, ptype, self.labels
            )
        if self.method == "score":
            return score_correction(prediction, grad, abar, scale, ptype)
        step.notes["mean_shift"] = (grad, scale)
        return prediction

    def score_prediction(self, step: Step, evaluate: Evaluate) -> torch.Tensor:
        """The mean shift's s Sigma g is the score's + s g: for a corrector, the score correction either way."""
        prediction = self.predict(step, evaluate)
        if "mean_shift" not in step.notes:
            return prediction
        grad, scale = step.notes.pop("mean_shift")
        abar = alpha_prod_at(step.scheduler, step.timestep)
        return score_correction(prediction, grad, abar, scale, step.scheduler.config.prediction_type)

    def after_step(self, step: Step, prev_sample: torch.Tensor) -> torch.Tensor:
        """The mean shift by s Sigma g, Sigma the step's: learned per pixel when the UNet predicts it (GLIDE's choice:
        the variance values of the conditional branch, `denoising.py`)."""
        if "mean_shift" not in step.notes:
            return prev_sample
        grad, scale = step.notes["mean_shift"]
        variance = ancestral_variance(step.scheduler, step.timestep, step.notes.get("variance_values"))
        dtype = prev_sample.dtype if variance.ndim else None  # a per-pixel Sigma must not promote the state
        return mean_shift(prev_sample, grad, variance.to(prev_sample.device, dtype), scale)
