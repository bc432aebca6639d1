"""The compare view: two settings on the same starting noise side by side, with the images per second and network
evaluations per image of each (CFG vs classifier guidance, teacher vs student, guidance on or off, a negative
prompt or none)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from condiff.demo.live import user_message
from condiff.demo.models import NUM_IMAGES_ARG, VIEWS, Models
from condiff.demo.panel import ZOOM, output_image, whole
from condiff.demo.previews import square_grid, to_pil_images
from condiff.demo.views import label_value


@dataclass
class Setting:
    """One side of a comparison: a view's model and the arguments it is called with."""

    name: str
    view: str
    kwargs: dict[str, Any]


# pair name -> (A, B); "{negative}" is the negative prompt field's value
PAIRS: dict[str, tuple[Setting, Setting]] = {
    "CFG vs classifier guidance": (
        Setting("class-conditional model, its default guidance", "class-conditional", {}),
        Setting("unconditional model + noise-aware classifier", "classifier-guided", {}),
    ),
    "teacher vs student": (
        Setting("teacher: class-conditional model, its defaults", "class-conditional", {}),
        Setting("student: the distilled fast model", "fast", {}),
    ),
    "no guidance vs guidance": (
        Setting("w = 1: the conditional model alone", "class-conditional", {"guidance_scale": 1.0, "guidance": "cfg"}),
        Setting("the model's default guidance", "class-conditional", {}),
    ),
    "text: without vs with the negative prompt": (
        Setting("prompt only", "latent", {}),
        Setting("prompt + negative prompt", "latent", {"negative_prompt": "{negative}"}),
    ),
}


@dataclass
class Measured:
    images: list
    seconds: float
    nfe_per_image: float
    steps: int


def shared_noise(models: Models, settings: tuple[Setting, ...], num_images: int, seed: int) -> Any:
    """One draw of starting noise (N, C, H, W) for every setting; a ValueError when their models' shapes differ."""
    import torch

    shapes = set()
    for setting in settings:
        unet = models.get(setting.view).pipe.unet.config
        size = unet.sample_size if isinstance(unet.sample_size, (tuple, list)) else (unet.sample_size,) * 2
        shapes.add((num_images, unet.in_channels, *size))
    if len(shapes) > 1:
        raise ValueError(f"the two models start from noise of different shapes {sorted(shapes)}")
    return torch.randn(shapes.pop(), generator=torch.Generator().manual_seed(seed))


def measure(models: Models, setting: Setting, noise: Any, inputs: dict[str, Any], seed: int = 0) -> Measured:
    """Run `setting` from `noise` (its wall time, network evaluations and steps); `inputs`: label or prompt; `seed`:
    of the sampler's own noise (ancestral steps)."""
    import torch

    loaded = models.get(setting.view)
    kind = VIEWS[setting.view][0]
    given = {"label": inputs["label"]} if kind != "latent" else {"prompt": inputs["prompt"]}
    kwargs = given | {k: inputs["negative"] if v == "{negative}" else v for k, v in setting.kwargs.items()}
    count = NUM_IMAGES_ARG.get(kind, "num_images_per_prompt")
    with loaded.lock:
        loaded.use_scheduler(None)
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(seed)
        out = loaded.pipe(latents=noise, generator=generator, output_type="pt", **{count: noise.shape[0]}, **kwargs)
        seconds = time.perf_counter() - start
        steps = loaded.pipe.num_timesteps
    return Measured(to_pil_images(out.images * 2 - 1), seconds, out.nfe_per_image, steps)


def table(pair: tuple[Setting, Setting], results: list[Measured]) -> str:
    lines = ["| | setting | steps | images/s | network evaluations / image |", "|---|---|---:|---:|---:|"]
    for side, setting, m in zip("AB", pair, results):
        lines.append(f"| {side} | {setting.name} | {m.steps} | {len(m.images) / m.seconds:.1f} | {m.nfe_per_image:g} |")
    return "\n".join(lines)


def compare_inputs(pair_name: Any, label: Any, prompt: Any, negative: Any, seed: Any, count: Any) -> tuple:
    """(pair, inputs, seed, count) checked, or a gr.Error."""
    if pair_name not in PAIRS:
        raise gr.Error(f"Comparison must be one of {list(PAIRS)}, got {pair_name!r:.60}")
    pair = PAIRS[pair_name]
    seed, count = whole("Seed", seed, 0, 2**63 - 1), whole("Images", count, 1, 16)
    parsed = label_value(label)
    if isinstance(parsed, list):
        raise gr.Error("The compare view takes one label")
    prompt, negative = str(prompt or "").strip(), str(negative or "").strip()
    if pair[0].view == "latent" and not prompt:
        raise gr.Error("The prompt is empty")
    if "{negative}" in pair[1].kwargs.values() and not negative:
        raise gr.Error("Give a negative prompt to compare against")
    return pair, {"label": parsed, "prompt": prompt, "negative": negative}, seed, count


def run_compare(models: Models, *values: Any) -> Iterator[tuple]:
    """(image A, image B, table) as each side finishes."""
    pair, inputs, seed, count = compare_inputs(*values)
    for setting in pair:
        reason = models.available(setting.view)
        if reason:
            raise gr.Error(f"{setting.name} {reason}")
    try:
        noise = shared_noise(models, pair, count, seed)
        results: list[Measured] = []
        yield None, None, "Running A..."
        for setting in pair:
            results.append(measure(models, setting, noise, inputs, seed))
            grids = [square_grid(m.images, ZOOM) for m in results]
            yield *(grids + [gr.skip()] * (2 - len(grids))), table(pair, results) if len(results) == 2 else "B..."
    except gr.Error:
        raise
    except Exception as error:
        raise gr.Error(user_message(error)) from None


def compare_view(models: Models) -> None:
    """The compare tab, in the current Blocks context."""
    with gr.Row():
        pair = gr.Dropdown(list(PAIRS), value=next(iter(PAIRS)), label="Compare")
        label = gr.Dropdown([str(i) for i in range(10)], value="3", allow_custom_value=True, label="Label")
        prompt = gr.Textbox("a handwritten seven", label="Prompt (text)", max_lines=1)
        negative = gr.Textbox("thin", label="Negative prompt (text)", max_lines=1)
    with gr.Row():
        seed = gr.Number(0, label="Seed", precision=0)
        count = gr.Number(4, label="Images (1-16)", precision=0)
        run = gr.Button("Compare", variant="primary", elem_id="compare-run")
    with gr.Row():
        a, b = output_image("A", "compare-a"), output_image("B", "compare-b")
    summary = gr.Markdown("", elem_id="compare-table")

    def compare(*values: Any) -> Iterator[tuple]:
        yield from run_compare(models, *values)

    run.click(compare, [pair, label, prompt, negative, seed, count], [a, b, summary], api_name="compare",
              concurrency_id="sampling", concurrency_limit=1, show_progress="hidden")  # fmt: skip
