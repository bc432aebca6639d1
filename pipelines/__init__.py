"""condiff's pipelines. Each file here is also diffusers custom-pipeline code (no condiff imports).

`checks.py` holds the argument checks every pipeline shares, `guidance.py` the guidance formulas, `labels.py` class
labels, `locking.py` the per-pipeline call lock and `outputs.py` the output class and `output_type` conversion.
"""

from .checks import MAX_IMAGES_PER_CALL, OUTPUT_TYPES
from .class_conditional import ClassConditionalDDPMPipeline
from .classifier_guided import ClassifierGuidedPipeline
from .guidance import cfg_combine, guided_prediction, in_guidance_interval, rescale_guided
from .latent_cfg import LatentCFGPipeline
from .outputs import CondiffPipelineOutput

__all__ = [
    "MAX_IMAGES_PER_CALL",
    "OUTPUT_TYPES",
    "ClassConditionalDDPMPipeline",
    "ClassifierGuidedPipeline",
    "CondiffPipelineOutput",
    "LatentCFGPipeline",
    "cfg_combine",
    "guided_prediction",
    "in_guidance_interval",
    "rescale_guided",
]
