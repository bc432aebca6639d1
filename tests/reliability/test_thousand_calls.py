"""The reliability target of issue 25: for each of the three pipelines, 1,000 calls drawn by hypothesis, valid and
invalid arguments mixed. Every call with an invalid argument raises ValueError or TypeError naming one of its invalid
arguments before any network (UNet, text encoder, classifier) runs; every valid call returns finite images of the
right count and type."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from condiff.pipelines import OUTPUT_TYPES
from conftest import tiny_pipeline
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_classifier_guided_pipeline import make_pipe
from test_hostile_inputs import bad_labels, bad_positive_int, not_a_number, weird_floats
from test_latent_cfg_pipeline import tiny_latent_pipeline

CALLS = settings(max_examples=1000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
SHAPE_FREE_BAD_LATENTS = st.one_of(  # invalid whatever the batch size
    st.builds(lambda d: torch.zeros(1, 1, 8, 8, dtype=d), st.sampled_from([torch.int64, torch.uint8, torch.bool])),
    st.builds(lambda v: torch.full((1, 1, 8, 8), v), weird_floats),
    st.just(torch.full((1, 1, 8, 8), 1e30)),
    st.just(np.zeros((1, 1, 8, 8), np.float32)),
    st.text(max_size=3),
)


def keep(pipe, i, t, kwargs):
    return kwargs


COMMON_VALID = {
    "num_inference_steps": st.integers(1, 4),  # (None, the model's default of 20-50 steps, is tested elsewhere)
    "guidance_scale": st.one_of(st.none(), st.floats(0, 20)),
    "guidance_interval": st.one_of(st.none(), st.tuples(st.floats(0, 1), st.floats(0, 1)).map(sorted).map(tuple)),
    "output_type": st.sampled_from(OUTPUT_TYPES),
    "generator": st.one_of(st.none(), st.builds(lambda s: torch.Generator().manual_seed(s), st.integers(0, 9))),
    "callback_on_step_end": st.sampled_from([None, keep]),
}
COMMON_INVALID = {
    "num_inference_steps": bad_positive_int(50, none_is_default=True),
    "guidance_scale": st.one_of(
        st.floats(max_value=-1e-9), st.floats(1e4 + 1, 1e300), weird_floats, not_a_number, st.booleans()
    ),  # fmt: skip
    "guidance_interval": st.one_of(
        st.tuples(st.floats(0, 1), st.floats(0, 1)).filter(lambda p: p[0] > p[1]),
        st.lists(st.floats(0, 1), max_size=5).filter(lambda v: len(v) != 2),
        st.text(max_size=4),
    ),
    "output_type": st.one_of(st.text(max_size=10).filter(lambda s: s not in OUTPUT_TYPES), st.none(), st.integers()),
    "generator": st.one_of(st.integers(), st.text(max_size=5), st.just((torch.Generator(), torch.Generator()))),
    "callback_on_step_end": st.one_of(st.integers(), st.text(min_size=1, max_size=3), st.just(lambda: None)),
}


def draw_call(data, valid: dict, invalid: dict) -> tuple[dict, set]:
    """Each argument omitted, valid or (rarely) invalid; returns (kwargs, names of the invalid ones)."""
    kwargs, bad = {}, set()
    for name in sorted(valid):
        weights = ["valid"] * 12 + (["omit"] * 2 if name != "num_inference_steps" else [])
        weights += ["invalid"] if name in invalid else []  # about half the calls have no invalid argument
        choice = data.draw(st.sampled_from(weights), label=f"{name}?")
        if choice == "valid":
            kwargs[name] = data.draw(valid[name], label=name)
        elif choice == "invalid":
            kwargs[name] = data.draw(invalid[name], label=name)
            bad.add(name)
    return kwargs, bad


class Networks:
    """Counts forward passes of the given modules (a failing check must come before the first)."""

    def __init__(self, *modules):
        self.ran = 0
        for module in modules:
            module.register_forward_pre_hook(self.count)

    def count(self, module, args):
        self.ran += 1


def check_call(pipe, networks, kwargs, bad, expected_images):
    event("invalid call" if bad else "valid call")  # counted by --hypothesis-show-statistics
    networks.ran = 0
    if bad:
        with pytest.raises((ValueError, TypeError)) as error:
            pipe(**kwargs)
        message = str(error.value)
        assert any(name in message for name in bad), (bad, message)
        assert networks.ran == 0, f"a network ran before {bad} was refused: {message}"
        return
    images = pipe(**kwargs).images
    output_type = kwargs.get("output_type", "pil")
    assert len(images) == expected_images
    if output_type != "pil":
        assert np.isfinite(np.asarray(images.float() if isinstance(images, torch.Tensor) else images)).all()


CLASS_PIPE = tiny_pipeline()
CLASS_NETWORKS = Networks(CLASS_PIPE.unet)


@CALLS
@given(data=st.data())
def test_class_conditional_pipeline_1000_calls(data):
    valid = {**COMMON_VALID, "label": st.sampled_from([None, 0, 2, "one", [0, 2], [1, 1, 0]]),
             "num_images_per_label": st.integers(1, 3), "guidance_rescale": st.floats(0, 1)}  # fmt: skip
    invalid = {**COMMON_INVALID, "label": bad_labels(), "num_images_per_label": bad_positive_int(16384),
               "guidance_rescale": st.one_of(st.floats(min_value=1 + 1e-9), weird_floats, not_a_number),
               "latents": SHAPE_FREE_BAD_LATENTS}  # fmt: skip
    valid["latents"] = st.none()
    kwargs, bad = draw_call(data, valid, invalid)
    label = kwargs.get("label")
    count = 0 if bad else (len(label) if isinstance(label, list) else 1) * kwargs.get("num_images_per_label", 1)
    check_call(CLASS_PIPE, CLASS_NETWORKS, kwargs, bad, count)


CG_PIPE = make_pipe()
CG_NETWORKS = Networks(CG_PIPE.unet, CG_PIPE.classifier)


@CALLS
@given(data=st.data())
def test_classifier_guided_pipeline_1000_calls(data):
    valid = {**COMMON_VALID, "label": st.sampled_from([None, 0, "b", [0, 2]]),
             "num_images_per_label": st.integers(1, 3), "classifier_scale": st.one_of(st.none(), st.floats(0, 10)),
             "guidance_method": st.sampled_from([None, "score", "mean_shift"])}  # fmt: skip
    invalid = {**COMMON_INVALID, "label": bad_labels(), "num_images_per_label": bad_positive_int(16384),
               "classifier_scale": st.one_of(st.floats(max_value=-1e-9), st.floats(1e4 + 1, 1e300), weird_floats,
                                             not_a_number),
               "guidance_method": st.one_of(st.text(max_size=8).filter(lambda s: s not in ("score", "mean_shift")),
                                            st.integers())}  # fmt: skip
    kwargs, bad = draw_call(data, valid, invalid)
    label = kwargs.get("label")
    count = 0 if bad else (len(label) if isinstance(label, list) else 1) * kwargs.get("num_images_per_label", 1)
    check_call(CG_PIPE, CG_NETWORKS, kwargs, bad, count)


@pytest.fixture(scope="module")
def text_pipe(encoder_folder):
    pipe = tiny_latent_pipeline(encoder_folder)
    return pipe, Networks(pipe.unet, pipe.text_encoder, pipe.vae)


@CALLS
@given(data=st.data())
def test_text_pipeline_1000_calls(text_pipe, data):
    pipe, networks = text_pipe
    valid = {**COMMON_VALID, "prompt": st.sampled_from(["a", "a thin seven", ["x", "y"]]),
             "negative_prompt": st.sampled_from([None, "b", ""]), "num_images_per_prompt": st.integers(1, 2),
             "height": st.sampled_from([None, 8, 16]), "width": st.sampled_from([None, 8, 4])}  # fmt: skip
    bad_prompts = st.one_of(st.just([]), st.integers(), st.just(["a", 3]), st.just("\udcff 7"))
    invalid = {**COMMON_INVALID, "prompt": bad_prompts,
               "negative_prompt": st.one_of(st.just([]), st.integers(), st.just(["\udcff"])),
               "num_images_per_prompt": bad_positive_int(16384),
               "height": st.one_of(st.just(0), st.just(False), st.just(13), st.just(-8), st.just(8.0)),
               "width": st.one_of(st.just(0), st.just(True), st.just(7), st.just(10**6))}  # fmt: skip
    kwargs, bad = draw_call(data, valid, invalid)
    if "prompt" not in kwargs:  # a text call needs a prompt (or embeddings): always give one
        kwargs["prompt"] = "a"
    prompt = kwargs["prompt"]
    count = 0 if bad else (len(prompt) if isinstance(prompt, list) else 1) * kwargs.get("num_images_per_prompt", 1)
    check_call(pipe, networks, kwargs, bad, count)
