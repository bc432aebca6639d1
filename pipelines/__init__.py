"""condiff's pipelines. Each file here is also diffusers custom-pipeline code (no condiff imports)."""

from .class_conditional import ClassConditionalDDPMPipeline
from .guidance import cfg_combine, guided_prediction, in_guidance_interval, rescale_guided

__all__ = [
    "ClassConditionalDDPMPipeline",
    "cfg_combine",
    "guided_prediction",
    "in_guidance_interval",
    "rescale_guided",
]
