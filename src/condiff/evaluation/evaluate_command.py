"""`condiff evaluate`: accuracy and Frechet distance of one setting of a pipeline, as a self-describing JSON report
(the guidance method, scales, scheduler and steps actually used; each Frechet ratio named after its floor). A text
model (`--pipeline latent`) is scored on held-out phrasings naming each digit (`text_prompts.PromptedPipeline`),
with attribute control on request (`--attributes N`).

The CLI has checked every argument before `run_from_args` is called; this module loads the model.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["run_from_args", "resolved_settings", "labelled_report", "EVALUATOR_SCOPE"]

EVALUATOR_SCOPE = (
    "condiff evaluate scores 10-class, 1-channel 28x28 models (MNIST-like digits, judged by the shipped MNIST "
    "classifier)"
)
# evaluate_pipeline's keys -> the report's self-describing ones (which floor each Frechet ratio divides by)
REPORT_KEYS = {
    "floor": "floor_all_train_rows",
    "fd_ratio": "fd_over_floor_all_train_rows",
    "floor_matched": "floor_same_n",
    "fd_ratio_matched": "fd_over_floor_same_n",
}
REPORT_NOTES = {
    "frechet_distance": "evaluator features of the generated samples vs the MNIST test split",
    "floor_all_train_rows": "real vs real: all MNIST train rows vs the test split",
    "floor_same_n": "real vs real: train subsets of num_samples rows vs the test split (mean of 5 draws); "
    "the fair floor for num_samples generated images (small samples inflate the Frechet distance)",
}
TEXT_NOTE = "text model: each digit prompted with held-out phrasings naming it (condiff.captions.evaluation_prompts)"


def evaluable_or_raise(pipe: Any, model: str | None) -> None:
    """Refuse, before sampling, a model the MNIST evaluator cannot score (a text model: its decoded images)."""
    from condiff.evaluation.sampling import can_evaluate
    from condiff.pipelines.checks import unet_sample_size

    cfg = pipe.unet.config
    height, width = unet_sample_size(cfg)
    if hasattr(pipe, "vae"):  # latent: what the VAE decodes
        channels, factor = pipe.vae.config.out_channels, pipe.vae_scale_factor
        if channels == 1 and (height * factor, width * factor) == (28, 28):
            return
        shape = f"text, {channels}-channel {height * factor}x{width * factor}"
    elif can_evaluate(pipe):
        return
    else:
        shape = f"{pipe.num_classes}-class, {cfg.in_channels}-channel {height}x{width}"
    raise ValueError(f"{EVALUATOR_SCOPE}; --model {model or 'shipped'!r} is a {shape} model")


def resolved_settings(pipe: Any, guidance: dict[str, Any]) -> dict[str, Any]:
    """The guidance a call with `guidance` runs on `pipe`: method, classifier scale (None without a classifier),
    CFG scale (None where it does not apply: an unconditional UNet) and scheduler class, defaults resolved."""
    cfg, w = pipe.config, guidance.get("guidance_scale")
    w = pipe.default_guidance_scale if w is None else w
    if hasattr(pipe, "default_guidance_method"):  # classifier-guided
        scale = guidance.get("classifier_scale")
        return {
            "guidance_method": guidance.get("guidance_method") or pipe.default_guidance_method(),
            "classifier_scale": float(cfg.default_classifier_scale if scale is None else scale),
            "guidance_scale": w if pipe.class_conditional_unet else None,
            "scheduler": type(pipe.scheduler).__name__,
        }
    method = guidance.get("guidance") or cfg.get("default_guidance") or "cfg"
    return {
        "guidance_method": "classifier-free" if method == "cfg" else method,
        "classifier_scale": None,
        "guidance_scale": float(w),
        "scheduler": type(pipe.scheduler).__name__,
    }


def labelled_report(result: dict[str, Any], model: str | None) -> dict[str, Any]:
    """evaluate_pipeline's result with each Frechet floor and ratio named after its floor, and notes."""
    report = {"model": model or "shipped"}
    report |= {REPORT_KEYS.get(key, key): value for key, value in result.items()}
    report["notes"] = dict(REPORT_NOTES)
    return report


def run_from_args(args: argparse.Namespace, guidance: dict[str, Any]) -> dict[str, Any]:
    """Load, check, sample and score; print the JSON report and write it to `--out` when given."""
    from condiff.evaluation import scoring
    from condiff.evaluation.sampling import default_num_inference_steps
    from condiff.files import atomic_write_text
    from condiff.loading import load_pipeline

    pipe = load_pipeline(args.model, args.scheduler, pipeline=args.pipeline)
    evaluable_or_raise(pipe, args.model)
    pipe.set_progress_bar_config(disable=True)
    settings = resolved_settings(pipe, guidance)
    steps = args.steps if args.steps is not None else default_num_inference_steps(pipe)
    scored = pipe
    if args.pipeline == "latent":
        from condiff.evaluation.text_prompts import PromptedPipeline

        scored = PromptedPipeline(pipe)
    result = scoring.evaluate_pipeline(scored, num_per_class=args.num_per_class, num_inference_steps=steps,
                                       seed=args.seed, **guidance)  # fmt: skip
    result.pop("sampler", None)  # the same class name as settings["scheduler"]
    report = labelled_report(result, args.model) | {"pipeline": args.pipeline} | settings
    report["num_inference_steps"] = steps
    if args.pipeline == "latent":
        report["notes"]["prompts"] = TEXT_NOTE
        if args.attributes:
            from condiff.evaluation.text_report import attribute_section

            call = {"num_inference_steps": steps, "seed": args.seed}
            report["attributes"] = attribute_section(pipe, args.attributes, settings["guidance_scale"], call)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    return report
