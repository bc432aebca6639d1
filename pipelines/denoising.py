"""`CondiffPipeline`: what every condiff pipeline shares. The loading guard, the call prologue (defaults from the
config, argument and callback checks), the one denoising loop (model input scaling, optional Langevin corrector steps,
the guided prediction from a guidance object, a learned variance split off before guidance and handed to an ancestral
`scheduler.step` that samples with it, callbacks, interrupt, the network-evaluation count) and the output conversion. A
pipeline adds its conditions (labels, prompts, a classifier), its checks, its networks' forward (`_predict`) and
`__call__`.

Part of the Hub-loadable pipeline code: imports only torch, diffusers and the standard library.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusers import DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

from .callbacks import Pair, step_callback
from .checks import (
    check_callback_inputs,
    check_finite_state,
    check_guide_unet,
    check_output_type,
    check_positive_int,
    short_repr,
)
from .diffusers_guiders import diffusers_guidance, is_diffusers_guider
from .guidance import (
    GUIDANCE_NAMES,
    check_guidance_arguments,
    concat_conditions,
    resolve_default_guidance_scale,
    step_denoised,
)
from .guiders import Autoguidance, ClassifierFreeGuidance, GatedClassifierFreeGuidance, Guidance, Step
from .labels import normalize_id2label
from .outputs import CondiffPipelineOutput, to_output_type
from .saved_folder import check_saved_folder
from .schedules import check_schedule, initial_noise, scheduler_step_kwargs
from .variance import check_variance_setup, scheduler_model_output, split_variance
from .weights import refusing_unsafe_pickles

StepCallback = Callable[[Any, int, Any, dict], dict]
Conditions = dict[str, Any]  # "cond" and "uncond": what the networks take for the condition and the null condition
# branch name -> (network component, condition key); see guiders.py
BRANCHES = {"cond": ("unet", "cond"), "uncond": ("unet", "uncond"), "guide": ("guide_unet", "cond")}
BRANCHES["guide_uncond"] = ("guide_unet", "uncond")


class CondiffPipeline(DiffusionPipeline):
    """Base of condiff's pipelines. During a call, as in diffusers pipelines, `guidance_scale`, `guidance_rescale`,
    `num_timesteps` and `interrupt` are properties backed by state the loop reads at every step, so a
    `callback_on_step_end` may change them mid-call; calls on one pipeline are serialized (`locking.py`)."""

    _guidance_scale: float = 1.0
    _guidance_rescale: float = 0.0
    _classifier_scale: float = 0.0
    _num_timesteps: int = 0
    _interrupt: bool = False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> Any:
        """diffusers' `from_pretrained`; weights load as diffusers loads them: safetensors first, a `.bin` through
        torch's weights-only unpickler (`UnsafeWeightsError` if it holds more)."""
        if not kwargs.pop("_folder_checked", False):  # a subclass that checked it before loading more
            check_saved_folder(pretrained_model_name_or_path, cls)
        with refusing_unsafe_pickles():
            pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        pipe._after_loading(kwargs)
        return pipe

    def _after_loading(self, kwargs: dict) -> None:
        """What a pipeline does to the components `from_pretrained` loaded (nothing by default)."""

    # ------------------------------------------------------------------------------------------------ call state
    @property
    def id2label(self) -> dict[int, str] | None:
        return normalize_id2label(self.config.get("id2label"))

    @property
    def guidance_scale(self) -> float:
        """The guidance w of the running call (CFG: 0 = unconditional, 1 = conditional; autoguidance: 1 = the main
        model alone); read from `_guidance_scale` each step. A callback that sets `_guidance_scale = 0.0` mid-call
        turns guidance off as in diffusers: the conditional prediction alone from the next step (stored as 1.0)."""
        return self._guidance_scale

    @property
    def guidance_rescale(self) -> float:
        return self._guidance_rescale

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether a step inside the guidance interval runs both branches (scales 0 and 1 need only one)."""
        return self._guidance_scale not in (0.0, 1.0)

    @property
    def num_timesteps(self) -> int:
        """Denoising steps of the running call."""
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set `pipe._interrupt = True` in a callback to skip the remaining steps (the output is the current state)."""
        return self._interrupt

    @property
    def default_guidance_scale(self) -> float:
        """The scale of a call that gives none, the same rule in every condiff pipeline: the config's
        `default_guidance_scale`, else 3, clamped into a guidance-embedded model's `guidance_scale_range`."""
        config = self.config
        return resolve_default_guidance_scale(config.get("default_guidance_scale"), config.get("guidance_scale_range"))

    # -------------------------------------------------------------------------------------------------- prologue
    def _call_settings(
        self,
        num_inference_steps: Any,
        guidance_scale: Any,
        guidance_interval: Any,
        guidance_rescale: Any,
        output_type: Any,
        callback: Any,
        tensor_inputs: Any,
    ) -> tuple[int, float, tuple[float, float], list[str]]:
        """(steps, guidance scale, interval, callback tensor names) with the config's defaults, checked."""
        config = self.config
        steps = config.default_num_inference_steps if num_inference_steps is None else num_inference_steps
        check_positive_int("num_inference_steps", steps, self.scheduler.config.num_train_timesteps)
        scale = self.default_guidance_scale if guidance_scale is None else guidance_scale
        interval = tuple(config.default_guidance_interval) if guidance_interval is None else guidance_interval
        check_guidance_arguments(scale, guidance_rescale, interval)
        check_output_type(output_type)
        if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):  # diffusers' callbacks bring their own
            tensor_inputs = callback.tensor_inputs
        check_callback_inputs(tensor_inputs, self._callback_tensor_inputs, callback)
        return steps, float(scale), tuple(float(v) for v in interval), list(tensor_inputs)

    def _guidance(self, guidance: Any, interval: tuple[float, float], scale_arg: Any = None, interval_arg: Any = None):
        """The guidance object of a call: "cfg", "autoguidance", "gated_cfg", a `Guidance` object or a diffusers
        guider (then the call's `scale_arg` and `interval_arg` must be None), checked before any sampling; None: the
        config's `default_guidance` ("cfg" without one)."""
        if self.unet is not None:
            check_guide_unet(self.unet, getattr(self, "guide_unet", None))  # a guide swapped in after construction
        if is_diffusers_guider(guidance):
            return diffusers_guidance(guidance, self.unet, scale_arg, interval_arg)
        guidance = self.config.get("default_guidance", "cfg") if guidance is None else guidance
        if guidance == "cfg":
            method = ClassifierFreeGuidance(interval)
        elif guidance == "autoguidance":
            config = self.config
            cfg_interval = tuple(config.get("autoguidance_cfg_interval") or (0.0, 1.0))
            method = Autoguidance(interval, float(config.get("autoguidance_cfg_scale") or 1.0), cfg_interval)
        elif guidance == "gated_cfg":
            method = self._gated_guidance(interval)
        elif isinstance(guidance, Guidance):
            method = guidance
        else:
            raise ValueError(
                f"guidance must be one of {GUIDANCE_NAMES}, a condiff Guidance object or a diffusers guider, got "
                f"{short_repr(guidance)}"
            )
        for component in method.needs:
            if getattr(self, component, None) is None:
                raise ValueError(
                    f"guidance={method.name!r} needs the pipeline component {component!r}, which this pipeline does "
                    f"not have: pass {component}= to the pipeline (from_pretrained or the constructor)"
                )
        return method

    def _gated_guidance(self, interval: tuple[float, float]) -> GatedClassifierFreeGuidance:
        curve = self.config.get("gated_cfg_curve")
        if not curve:
            raise ValueError(
                "guidance='gated_cfg' needs the model's gate curve (the config entry gated_cfg_curve), which this "
                "pipeline lacks: fit one with condiff.evaluation.fit_gate_curve(pipe), then pipe.register_to_config("
                "gated_cfg_curve=...) and save the pipeline"
            )
        threshold = self.config.get("gated_cfg_threshold")
        given = {} if threshold is None else {"threshold": float(threshold)}  # else the class's default
        return GatedClassifierFreeGuidance(interval, tuple(map(tuple, curve)), **given)

    # ------------------------------------------------------------------------------------------------------ loop
    def _predict(self, network: Any, sample: torch.Tensor, condition: Any, t: Any, scale: float | None) -> torch.Tensor:
        """`network`'s output for `sample` under `condition` (`scale`: w for a guidance-embedded network)."""
        raise NotImplementedError

    def _callback_pair(self, conditions: Conditions) -> Pair:
        """What a callback sees as (negative, positive) "prompt_embeds"."""
        return conditions["uncond"], conditions["cond"]

    def _with_callback_pair(self, conditions: Conditions, pair: Pair) -> Conditions:
        return {**conditions, "uncond": pair[0], "cond": pair[1]}

    def _evaluate(
        self,
        x: torch.Tensor,
        names: Sequence[str],
        *,
        t: Any,
        conditions: Conditions,
        scale: Any,
        rows: list[int],
        notes: dict | None = None,
    ) -> dict:
        """The predictions of branches `names`, one batched pass per network; adds the rows run to `rows[0]`. A
        learned variance is split off each output before guidance combines the predictions: `notes` (the step's) gets
        the conditional branch's variance values (GLIDE's choice), or the only branch's."""
        unknown = [n for n in names if n not in BRANCHES]
        if unknown:
            raise ValueError(f"guidance asked for branches {unknown}; allowed: {list(BRANCHES)}")
        out, variances = {}, {}
        for network in ("unet", "guide_unet"):
            mine = [n for n in names if BRANCHES[n][0] == network]
            if not mine:
                continue
            condition = conditions[BRANCHES[mine[0]][1]]
            for name in mine[1:]:
                condition = concat_conditions(condition, conditions[BRANCHES[name][1]])
            sample = torch.cat([x] * len(mine)) if len(mine) > 1 else x
            prediction = self._predict(getattr(self, network), sample, condition, t, scale)
            prediction, values = split_variance(prediction, x.shape[1])
            out.update(zip(mine, prediction.chunk(len(mine))))
            variances.update({} if values is None else zip(mine, values.detach().chunk(len(mine))))
        if notes is not None and variances:
            notes["variance_values"] = variances.get("cond", next(iter(variances.values())))
        rows[0] += len(names) * x.shape[0]
        return out

    def _denoise(
        self,
        latents: torch.Tensor,
        guidance: Guidance,
        conditions: Conditions,
        generator: Any,
        callback: StepCallback | None,
        tensor_inputs: Sequence[str],
        corrector: Any = None,
    ) -> tuple[torch.Tensor, int]:
        """The sampling loop; returns (final latents, network rows evaluated, a guiding model's rows included).
        `corrector` (`corrector.LangevinCorrector`): corrector steps at each t before the predictor."""
        step_kwargs = scheduler_step_kwargs(self.scheduler, generator)
        timesteps, rows = self.scheduler.timesteps, [0]
        wants_denoised = "denoised" in tensor_inputs  # computed only for a callback that asks for it
        for i, t in enumerate(self.progress_bar(timesteps)):
            if self.interrupt:
                continue
            model_input = self.scheduler.scale_model_input(latents, t)
            step = Step(i, t, len(timesteps), latents, model_input, self.scheduler, self._guidance_scale,
                        self._guidance_rescale, self._classifier_scale)  # fmt: skip
            scale = guidance.network_scale(step)
            evaluate = functools.partial(self._evaluate, t=t, conditions=conditions, scale=scale, rows=rows)
            if corrector is not None:
                step = corrector.correct(step, guidance, evaluate, generator)
            prediction = guidance.predict(step, functools.partial(evaluate, notes=step.notes))
            denoised = step_denoised(self.scheduler, step.model_input, prediction, t) if wants_denoised else None
            output = scheduler_model_output(self.scheduler, prediction, step.notes.get("variance_values"))
            latents = self.scheduler.step(output, t, step.sample, **step_kwargs).prev_sample
            latents = guidance.after_step(step, latents)
            check_finite_state(latents, i, len(timesteps), t, self.scheduler)
            pair = self._callback_pair(conditions)
            latents, pair = step_callback(self, callback, i, t, latents, tensor_inputs, pair, denoised)
            conditions = self._with_callback_pair(conditions, pair)
        return latents, rows[0]

    def _sample(
        self,
        shape: tuple[int, ...],
        steps: int,
        guidance: Guidance,
        conditions: Conditions,
        generator: Any,
        latents: torch.Tensor | None,
        callback: StepCallback | None,
        tensor_inputs: Sequence[str],
        corrector: Any = None,
    ) -> tuple[torch.Tensor, int]:
        """Initial noise of `shape` in the UNet's dtype, the schedule (refused up front if known to fail), the loop."""
        check_variance_setup(self.scheduler, self.unet.config.out_channels, shape[1])
        dtype, device, sigma = self.unet.dtype, self._execution_device, self.scheduler.init_noise_sigma
        latents = initial_noise(shape, generator, latents, device, dtype, sigma)
        self.scheduler.set_timesteps(steps, device=latents.device)
        check_schedule(self.scheduler)
        self._num_timesteps, self._interrupt = len(self.scheduler.timesteps), False
        return self._denoise(latents, guidance, conditions, generator, callback, tensor_inputs, corrector)

    def _output(self, images: torch.Tensor, output_type: str, return_dict: bool, rows: int, batch_size: int) -> Any:
        """[-1, 1] images (or final latents, for "latent") in the requested type, as diffusers pipelines return."""
        if not bool(torch.isfinite(images).all()):
            raise FloatingPointError("the decoded images hold NaN or inf values; no images are returned")
        images = to_output_type(images, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return CondiffPipelineOutput(images=images, nfe_per_image=rows / batch_size)
