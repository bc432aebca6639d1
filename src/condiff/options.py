"""Allowed values of condiff's options, importable without torch or diffusers (so `--help` answers at once)."""

NOISE_SCHEDULES = ("squaredcos_cap_v2", "linear", "scaled_linear", "sigmoid")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
BAD_IMAGE_POLICIES = ("error", "skip")
# Short sampler names -> diffusers scheduler classes (`condiff.models.scheduler_for` builds them).
SAMPLERS = {
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "dpm++2m": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
}
# Image files condiff reads and writes, the most common first (error messages list them in this order).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# `--pipeline` kinds -> condiff pipeline classes (the shipped model of each: `condiff.shipped_model_path(kind)`).
PIPELINE_CLASSES = {
    "class-conditional": "ClassConditionalDDPMPipeline",
    "classifier-guided": "ClassifierGuidedPipeline",
    "latent": "LatentCFGPipeline",
}
PIPELINES = tuple(PIPELINE_CLASSES)
