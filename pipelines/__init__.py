"""condiff's pipelines. Each file here is also diffusers custom-pipeline code (no condiff imports).

`denoising.py` holds `CondiffPipeline`, the base with the one sampling loop; `guiders.py` the guidance methods as
objects (and `diffusers_guiders.py` the bridge to diffusers' guiders); `guidance.py` the guidance formulas;
`spatial.py` the base of the pipelines conditioned by concatenation (`super_resolution.py`,
`semantic_layout.py`) and `spatial_conditions.py` their conditions' math; `checks.py` the argument checks every
pipeline shares; `labels.py` class labels, `locking.py` the per-pipeline call lock and `outputs.py` the output class
and `output_type` conversion.
"""

from .checks import MAX_IMAGES_PER_CALL, OUTPUT_TYPES
from .class_conditional import ClassConditionalDDPMPipeline
from .classifier_guided import ClassifierGuidedPipeline
from .denoising import CondiffPipeline
from .guidance import cfg_combine, guided_prediction, in_guidance_interval, rescale_guided
from .guiders import (
    Autoguidance,
    ClassifierFreeGuidance,
    ClassifierGuidance,
    EmbeddedGuidance,
    GateCurveRecorder,
    GatedClassifierFreeGuidance,
    Guidance,
    Step,
)
from .latent_cfg import LatentCFGPipeline
from .outputs import CondiffPipelineOutput
from .semantic_layout import SemanticLayoutPipeline
from .super_resolution import SuperResolutionPipeline

__all__ = [
    "MAX_IMAGES_PER_CALL",
    "OUTPUT_TYPES",
    "Autoguidance",
    "GatedClassifierFreeGuidance",
    "GateCurveRecorder",
    "ClassConditionalDDPMPipeline",
    "ClassifierFreeGuidance",
    "ClassifierGuidance",
    "ClassifierGuidedPipeline",
    "CondiffPipeline",
    "CondiffPipelineOutput",
    "EmbeddedGuidance",
    "Guidance",
    "LatentCFGPipeline",
    "SemanticLayoutPipeline",
    "Step",
    "SuperResolutionPipeline",
    "cfg_combine",
    "guided_prediction",
    "in_guidance_interval",
    "rescale_guided",
]
