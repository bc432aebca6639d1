"""Weights load the way diffusers loads them, for every component of the three pipelines: `safe_serialization=False`
folders load (a `.bin` through torch's weights-only unpickler, safetensors preferred when both exist), a pickle that
would run code is refused with an error naming the file, and `variant=` and the dtype reach every component, the
classifier included."""

from __future__ import annotations

import pathlib
import re
import shutil

import pytest
import torch
from condiff.pipelines import ClassifierGuidedPipeline, LatentCFGPipeline
from condiff.pipelines.weights import UnsafeWeightsError
from conftest import tiny_pipeline
from test_classifier_guided_pipeline import make_pipe
from test_latent_cfg_pipeline import tiny_latent_pipeline

from condiff import ClassConditionalDDPMPipeline

KINDS = {
    "class-conditional": (ClassConditionalDDPMPipeline, ("unet",)),
    "classifier-guided": (ClassifierGuidedPipeline, ("unet", "classifier")),
    "latent": (LatentCFGPipeline, ("unet", "vae")),
}


def build(kind: str, encoder_folder: str):
    if kind == "class-conditional":
        return tiny_pipeline()
    if kind == "classifier-guided":
        return make_pipe()
    return tiny_latent_pipeline(encoder_folder)


def images(pipe, kind: str) -> torch.Tensor:
    call = {"prompt": "a seven"} if kind == "latent" else {"label": [0, 2]}
    if kind == "classifier-guided":
        call["classifier_scale"] = 3.0
    g = torch.Generator().manual_seed(0)
    return pipe(**call, num_inference_steps=3, generator=g, output_type="pt").images


def load(kind: str, folder, **kwargs):
    pipe = KINDS[kind][0].from_pretrained(folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class WritesAFile:
    """Unpickling this calls `pathlib.Path.write_text`: what a hostile weights file could do."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.write_text, (self.marker, "code from a weights file ran")


def hostile_pickle(path: pathlib.Path, marker: pathlib.Path) -> None:
    torch.save({"conv_in.weight": torch.zeros(1), "payload": WritesAFile(marker)}, path)


def test_the_hostile_pickle_would_run_code_if_unpickled_unsafely(tmp_path):
    hostile_pickle(tmp_path / "w.bin", tmp_path / "ran")
    torch.load(tmp_path / "w.bin", weights_only=False)  # what condiff never does
    assert (tmp_path / "ran").read_text() == "code from a weights file ran"


@pytest.mark.parametrize("kind", KINDS)
def test_a_safe_serialization_false_folder_loads_and_gives_the_same_images(kind, encoder_folder, tmp_path):
    pipe = build(kind, encoder_folder)
    pipe.save_pretrained(tmp_path, safe_serialization=False)
    for component in KINDS[kind][1]:
        assert [p.name for p in (tmp_path / component).glob("diffusion_pytorch_model*")] == [
            "diffusion_pytorch_model.bin"
        ]
    loaded = load(kind, tmp_path)
    torch.testing.assert_close(images(loaded, kind), images(pipe, kind), atol=2e-6, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_safetensors_are_preferred_when_both_exist(kind, encoder_folder, tmp_path):
    pipe = build(kind, encoder_folder)
    pipe.save_pretrained(tmp_path / "bin", safe_serialization=False)
    pipe.save_pretrained(tmp_path / "model")
    marker = tmp_path / "ran"
    for component in KINDS[kind][1]:
        hostile_pickle(tmp_path / "model" / component / "diffusion_pytorch_model.bin", marker)
    torch.testing.assert_close(images(load(kind, tmp_path / "model"), kind), images(pipe, kind), atol=2e-6, rtol=0)
    assert not marker.exists()


CASES = [(kind, component) for kind, (_, components) in KINDS.items() for component in components]


@pytest.mark.parametrize(("kind", "component"), CASES)
def test_a_pickle_that_runs_code_is_refused_for_every_component(kind, component, encoder_folder, tmp_path):
    build(kind, encoder_folder).save_pretrained(tmp_path / "model", safe_serialization=False)
    marker, weights = tmp_path / "ran", tmp_path / "model" / component / "diffusion_pytorch_model.bin"
    hostile_pickle(weights, marker)
    with pytest.raises(
        UnsafeWeightsError,
        match=rf"{re.escape(str(weights))}.*weights-only unpickler refused it \(it would call getattr\)",
    ):
        load(kind, tmp_path / "model")
    with pytest.raises(UnsafeWeightsError):
        load(kind, tmp_path / "model", use_safetensors=False)
    assert not marker.exists(), "code from a weights file ran"


def test_a_text_encoder_of_pickled_weights_loads_and_a_hostile_one_is_refused(encoder_folder, tmp_path):
    from transformers import AutoModel

    reference = tiny_latent_pipeline(encoder_folder)
    pickled = tmp_path / "encoder"
    shutil.copytree(encoder_folder, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save(AutoModel.from_pretrained(encoder_folder).state_dict(), pickled / "pytorch_model.bin")
    reference.save_pretrained(tmp_path / "model")
    loaded = load("latent", tmp_path / "model", text_encoder_name_or_path=str(pickled))
    torch.testing.assert_close(images(loaded, "latent"), images(reference, "latent"), atol=2e-6, rtol=0)
    marker = tmp_path / "ran"
    hostile_pickle(pickled / "pytorch_model.bin", marker)
    with pytest.raises(
        UnsafeWeightsError, match=f"text encoder {re.escape(str(pickled))} holds more than plain tensors"
    ):
        load("latent", tmp_path / "model", text_encoder_name_or_path=str(pickled))
    assert not marker.exists(), "code from a weights file ran"


# ------------------------------------------------------------------------------------------------ variant, dtype


@pytest.mark.parametrize("safe", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_variant_save_and_load(kind, safe, encoder_folder, tmp_path):
    pipe = build(kind, encoder_folder)
    pipe.save_pretrained(tmp_path, variant="fp16", safe_serialization=safe)
    suffix = "safetensors" if safe else "bin"
    for component in KINDS[kind][1]:
        assert (tmp_path / component / f"diffusion_pytorch_model.fp16.{suffix}").is_file()
    loaded = load(kind, tmp_path, variant="fp16")
    for component in KINDS[kind][1]:
        saved, back = getattr(pipe, component).state_dict(), getattr(loaded, component).state_dict()
        assert saved.keys() == back.keys() and all(torch.equal(saved[k], back[k]) for k in saved), component


@pytest.mark.parametrize("kind", KINDS)
def test_torch_dtype_reaches_every_component(kind, encoder_folder, tmp_path):
    pipe = build(kind, encoder_folder)
    pipe.save_pretrained(tmp_path)
    loaded = load(kind, tmp_path, torch_dtype=torch.float16)
    assert {c: getattr(loaded, c).dtype for c in KINDS[kind][1]} == dict.fromkeys(KINDS[kind][1], torch.float16)
    half = load(kind, tmp_path, torch_dtype=torch.bfloat16)
    low, full = images(half, kind), images(pipe, kind)
    assert (low.float() - full).abs().mean() < 0.05  # the same images, up to bfloat16 rounding


def test_classifier_dtype_per_component_and_dtype_keyword(tmp_path):
    make_pipe().save_pretrained(tmp_path)
    mixed = load("classifier-guided", tmp_path, torch_dtype={"classifier": torch.bfloat16, "default": torch.float32})
    assert (mixed.classifier.dtype, mixed.unet.dtype) == (torch.bfloat16, torch.float32)
    assert load("classifier-guided", tmp_path, dtype=torch.bfloat16).classifier.dtype == torch.bfloat16


def test_pipe_to_dtype_moves_the_classifier():
    pipe = make_pipe().to(torch.bfloat16)
    assert pipe.classifier.dtype == torch.bfloat16 and pipe.unet.dtype == torch.bfloat16
