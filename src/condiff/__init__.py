"""condiff: conditional diffusion models (classifier-free and classifier guidance) on Hugging Face diffusers.

Light to import: the pipeline (torch, diffusers) is imported on first use of `condiff.ClassConditionalDDPMPipeline`,
so `condiff --help` answers without loading torch.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from condiff.pipelines import (
        ClassConditionalDDPMPipeline,
        ClassifierGuidedPipeline,
        LatentCFGPipeline,
        SemanticLayoutPipeline,
        SuperResolutionPipeline,
    )

__version__ = "0.1.0"


SHIPPED_MODELS = {
    "class-conditional": "mnist-cfg",
    "classifier-guided": "mnist-classifier-guided",
    "latent": "mnist-latent-text",
    "distilled": "mnist-cfg-distilled",
    "one-step": "mnist-cfg-one-step",
    "super-resolution": "mnist-super-resolution",
    "layout": "mnist-layout",
}


def shipped_model_path(pipeline: str = "class-conditional") -> Path:
    """Folder of a pipeline that ships with condiff (no download needed): the class-conditional MNIST model (CFG),
    with `pipeline="classifier-guided"` the unconditional MNIST model with its noise-aware classifier, with
    `pipeline="latent"` the text-to-image latent diffusion model, with `pipeline="distilled"` the class-conditional
    model's step-distilled student (2 steps, one network evaluation each), with `pipeline="one-step"` its one-step
    generator (distribution matching: one network evaluation per image), with `pipeline="super-resolution"` the
    MNIST super-resolution model (7x7 or 14x14 -> 28x28) and with `pipeline="layout"` the layout-map model."""
    if pipeline not in SHIPPED_MODELS:
        raise ValueError(f"pipeline must be one of {sorted(SHIPPED_MODELS)}, got {pipeline!r}")
    return Path(str(resources.files("condiff") / "assets" / SHIPPED_MODELS[pipeline]))


PIPELINES = (
    "ClassConditionalDDPMPipeline",
    "ClassifierGuidedPipeline",
    "LatentCFGPipeline",
    "SemanticLayoutPipeline",
    "SuperResolutionPipeline",
)


def __getattr__(name: str) -> Any:
    """Import the pipelines (and with them torch and diffusers) on first use."""
    if name in PIPELINES:
        import condiff.pipelines

        return getattr(condiff.pipelines, name)
    raise AttributeError(f"module 'condiff' has no attribute {name!r}")


__all__ = [
    "ClassConditionalDDPMPipeline",
    "ClassifierGuidedPipeline",
    "LatentCFGPipeline",
    "SemanticLayoutPipeline",
    "SuperResolutionPipeline",
    "shipped_model_path",
    "__version__",
]
