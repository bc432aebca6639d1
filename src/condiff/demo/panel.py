"""The part every sampling view shares: the checks of typed values (a message in the page, never a traceback), the
steps / scheduler / seed / images controls, and Generate and Stop wired to a live run whose previews stream to the
page."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from condiff.demo.live import LiveRun, Outcome, Preview, Stops, user_message
from condiff.demo.models import MODEL_SCHEDULER, NUM_IMAGES_ARG, VIEWS, Loaded, Models
from condiff.demo.previews import image_grid, square_grid, steps_strip

MAX_IMAGES = 16  # per click: the page is a demo, not a benchmark
MAX_STEPS = 1000
ZOOM = 4  # nearest-neighbour zoom of the 28-pixel images in the page
STRIP_TILES, STRIP_ROWS = 12, 4
COMMON_NAMES = ("steps", "scheduler", "seed", "num_images")  # `common_controls`, in order


def whole(name: str, value: Any, lo: int, hi: int) -> int:
    """A typed whole number in [lo, hi], or a gr.Error naming the field."""
    if value is None or value == "":
        raise gr.Error(f"{name} is empty: give a whole number from {lo} to {hi}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a whole number from {lo} to {hi}, got {value!r:.40}") from None
    if not math.isfinite(number) or number != int(number) or not lo <= number <= hi:
        raise gr.Error(f"{name} must be a whole number from {lo} to {hi}, got {value!r:.40}")
    return int(number)


def scale(name: str, value: Any, hi: float) -> float:
    """A typed scale in [0, hi], or a gr.Error naming the field."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a number from 0 to {hi}, got {value!r:.40}") from None
    if not math.isfinite(number) or not 0 <= number <= hi:
        raise gr.Error(f"{name} must be a number from 0 to {hi}, got {value!r:.40}")
    return number


@dataclass
class Request:
    """What one click asks for: the pipeline's arguments (less the count and seed), checked."""

    kwargs: dict[str, Any]
    num_images: int
    seed: int
    scheduler: str = MODEL_SCHEDULER
    cols: int | None = None  # grid columns (default: as square as possible)
    notes: dict = field(default_factory=dict)


def common_controls(view: str, config: dict[str, Any], schedulers: bool = True) -> list[gr.components.Component]:
    """Steps (the model's default), scheduler, seed and number of images, in that order (elem_id `<view>-<name>`)."""
    from condiff.options import SAMPLERS

    steps = gr.Number(config.get("default_num_inference_steps") or 20, label="Steps", precision=0)
    choices = [MODEL_SCHEDULER, *sorted(SAMPLERS)]
    sampler = gr.Dropdown(choices, value=MODEL_SCHEDULER, label="Scheduler", visible=schedulers)
    seed = gr.Number(0, label="Seed", precision=0)
    count = gr.Number(4, label=f"Images (1-{MAX_IMAGES})", precision=0)
    for name, component in zip(COMMON_NAMES, (steps, sampler, seed, count)):
        component.elem_id = f"{view}-{name}"
    return [steps, sampler, seed, count]


def common_values(steps: Any, sampler: Any, seed: Any, count: Any) -> tuple[int, str, int, int]:
    """(steps, scheduler, seed, number of images) of `common_controls`, checked."""
    from condiff.options import SAMPLERS

    if sampler not in (MODEL_SCHEDULER, *SAMPLERS):
        raise gr.Error(f"Scheduler must be one of {[MODEL_SCHEDULER, *sorted(SAMPLERS)]}, got {sampler!r:.40}")
    steps = whole("Steps", steps, 1, MAX_STEPS)
    return steps, sampler, whole("Seed", seed, 0, 2**63 - 1), whole("Images", count, 1, MAX_IMAGES)


def run_call(loaded: Loaded, request: Request) -> Callable[[Any], Any]:
    """The pipeline call of `request` on `loaded`, with a step recorder: what `LiveRun` runs."""

    def call(recorder: Any) -> Any:
        import torch

        count = NUM_IMAGES_ARG.get(VIEWS[loaded.view][0], "num_images_per_prompt")
        kwargs = {**request.kwargs, count: request.num_images, **recorder.call_kwargs()}
        with loaded.lock:  # one run per model at a time: the scheduler is the run's
            loaded.use_scheduler(request.scheduler)
            generator = torch.Generator().manual_seed(request.seed)
            return loaded.pipe(generator=generator, output_type="pt", **kwargs)

    return call


def describe(outcome: Outcome) -> str:
    """The status line of a finished or stopped run."""
    if outcome.stopped:
        return f"**Stopped** after {outcome.steps_done} of {outcome.num_steps} steps."
    return (
        f"**Done**: {len(outcome.images)} images in {outcome.seconds:.2f} s ({outcome.images_per_second:.1f} "
        f"images/s), {outcome.num_steps} steps, {outcome.nfe_per_image:g} network evaluations per image."
    )


def stream(models: Models, view: str, request: Request, session: str | None, stops: Stops) -> Iterator[tuple]:
    """(preview, result, strip, status) while `request` samples on `view`'s model: the preview after each step,
    the result grid and the strip at the end (the result stays empty when Stop cut the run short)."""
    yield None, None, None, "Sampling..." if models.is_loaded(view) else "Loading the model..."
    try:
        run = LiveRun(run_call(models.get(view), request), MAX_IMAGES)
        with stops.registered(session, run):
            for event in run.events():
                if isinstance(event, Preview):
                    status = f"Step {event.step} of {event.num_steps}"
                    yield square_grid(event.images, ZOOM), gr.skip(), gr.skip(), status
                else:
                    yield result_outputs(event, request)
    except gr.Error:
        raise
    except Exception as error:  # the page shows a message, never a traceback
        raise gr.Error(user_message(error)) from None


def result_outputs(outcome: Outcome, request: Request) -> tuple:
    """The final (preview, result grid, strip, status); no result grid for a stopped run."""
    strip = steps_strip(outcome.frames, STRIP_TILES, 2, STRIP_ROWS) if outcome.frames else None
    last = square_grid(outcome.frames[-1], ZOOM) if outcome.frames else gr.skip()
    if outcome.stopped:
        return last, None, strip, describe(outcome)
    cols = request.cols or math.ceil(math.sqrt(len(outcome.images)))
    return last, image_grid(outcome.images, cols, ZOOM), strip, describe(outcome)


def output_image(label: str, elem_id: str | None = None) -> gr.Image:
    """An image output with download and full-screen buttons (no "share", which uploads to the Hub)."""
    return gr.Image(label=label, type="pil", format="png", elem_id=elem_id, buttons=["download", "fullscreen"])


def api_signature(build: Callable[..., Request]) -> inspect.Signature:
    """`generate(request, <build's own parameters>, steps, scheduler, seed, num_images)`: the parameter names that
    the page's API (gradio_client, the "Use via API" page) shows."""
    own = [p for p in inspect.signature(build).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    names = [p.name for p in own] + list(COMMON_NAMES)
    request = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request)
    return inspect.Signature([request, *(inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names)])


def sampling_panel(
    models: Models, stops: Stops, view: str, inputs: list, build: Callable[..., Request], run_label: str = "Generate"
) -> None:
    """Generate and Stop buttons and the preview / result / strip / status outputs of `view`, in the current
    Blocks context; `build(*values of inputs)` checks the typed values and returns the `Request`."""
    with gr.Row():
        run = gr.Button(run_label, variant="primary", elem_id=f"{view}-run")
        stop = gr.Button("Stop", variant="stop", elem_id=f"{view}-stop")
    status = gr.Markdown("", label="Status", elem_id=f"{view}-status")
    with gr.Row():
        preview = output_image("Denoised estimate (live)", f"{view}-preview")
        result = output_image("Result", f"{view}-result")
    strip = output_image("Denoising steps (predicted x0)", f"{view}-strip")

    def generate(request: gr.Request, *values: Any) -> Iterator[tuple]:  # gradio fills `request` by its type
        checked = build(*values)  # gr.Error before any model work
        yield from stream(models, view, checked, getattr(request, "session_hash", None), stops)

    generate.__signature__ = api_signature(build)

    def stop_runs(request: gr.Request) -> str:
        stopped = stops.stop(getattr(request, "session_hash", None))
        return "Stopping..." if stopped else gr.skip()

    api = view.replace("-", "_")
    outputs = [preview, result, strip, status]
    queue = {"concurrency_id": "sampling", "concurrency_limit": 1}  # one run at a time across tabs; others wait
    run.click(generate, inputs, outputs, api_name=api, show_progress="hidden", **queue)
    stop.click(stop_runs, None, status, api_name=f"{api}_stop", concurrency_limit=None, show_progress="hidden")
