"""condiff: conditional diffusion models (classifier-free and classifier guidance) on Hugging Face diffusers."""

from importlib import resources
from pathlib import Path

from condiff.pipelines import ClassConditionalDDPMPipeline

__version__ = "0.1.0"


def shipped_model_path() -> Path:
    """Folder of the class-conditional MNIST pipeline that ships with condiff (no download needed)."""
    return Path(str(resources.files("condiff") / "assets" / "mnist-cfg"))


__all__ = ["ClassConditionalDDPMPipeline", "shipped_model_path", "__version__"]
