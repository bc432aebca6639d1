"""One tab per pipeline: its own controls and the check that turns their values into a `Request`; the shared part
(steps, scheduler, seed, images, Generate, Stop, live outputs) is `panel.py`'s."""

from __future__ import annotations

from typing import Any

import gradio as gr

from condiff.cli_inputs import parse_label
from condiff.demo.live import Stops
from condiff.demo.models import Models
from condiff.demo.panel import Request, common_controls, common_values, sampling_panel, scale, whole
from condiff.demo.spatial_inputs import default_layout_text, default_low_resolution, parse_layout

UNCONDITIONAL = "unconditional"
GUIDANCE_HELP = {
    "cfg": "classifier-free guidance at every step of the interval",
    "gated_cfg": "CFG only for images whose condition still pulls hard (the shipped default)",
    "autoguidance": "the model guided by its smaller guide_unet",
}


def label_choices(config: dict[str, Any], extra: tuple[str, ...] = (UNCONDITIONAL,)) -> list[str]:
    names = [str(v) for _, v in sorted((config.get("id2label") or {}).items(), key=lambda kv: int(kv[0]))]
    return names + list(extra)


def label_value(text: Any, allow_auto: bool = False) -> Any:
    """A label field (a name, an id, "3,7" for one grid row each, "unconditional") -> the pipeline's `label`."""
    text = str(text or "").strip()
    if not text or text.lower() == UNCONDITIONAL:
        return None
    label = parse_label(text)
    if label == "auto" and not allow_auto:
        raise gr.Error('Label "auto" is for super-resolution only')
    return label


def label_box(config: dict[str, Any], value: str = "three", extra: tuple[str, ...] = (UNCONDITIONAL,)) -> Any:
    choices = label_choices(config, extra)
    value = value if value in choices else choices[0]
    return gr.Dropdown(choices, value=value, allow_custom_value=True, label="Label (a name, an id or 3,7)")


def rows_of(label: Any, per_label: int) -> int | None:
    """Grid columns: one row per label when several are given."""
    return per_label if isinstance(label, list) else None


def guidance_methods(config: dict[str, Any]) -> list[str]:
    """The guidance methods this model can run (gated CFG needs its curve, autoguidance its guide_unet)."""
    methods = ["cfg"]
    methods += ["gated_cfg"] if config.get("gated_cfg_curve") else []
    methods += ["autoguidance"] if (config.get("guide_unet") or [None])[0] else []
    return methods


def class_conditional_view(models: Models, stops: Stops) -> None:
    config = models.config("class-conditional")
    methods = guidance_methods(config)
    with gr.Row():
        label = label_box(config)
        method = gr.Radio(methods, value=config.get("default_guidance") or "cfg", label="Guidance method")
        w = gr.Slider(0, 10, value=config.get("default_guidance_scale") or 3, step=0.25, label="Guidance scale w")
    gr.Markdown(" · ".join(f"**{m}**: {GUIDANCE_HELP[m]}" for m in methods))
    with gr.Row():
        common = common_controls("class-conditional", config)

    def build(label: Any, guidance: Any, guidance_scale: Any, *values: Any) -> Request:
        steps, sampler, seed, count = common_values(*values)
        if guidance not in methods:
            raise gr.Error(f"Guidance method must be one of {methods}, got {guidance!r:.40}")
        parsed = label_value(label)
        kwargs = {"label": parsed, "guidance": guidance, "guidance_scale": scale("Guidance scale", guidance_scale, 50)}
        return Request(kwargs | {"num_inference_steps": steps}, count, seed, sampler, rows_of(parsed, count))

    sampling_panel(models, stops, "class-conditional", [label, method, w, *common], build)


def classifier_guided_view(models: Models, stops: Stops) -> None:
    config = models.config("classifier-guided")
    with gr.Row():
        label = label_box(config, extra=())
        method = gr.Radio(["by the sampler", "mean_shift", "score"], value="by the sampler", label="Method")
        s = gr.Slider(0, 20, value=config.get("default_classifier_scale") or 5, step=0.05, label="Classifier scale s")
    gr.Markdown("**mean_shift**: shifts each ancestral (DDPM) step's mean; **score**: corrects the noise prediction, "
                "any sampler.")  # fmt: skip
    with gr.Row():
        common = common_controls("classifier-guided", config)

    def build(label: Any, method: Any, classifier_scale: Any, *values: Any) -> Request:
        steps, sampler, seed, count = common_values(*values)
        if method not in ("by the sampler", "mean_shift", "score"):
            raise gr.Error(f"Method must be mean_shift, score or 'by the sampler', got {method!r:.40}")
        parsed = label_value(label)
        if parsed is None:
            raise gr.Error("Classifier guidance needs a label: the classifier steers towards it")
        kwargs = {"label": parsed, "classifier_scale": scale("Classifier scale", classifier_scale, 100)}
        kwargs |= {"num_inference_steps": steps}
        kwargs |= {} if method == "by the sampler" else {"guidance_method": method}
        return Request(kwargs, count, seed, sampler, rows_of(parsed, count))

    sampling_panel(models, stops, "classifier-guided", [label, method, s, *common], build)


def text_view(models: Models, stops: Stops) -> None:
    config = models.config("latent")
    with gr.Row():
        prompt = gr.Textbox("a thick seven", label="Prompt", max_lines=1)
        negative = gr.Textbox("", label="Negative prompt (optional)", max_lines=1)
        w = gr.Slider(0, 10, value=config.get("default_guidance_scale") or 3, step=0.25, label="Guidance scale w")
    with gr.Row():
        common = common_controls("latent", config)

    def build(prompt: Any, negative_prompt: Any, guidance_scale: Any, *values: Any) -> Request:
        steps, sampler, seed, count = common_values(*values)
        prompt, negative = str(prompt or "").strip(), str(negative_prompt or "").strip() or None
        if not prompt:
            raise gr.Error('The prompt is empty: describe a digit, e.g. "a thick seven"')
        kwargs = {"prompt": prompt, "negative_prompt": negative}
        kwargs |= {"guidance_scale": scale("Guidance scale", guidance_scale, 50)}
        return Request(kwargs | {"num_inference_steps": steps}, count, seed, sampler)

    sampling_panel(models, stops, "latent", [prompt, negative, w, *common], build)


def fast_view(models: Models, stops: Stops) -> None:
    config = models.config("fast")
    lo, hi = config.get("guidance_scale_range") or (1.0, 3.0)
    gr.Markdown(f"A distilled student of the class-conditional model: {config.get('default_num_inference_steps')}"
                " step(s), one network evaluation each; the guidance scale is an input of its network.")  # fmt: skip
    with gr.Row():
        label = label_box(config)
        w = gr.Slider(lo, hi, value=config.get("default_guidance_scale") or lo, step=0.05, label="Guidance scale w")
    with gr.Row():
        common = common_controls("fast", config, schedulers=False)

    def build(label: Any, guidance_scale: Any, *values: Any) -> Request:
        steps, _, seed, count = common_values(*values)
        parsed = label_value(label)
        kwargs = {"label": parsed, "guidance_scale": scale("Guidance scale", guidance_scale, 50)}
        kwargs |= {"num_inference_steps": steps}
        return Request(kwargs, count, seed, cols=rows_of(parsed, count))

    sampling_panel(models, stops, "fast", [label, w, *common], build)


def super_resolution_view(models: Models, stops: Stops) -> None:
    config = models.config("super-resolution")
    with gr.Row():
        image = gr.Image(default_low_resolution(), type="pil", image_mode="L", label="Low-resolution input (7x7)")
        label = label_box(config, "auto", extra=("auto", UNCONDITIONAL))
        level = gr.Number(config.get("default_noise_level") or 0, label="Noise level of the input", precision=0)
        w = gr.Slider(0, 10, value=config.get("default_guidance_scale") or 2, step=0.25, label="Guidance scale w")
    with gr.Row():
        common = common_controls("super-resolution", config)

    def build(image: Any, label: Any, noise_level: Any, guidance_scale: Any, *values: Any) -> Request:
        steps, sampler, seed, count = common_values(*values)
        if image is None:
            raise gr.Error("Upload a low-resolution image (7x7 or 14x14 pixels)")
        level = whole("Noise level", noise_level, 0, int(config.get("max_noise_level") or 999))
        kwargs = {"image": image.convert("L"), "label": label_value(label, allow_auto=True), "noise_level": level}
        kwargs |= {"guidance_scale": scale("Guidance scale", guidance_scale, 50)}
        return Request(kwargs | {"num_inference_steps": steps}, count, seed, sampler)

    sampling_panel(models, stops, "super-resolution", [image, label, level, w, *common], build)


def layout_view(models: Models, stops: Stops) -> None:
    config = models.config("layout")
    classes, cell = len(config.get("id2label") or {}) or 10, int(config.get("layout_cell") or 4)
    gr.Markdown(f"Each character is a {cell}x{cell}-pixel cell: a digit draws that class there, `.` is background.")
    with gr.Row():
        layout = gr.Textbox(default_layout_text(cell, classes), lines=8, label="Layout map", elem_classes="mono")
        w = gr.Slider(0, 10, value=config.get("default_guidance_scale") or 4, step=0.25, label="Guidance scale w")
    with gr.Row():
        common = common_controls("layout", config)

    def build(layout: Any, guidance_scale: Any, *values: Any) -> Request:
        steps, sampler, seed, count = common_values(*values)
        try:
            layout_map = parse_layout(str(layout or ""), classes)
        except ValueError as error:
            raise gr.Error(str(error)) from None
        kwargs = {"image": layout_map, "guidance_scale": scale("Guidance scale", guidance_scale, 50)}
        kwargs |= {"num_inference_steps": steps}
        return Request(kwargs, count, seed, sampler)

    sampling_panel(models, stops, "layout", [layout, w, *common], build)
