"""diffusers' guiders (`diffusers.guiders`, 0.36 and later) as condiff guidance objects.

A guider is driven through its public protocol at every step: `set_state(step, num_inference_steps, timestep)`,
`prepare_inputs` (one batch per condition it wants: "pred_cond", "pred_uncond", "pred_cond_skip", ...), the network
run once per batch, then `guider(batches).pred`. Guiders that only combine predictions (CFG, APG, CFG-Zero*,
tangential, frequency-decoupled, ...) run their batches as one network pass; guiders that perturb the network
(`prepare_models` hooks: PAG, SEG, SLG, diffusers' layer-skip AutoGuidance) run each batch alone between
`prepare_models` and `cleanup_models`, and only when the layers their configs name exist in the network.

Part of the Hub-loadable pipeline code: imports only torch and diffusers.
"""

from __future__ import annotations

from typing import Any

import torch

from .guiders import Evaluate, Guidance, Step

_BRANCH_FIELD = "condiff_branch"


def is_diffusers_guider(obj: Any) -> bool:
    try:
        from diffusers.guiders import BaseGuidance
    except ImportError:  # diffusers before 0.36: no guiders
        return False
    return isinstance(obj, BaseGuidance)


def perturbs_network(guider: Any) -> bool:
    """Whether the guider hooks the denoiser (its class overrides `prepare_models`)."""
    from diffusers.guiders import BaseGuidance

    return type(guider).prepare_models is not BaseGuidance.prepare_models


def layer_configs(guider: Any) -> list[Any]:
    """The guider's layer-perturbation configs (diffusers' `LayerSkipConfig` and the like: they name an `fqn`)."""
    found = []
    for value in vars(guider).values():
        found += [item for item in (value if isinstance(value, (list, tuple)) else [value]) if hasattr(item, "fqn")]
    return found


def check_perturbed_layers(guider: Any, network: Any) -> None:
    """Refuse, before sampling, a guider whose layer configs name blocks this network does not have ("auto" finds
    only a DiT's transformer blocks; a UNet's must be named, e.g. "mid_block.attentions.0.transformer_blocks")."""
    try:
        from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS as auto_names
    except ImportError:
        auto_names = ("transformer_blocks", "single_transformer_blocks", "blocks")
    modules = dict(network.named_modules())
    blocks = sorted(n for n in modules if n.endswith("transformer_blocks"))
    hint = f"this UNet's attention blocks: {blocks}" if blocks else "this UNet has no attention blocks"
    for config in layer_configs(guider):
        wanted = auto_names if config.fqn == "auto" else (config.fqn,)
        if not any(name in modules for name in wanted):
            raise ValueError(
                f"guidance={type(guider).__name__} perturbs the layers fqn={config.fqn!r} (it hooks the network in "
                f"prepare_models), which this UNet does not have ({hint}); give the guider a layer config naming one "
                "of them, or use a guider that only combines predictions (ClassifierFreeGuidance, "
                "AdaptiveProjectedGuidance, ClassifierFreeZeroStarGuidance, TangentialClassifierFreeGuidance, "
                "FrequencyDecoupledGuidance)"
            )


class DiffusersGuidance(Guidance):
    """A diffusers guider driving the condiff loop; its own `guidance_scale`, `start` and `stop` apply."""

    name = "diffusers"

    def __init__(self, guider: Any, network: Any):
        self.guider, self.network = guider, network
        self.perturbs = perturbs_network(guider)
        self.guidance_scale = float(getattr(guider, "guidance_scale", 1.0))
        if self.perturbs:
            check_perturbed_layers(guider, network)

    def predict(self, step: Step, evaluate: Evaluate) -> torch.Tensor:
        guider = self.guider
        guider.set_state(step=step.index, num_inference_steps=step.num_inference_steps, timestep=step.timestep)
        batches = guider.prepare_inputs({_BRANCH_FIELD: ("cond", "uncond")})  # index 0: conditional, 1: null
        names = tuple(getattr(b, _BRANCH_FIELD) for b in batches)
        if not self.perturbs:
            predictions = evaluate(step.model_input, names)
            for batch, name in zip(batches, names):
                batch.noise_pred = predictions[name]
        else:
            for batch, name in zip(batches, names):
                guider.prepare_models(self.network)
                try:
                    batch.noise_pred = evaluate(step.model_input, (name,))[name]
                finally:
                    guider.cleanup_models(self.network)
        return guider(batches).pred


def diffusers_guidance(guider: Any, network: Any, guidance_scale: Any, guidance_interval: Any) -> DiffusersGuidance:
    """The adapter, refusing call arguments that the guider's own settings replace."""
    for name, value in (("guidance_scale", guidance_scale), ("guidance_interval", guidance_interval)):
        if value is not None:
            raise ValueError(
                f"{name} cannot be combined with a diffusers guider: set it on the guider "
                f"(guidance_scale=..., start=..., stop=... fractions of the steps), and leave {name}=None"
            )
    return DiffusersGuidance(guider, network)
