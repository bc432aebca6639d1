"""condiff: conditional diffusion models (classifier-free and classifier guidance) on Hugging Face diffusers.

Light to import: the pipeline (torch, diffusers) is imported on first use of `condiff.ClassConditionalDDPMPipeline`,
so `condiff --help` answers without loading torch.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from condiff.pipelines import ClassConditionalDDPMPipeline

__version__ = "0.1.0"


def shipped_model_path() -> Path:
    """Folder of the class-conditional MNIST pipeline that ships with condiff (no download needed)."""
    return Path(str(resources.files("condiff") / "assets" / "mnist-cfg"))


def __getattr__(name: str) -> Any:
    """Import `ClassConditionalDDPMPipeline` (and with it torch and diffusers) on first use."""
    if name == "ClassConditionalDDPMPipeline":
        from condiff.pipelines import ClassConditionalDDPMPipeline

        return ClassConditionalDDPMPipeline
    raise AttributeError(f"module 'condiff' has no attribute {name!r}")


__all__ = ["ClassConditionalDDPMPipeline", "shipped_model_path", "__version__"]
