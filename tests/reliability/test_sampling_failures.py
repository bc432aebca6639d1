"""Sampling that would go non-finite or break (issue: reliability round 2, items 3-8): schedules known to give NaN are
refused up front, a non-finite sampling state raises an error naming the step, huge scales and latents are refused,
callbacks are checked (signature, what they return, the scales they set), a callback may call its own pipeline, and
bad text-pipeline embeddings and prompts are refused before the text encoder runs."""

import math

import pytest
import torch
from condiff.pipelines.checks import MAX_GUIDANCE_SCALE
from conftest import tiny_pipeline
from diffusers import DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler
from test_latent_cfg_pipeline import WIDTH, tiny_latent_pipeline


def fail(*args, **kwargs):
    raise AssertionError("a network ran before the arguments were checked")


def run(pipe, **kwargs):
    kwargs = {"label": [0, 1], "num_inference_steps": 3, "output_type": "latent", **kwargs}
    return pipe(generator=torch.Generator().manual_seed(0), **kwargs)


def test_a_step_count_that_repeats_a_timestep_is_refused_before_the_unet_runs(monkeypatch):
    pipe = tiny_pipeline()
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace")
    assert torch.isfinite(run(pipe, num_inference_steps=49).images).all()  # 49 of 50 timesteps: all distinct
    monkeypatch.setattr(pipe.unet, "forward", fail)
    with pytest.raises(ValueError, match="num_inference_steps=50 gives DPMSolverMultistepScheduler the timestep"):
        run(pipe, num_inference_steps=50)


def test_euler_ancestral_step_counts_whose_split_is_nan_are_refused(monkeypatch):
    """The shipped model's schedule (cosine, 1,000 steps): 4 steps gave 100% NaN images, 3 and 5 are fine."""
    pipe = tiny_pipeline()
    config = {**pipe.scheduler.config, "num_train_timesteps": 1000, "prediction_type": "v_prediction"}
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(config)
    for steps in (3, 5):
        assert torch.isfinite(run(pipe, num_inference_steps=steps, output_type="pt").images).all()
    monkeypatch.setattr(pipe.unet, "forward", fail)
    with pytest.raises(ValueError, match="EulerAncestralDiscreteScheduler would give NaN images with num_infer"):
        run(pipe, num_inference_steps=4)


def test_a_sampling_state_that_turns_non_finite_raises_naming_the_step(monkeypatch):
    pipe = tiny_pipeline()
    forward, calls = pipe.unet.forward, []

    def nan_at_the_second_step(*args, **kwargs):
        calls.append(1)
        out = forward(*args, **kwargs)
        if len(calls) == 2:
            out.sample[0, 0, 0, 0] = math.nan
        return out

    monkeypatch.setattr(pipe.unet, "forward", nan_at_the_second_step)
    with pytest.raises(FloatingPointError, match=r"NaN or inf values at step 2 of 3 \(timestep"):
        run(pipe, guidance_scale=1.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"guidance_scale": MAX_GUIDANCE_SCALE * 10}, "guidance_scale must be <= 10000"),
        ({"guidance_scale": 1e39}, "guidance_scale must be <= 10000"),
        ({"latents": torch.full((2, 1, 8, 8), 1e20)}, r"latents must be starting noise .* \|values\| <= 10000"),
    ],
)
def test_huge_scales_and_latents_are_refused_before_the_unet_runs(kwargs, match, monkeypatch):
    pipe = tiny_pipeline()
    monkeypatch.setattr(pipe.unet, "forward", fail)
    with pytest.raises(ValueError, match=match):
        run(pipe, **kwargs)


def test_the_largest_allowed_scale_still_gives_finite_images():
    images = run(tiny_pipeline(), guidance_scale=MAX_GUIDANCE_SCALE, output_type="pt").images
    assert torch.isfinite(images).all()


def set_scale(value):
    def callback(pipe, i, t, kwargs):
        pipe._guidance_scale = value
        return kwargs

    return callback


@pytest.mark.parametrize(
    "callback, error, match",
    [
        (lambda: None, TypeError, "callback_on_step_end must be fn\\(pipe, step, timestep, callback_kwargs\\)"),
        (
            lambda p, i, t, k: 5,
            TypeError,
            "callback_on_step_end must return a dict of tensors by name \\(or None\\), got 5",
        ),
        (lambda p, i, t, k: {"latents": "x"}, TypeError, "callback_on_step_end returned latents that are not"),
        (lambda p, i, t, k: {"latents": k["latents"].long()}, TypeError, "torch.int64 tensor"),
        (lambda p, i, t, k: {"latents": k["latents"][:1]}, TypeError, "of shape \\(2, 1, 8, 8\\)"),
        (lambda p, i, t, k: {"latents": k["latents"] * math.nan}, ValueError, "returned latents holding NaN"),
        (set_scale(math.nan), ValueError, "callback_on_step_end set pipe._guidance_scale must be a finite number"),
        (set_scale(1e39), ValueError, "callback_on_step_end set pipe._guidance_scale must be <= 10000"),
        (set_scale("3"), TypeError, "callback_on_step_end set pipe._guidance_scale must be a real number"),
    ],
)
def test_bad_callbacks_are_named_at_the_first_step(callback, error, match):
    pipe = tiny_pipeline()
    rows = []
    forward = pipe.unet.forward
    pipe.unet.forward = lambda *a, **k: rows.append(len(a[0])) or forward(*a, **k)
    with pytest.raises(error, match=match):
        run(pipe, callback_on_step_end=callback)
    assert len(rows) <= 1  # refused at the first step at the latest (a bad signature: before any)


def test_a_callback_may_call_its_own_pipeline_and_the_outer_call_is_unchanged():
    pipe = tiny_pipeline()
    plain = run(pipe, guidance_scale=2.0, num_inference_steps=4)
    nested = {}

    def sample_inside(p, i, t, kwargs):
        if i == 1:
            nested["out"] = run(p, label=2, guidance_scale=5.0, num_inference_steps=2)
            nested["scale"] = p.guidance_scale
        return kwargs

    outer = run(pipe, guidance_scale=2.0, num_inference_steps=4, callback_on_step_end=sample_inside)
    assert torch.equal(outer.images, plain.images) and outer.nfe_per_image == plain.nfe_per_image
    alone = run(pipe, label=2, guidance_scale=5.0, num_inference_steps=2)
    assert torch.equal(nested["out"].images, alone.images) and nested["scale"] == 2.0
    assert pipe.num_timesteps == 2  # the last call's


@pytest.fixture(scope="module")
def text_pipe(encoder_folder):
    return tiny_latent_pipeline(encoder_folder)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"prompt_embeds": torch.randn(1, 5, WIDTH)}, ValueError, "prompt_embeds must have shape \\(N >= 1, 8, 32\\)"),
        ({"prompt_embeds": torch.randn(0, 8, WIDTH)}, ValueError, "prompt_embeds must be a tensor of shape"),
        ({"prompt_embeds": torch.tensor(1.0)}, ValueError, "prompt_embeds must be a tensor of shape"),
        ({"prompt_embeds": torch.ones(1, 8, WIDTH, dtype=torch.long)}, TypeError, "floating-point tensor"),
        ({"prompt_embeds": torch.full((1, 8, WIDTH), math.nan)}, ValueError, "prompt_embeds holds NaN"),
        (
            {"prompt_embeds": torch.randn(1, 8, WIDTH), "negative_prompt_embeds": torch.full((1, 8, WIDTH), math.inf)},
            ValueError,
            "negative_prompt_embeds holds NaN or inf",
        ),
        ({"prompt": "\udcff seven"}, ValueError, "prompt must be valid Unicode text"),
        ({"prompt": "seven", "negative_prompt": ["\udcff"]}, ValueError, "negative_prompt must be valid Unicode"),
        ({"prompt": ["a", "b"], "negative_prompt": ["x", "y", "z"]}, ValueError, "negative_prompt has 3 entries"),
        ({"prompt": "a", "height": 0}, ValueError, "height must be >= 1"),
        ({"prompt": "a", "width": False}, TypeError, "width must be an int"),
        ({"prompt": "a", "guidance_scale": 1e25}, ValueError, "guidance_scale must be <= 10000"),
    ],
)
def test_bad_text_inputs_are_refused_before_the_text_encoder_runs(text_pipe, kwargs, error, match, monkeypatch):
    monkeypatch.setattr(text_pipe.text_encoder, "forward", fail)
    monkeypatch.setattr(text_pipe.unet, "forward", fail)
    with pytest.raises(error, match=match):
        text_pipe(num_inference_steps=2, **kwargs)


def test_a_huge_prompt_is_truncated_with_a_short_warning(text_pipe, caplog):
    with caplog.at_level("WARNING"):
        text_pipe.encode_prompt("seven " * 200_000)
    assert "truncated" in caplog.text and len(caplog.text) < 2_000
