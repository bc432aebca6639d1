"""scripts/make_teacher_pairs.py (condiff.teacher_pairs): the pairs file of distribution_matching --regression_pairs."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_pipeline
from diffusers import DDIMScheduler
from safetensors.torch import load_file

from condiff.loading import load_pipeline
from condiff.teacher_pairs import main


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher")
    pipe = tiny_pipeline()
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # deterministic, as the pairs need
    pipe.save_pretrained(path)
    return path


def test_an_ancestral_teacher_is_refused(tmp_path):
    tiny_pipeline().save_pretrained(tmp_path / "ddpm")  # DDPMScheduler
    with pytest.raises(ValueError, match="--teacher samples with DDPMScheduler"):
        main(["--teacher", str(tmp_path / "ddpm"), "--output", str(tmp_path / "p.safetensors")])
    assert not (tmp_path / "p.safetensors").exists()


def test_pairs_are_the_teachers_images_from_their_noise(teacher, tmp_path):
    out = main(["--teacher", str(teacher), "--output", str(tmp_path / "p.safetensors"), "--num_pairs", "6",
                "--batch_size", "4", "--num_inference_steps", "3", "--guidance_scale_range", "1.5", "2.5"])  # fmt: skip
    pairs = load_file(out)
    assert pairs["noise"].shape == pairs["images"].shape and pairs["noise"].shape[0] == 6
    assert pairs["labels"].tolist() == [0, 1, 2, 0, 1, 2]  # cycling through the teacher's 3 classes
    w = pairs["w"]
    assert torch.all((w >= 1.5) & (w <= 2.5)) and len(set(w[:4].tolist())) == 1 and len(set(w[4:].tolist())) == 1
    assert pairs["images"].min() >= -1 and pairs["images"].max() <= 1
    pipe = load_pipeline(str(teacher))  # the teacher's image from the first pair's noise, w and label
    again = pipe(label=[0], latents=pairs["noise"][:1].clone(), guidance_scale=float(w[0]),
                 guidance_interval=(0.0, 1.0), num_inference_steps=3, output_type="pt").images  # fmt: skip
    torch.testing.assert_close(again * 2 - 1, pairs["images"][:1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--output", "{tmp}/p.bin"], "--output must end in .safetensors"),
        (["--output", "{tmp}/existing.safetensors"], "exists"),
        (["--output", "{tmp}/no/such/p.safetensors"], "does not exist"),
        (["--output", "{tmp}/p.safetensors", "--guidance_scale_range", "2", "1"], "LO <= HI"),
    ],
)
def test_bad_flags_are_refused_before_sampling(teacher, tmp_path, extra, message):
    existing = tmp_path / "existing.safetensors"
    existing.write_bytes(b"keep me")
    with pytest.raises(ValueError, match=message):
        main(["--teacher", str(teacher), *[e.format(tmp=tmp_path) for e in extra]])
    assert existing.read_bytes() == b"keep me"
