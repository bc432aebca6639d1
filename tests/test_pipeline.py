"""ClassConditionalDDPMPipeline: arguments, outputs, determinism, schedulers, save/load, custom-pipeline loading."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import sample_without_condiff
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from PIL import Image

from condiff import ClassConditionalDDPMPipeline
from condiff.hub import stage_pipeline_code

REPO = Path(__file__).resolve().parents[1]


def run(pipe, **kwargs):
    kwargs.setdefault("num_inference_steps", 3)
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    return pipe(**kwargs).images


@pytest.mark.parametrize(
    "label,expected",
    [
        (2, [2]),
        ([0, 1, 2], [0, 1, 2]),
        ("two", [2]),
        ("Two", [2]),
        (["zero", 2], [0, 2]),
        (torch.tensor(1), [1]),
        (torch.tensor([2, 0]), [2, 0]),
        (np.array([1, 1]), [1, 1]),
        (None, None),
    ],
)
def test_label_forms(pipe, label, expected):
    assert pipe.get_label_ids(label) == expected


@pytest.mark.parametrize(
    "label,error,match",
    [
        (3, ValueError, r"0\.\.2"),
        (-1, ValueError, r"0\.\.2"),
        ("seven", ValueError, "'zero', 'one', 'two'"),
        ([], ValueError, "empty"),
        (1.0, TypeError, "label"),
        (True, TypeError, "bool"),
        (torch.tensor([0.5]), TypeError, "dtype"),
        (torch.zeros(2, 2, dtype=torch.long), ValueError, "1-d"),
    ],
)
def test_bad_labels_raise_before_model_work(pipe, label, error, match, monkeypatch):
    monkeypatch.setattr(pipe.unet, "forward", lambda *a, **k: pytest.fail("model ran"))
    with pytest.raises(error, match=match):
        pipe(label=label)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"guidance_scale": -0.5}, ValueError, "guidance_scale"),
        ({"num_inference_steps": 0}, ValueError, "num_inference_steps"),
        ({"num_inference_steps": 2.5}, TypeError, "num_inference_steps"),
        ({"num_images_per_label": 0}, ValueError, "num_images_per_label"),
        ({"output_type": "jpeg"}, ValueError, "output_type"),
        ({"generator": [torch.Generator()] * 3}, ValueError, "generator"),
        ({"generator": "seed"}, TypeError, "generator"),
        ({"callback_on_step_end_tensor_inputs": ["noise"]}, ValueError, "callback_on_step_end_tensor_inputs"),
        ({"latents": torch.zeros(1, 1, 4, 4)}, ValueError, "latents"),
    ],
)
def test_bad_arguments_raise(pipe, kwargs, error, match, monkeypatch):
    monkeypatch.setattr(pipe.unet, "forward", lambda *a, **k: pytest.fail("model ran"))
    with pytest.raises(error, match=match):
        pipe(label=[0, 1], **kwargs)


def test_output_types_and_shapes(pipe):
    pt = run(pipe, label=[0, 1], num_images_per_label=2, output_type="pt")
    assert pt.shape == (4, 1, 8, 8) and pt.dtype == torch.float32
    assert pt.min() >= 0 and pt.max() <= 1
    arr = run(pipe, label=[0, 1], num_images_per_label=2, output_type="np")
    assert isinstance(arr, np.ndarray) and arr.shape == (4, 8, 8, 1)
    np.testing.assert_allclose(arr, pt.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    pil = run(pipe, label="one", num_images_per_label=3)
    assert len(pil) == 3 and all(isinstance(i, Image.Image) and i.size == (8, 8) and i.mode == "L" for i in pil)
    (tup,) = pipe(label=0, num_inference_steps=2, output_type="pt", return_dict=False)
    assert tup.shape == (1, 1, 8, 8)


def test_labels_are_repeated_per_label_in_order(pipe):
    seen = []
    real_forward = pipe.unet.forward

    def spy(sample, t, class_labels=None, **kw):
        seen.append(class_labels.tolist())
        return real_forward(sample, t, class_labels=class_labels, **kw)

    pipe.unet.forward = spy
    run(pipe, label=[2, 0], num_images_per_label=2, guidance_scale=2.0, num_inference_steps=1)
    assert seen == [[2, 2, 0, 0, 3, 3, 3, 3]]  # conditional rows, then null-class rows


def test_determinism_with_generator(pipe):
    a = run(pipe, label=[0, 1, 2], guidance_scale=2.0, output_type="pt")
    b = run(pipe, label=[0, 1, 2], guidance_scale=2.0, output_type="pt")
    c = run(pipe, label=[0, 1, 2], guidance_scale=2.0, output_type="pt", generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_generator_list_gives_per_image_reproducibility(pipe):
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    pair = run(pipe, label=[1, 1], generator=gens, output_type="pt", guidance_scale=2.0)
    single = run(pipe, label=1, generator=[torch.Generator().manual_seed(6)], output_type="pt", guidance_scale=2.0)
    assert torch.allclose(pair[1:], single, atol=1e-6)


def test_callback_can_read_and_replace_latents(pipe):
    steps = []

    def callback(p, i, t, tensors):
        steps.append(i)
        return {"latents": torch.zeros_like(tensors["latents"])}

    out = run(pipe, label=0, output_type="pt", callback_on_step_end=callback)
    assert steps == [0, 1, 2]
    assert torch.allclose(out, torch.full_like(out, 0.5))  # zero latents map to mid-grey


@pytest.mark.parametrize(
    "scheduler_cls", [DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler]
)
def test_scheduler_swaps(pipe, scheduler_cls):
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    out = run(pipe, label=[0, 2], guidance_scale=2.0, output_type="pt", num_inference_steps=4)
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()
    assert torch.equal(out, run(pipe, label=[0, 2], guidance_scale=2.0, output_type="pt", num_inference_steps=4))


def test_save_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(tmp_path.rglob("*.bin"))
    loaded = ClassConditionalDDPMPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.id2label == {0: "zero", 1: "one", 2: "two"}
    assert loaded.get_label_ids("two") == [2]
    assert torch.equal(run(pipe, label=[0, 2], output_type="pt"), run(loaded, label=[0, 2], output_type="pt"))


@pytest.mark.parametrize("source", ["repo_file", "staged_folder"])
def test_custom_pipeline_loads_without_condiff(pipe, tmp_path, source):
    model = tmp_path / "model"
    pipe.save_pretrained(model)
    if source == "repo_file":
        code = str(REPO / "pipelines" / "class_conditional.py")
    else:
        stage_pipeline_code(model)
        code = str(model)
    call = "dict(label=[0, 'two'], num_inference_steps=3)"
    images, module = sample_without_condiff(model, tmp_path / "images.pt", call, code)
    assert "diffusers_modules" in module
    assert torch.equal(images, run(pipe, label=[0, 2], output_type="pt"))


def test_custom_pipeline_needs_trust_remote_code(pipe, tmp_path):
    from diffusers import DiffusionPipeline

    pipe.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(tmp_path, custom_pipeline=str(REPO / "pipelines" / "class_conditional.py"))


def test_v_prediction_and_sample_models_run():
    from conftest import tiny_pipeline

    for kind in ("v_prediction", "sample"):
        p = tiny_pipeline(kind)
        out = run(p, label=[0, 1], guidance_scale=3.0, output_type="pt")
        assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()
