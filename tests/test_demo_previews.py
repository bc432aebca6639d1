"""The pictures of sampling without a browser: the pipelines' "denoised" callback tensor, the step recorder and the
strip, the live run and its stop, the spatial inputs, the demo's model folders, and `condiff generate
--steps-strip` / `condiff demo` without gradio."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from condiff import shipped_model_path
from condiff.cli import main
from condiff.demo.live import LiveRun, Outcome, Preview
from condiff.demo.models import Models, view_for_folder
from condiff.demo.previews import StepRecorder, steps_strip, strip_columns
from condiff.demo.spatial_inputs import default_layout_text, parse_layout
from condiff.loading import load_pipeline


@pytest.fixture(scope="module")
def shipped():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    yield pipe
    torch.set_num_threads(threads)  # later modules compare against subprocesses at the default count


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_strip_columns():
    assert strip_columns(5) == [0, 1, 2, 3, 4]
    assert strip_columns(5, 12) == [0, 1, 2, 3, 4]
    assert strip_columns(100, 4) == [0, 33, 66, 99]
    assert strip_columns(100, 1) == [99] and strip_columns(0) == []


@pytest.mark.parametrize("sampler", ["dpm++2m", "ddim", "euler", "ddpm"])
def test_one_tile_per_step_and_the_last_is_the_final_image(shipped, sampler):
    from condiff.models import scheduler_for

    own = shipped.scheduler
    shipped.scheduler = scheduler_for(sampler, own.config)
    try:
        recorder = StepRecorder()
        out = shipped(label=[3, 7], num_inference_steps=5, generator=torch.Generator().manual_seed(0),
                      guidance_scale=1.0, **recorder.call_kwargs())  # fmt: skip
    finally:
        shipped.scheduler = own
    assert len(recorder.frames) == 5 and all(len(f) == 2 for f in recorder.frames)
    for tile, final in zip(recorder.frames[-1], out.images):
        assert np.abs(pixels(tile) - pixels(final)).max() <= 1  # same x0, quantized alike
    strip = steps_strip(recorder.frames, upscale=2)
    assert strip.size == (5 * 28 * 2, 2 * 28 * 2)
    last = strip.crop((4 * 56, 56, 5 * 56, 112)).resize((28, 28), Image.NEAREST)
    assert np.abs(pixels(last) - pixels(out.images[1])).max() <= 1
    first = np.abs(pixels(recorder.frames[0][0]) - pixels(out.images[0])).mean()
    assert first > 5  # the first step's estimate is still far from the result: the strip shows progress


def test_denoised_is_the_schedulers_own_x0_estimate(shipped):
    """DDIM's step returns its x0 estimate (pred_original_sample): the callback's "denoised" is that tensor."""
    from condiff.models import scheduler_for

    own = shipped.scheduler
    ddim = scheduler_for("ddim", own.config)
    theirs, ours = [], []
    step = ddim.step
    ddim.step = lambda *a, **k: (out := step(*a, **k), theirs.append(out.pred_original_sample))[0]
    shipped.scheduler = ddim
    try:
        shipped(label=3, num_inference_steps=4, generator=torch.Generator().manual_seed(1),
                callback_on_step_end=lambda p, i, t, kw: ours.append(kw["denoised"]) or {},
                callback_on_step_end_tensor_inputs=["denoised"])  # fmt: skip
    finally:
        shipped.scheduler = own
    assert len(ours) == len(theirs) == 4
    clip = float(ddim.config.clip_sample_range) if ddim.config.clip_sample else float("inf")
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.clamp(-clip, clip), b, atol=1e-5, rtol=1e-4)


def test_stop_interrupts_after_the_current_step(shipped):
    def call(recorder):
        return shipped(label=3, num_inference_steps=20, output_type="pt", **recorder.call_kwargs())

    run = LiveRun(call)
    events = []
    for event in run.events():
        events.append(event)
        if isinstance(event, Preview) and event.step >= 3:
            run.stop()
    outcome = events[-1]
    assert isinstance(outcome, Outcome) and outcome.stopped and outcome.num_steps == 20
    assert 3 <= outcome.steps_done < 20 and len(outcome.frames) == outcome.steps_done
    steps = [e.step for e in events[:-1]]
    assert steps == sorted(steps) and steps[0] >= 1


def test_live_run_hands_on_the_calls_error():
    def call(recorder):
        raise ValueError("label must be in 0..9, got 11")

    with pytest.raises(ValueError, match="got 11"):
        list(LiveRun(call).events())


def test_latent_previews_are_decoded_through_the_vae():
    pytest.importorskip("transformers")
    pipe = load_pipeline(pipeline="latent")
    pipe.set_progress_bar_config(disable=True)
    recorder = StepRecorder()
    out = pipe("a thick seven", num_inference_steps=4, generator=torch.Generator().manual_seed(0),
               **recorder.call_kwargs())  # fmt: skip
    assert len(recorder.frames) == 4 and recorder.frames[-1][0].size == out.images[0].size == (28, 28)
    assert np.abs(pixels(recorder.frames[-1][0]) - pixels(out.images[0])).max() <= 1


def test_layout_text():
    text = default_layout_text()
    layout = parse_layout(text)
    assert layout.shape == (7, 14) and set(np.unique(layout)) == {3, 7, 10}  # a 3 and a 7 side by side
    assert (parse_layout(".3\n7.") == np.array([[10, 3], [7, 10]])).all()
    for bad, why in [("", "empty"), ("33\n3", "same length"), ("3x", "not 'x'"), ("." * 65, "at most 64")]:
        with pytest.raises(ValueError, match=why):
            parse_layout(bad)


def test_model_folders_go_to_their_views(tmp_path):
    assert view_for_folder(str(shipped_model_path())) == "class-conditional"
    assert view_for_folder(str(shipped_model_path("distilled"))) == "fast"
    assert view_for_folder(str(shipped_model_path("classifier-guided"))) == "classifier-guided"
    assert view_for_folder(str(shipped_model_path("layout"))) == "layout"
    with pytest.raises(ValueError, match="no model_index.json"):
        view_for_folder(str(tmp_path))
    models = Models({"class-conditional": str(shipped_model_path("distilled"))})
    assert models.folder("class-conditional") == str(shipped_model_path("distilled"))
    assert models.folder("fast") == str(shipped_model_path("one-step"))  # the fast view's default: 1 NFE
    assert view_for_folder(str(shipped_model_path("one-step"))) == "fast"


def test_generate_steps_strip(tmp_path, capsys):
    out, strip = tmp_path / "grid.png", tmp_path / "strip.png"
    argv = ["generate", "--label", "3", "--num-images", "2", "--steps", "5", "--upscale", "1", "--quiet"]
    assert main([*argv, "--out", str(out), "--steps-strip", str(strip)]) == 0
    grid, strip_image = Image.open(out).convert("L"), Image.open(strip).convert("L")
    assert strip_image.size == (5 * 28, 2 * 28)  # one column per step, one row per image
    for row in range(2):
        tile = strip_image.crop((4 * 28, row * 28, 5 * 28, (row + 1) * 28))
        final = grid.crop((row * 28, 0, (row + 1) * 28, 28))  # the 2 images side by side
        assert np.abs(pixels(tile) - pixels(final)).max() <= 1
    assert "denoising strip: 5 steps x 2 images" in capsys.readouterr().out
    assert main([*argv, "--out", str(out), "--steps-strip", str(out), "--overwrite"]) == 2  # the same file


def test_demo_without_gradio_names_the_extra(monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else find_spec(name, *a))
    assert main(["demo"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install "condiff[demo]"' in err
