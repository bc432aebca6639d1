"""The shipped text-to-image model: its "seven" prompts give 7s, it loads without condiff, and its folder names the
text encoder and carries the measured VAE scaling factor."""

import json

import torch
from condiff.pipelines.text_encoding import DEFAULT_TEXT_ENCODER
from conftest import sample_without_condiff

from condiff import LatentCFGPipeline, shipped_model_path
from condiff.captions import evaluation_prompts
from condiff.evaluation.metrics import default_classifier
from condiff.evaluator import classifier_accuracy

FOLDER = shipped_model_path("latent")


def shipped():
    pipe = LatentCFGPipeline.from_pretrained(FOLDER)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_seven_prompts_give_mostly_sevens():
    prompts = evaluation_prompts(7) * 4  # held-out phrasings, 20 images
    images = shipped()(prompts, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert images.shape == (20, 1, 28, 28)
    assert classifier_accuracy(default_classifier(), images * 2 - 1, [7] * 20) >= 0.8


def test_the_folder_names_the_text_encoder_and_stores_the_measured_scale():
    index = json.loads((FOLDER / "model_index.json").read_text())
    assert index["text_encoder_name_or_path"] == DEFAULT_TEXT_ENCODER and index["text_encoder"] == [None, None]
    vae_config = json.loads((FOLDER / "vae" / "config.json").read_text())
    measured = json.loads((FOLDER / "vae" / "reconstruction.json").read_text())
    assert vae_config["scaling_factor"] == measured["scaling_factor"] != 1.0
    assert measured["accuracy_reconstructed"] >= 0.98 and measured["psnr"] > 25


def test_the_shipped_folder_loads_without_condiff(tmp_path):
    call = "{'prompt': ['a handwritten seven', 'number 3, handwritten'], 'num_inference_steps': 5}"
    images, module = sample_without_condiff(FOLDER, tmp_path / "out.pt", call)
    expected = shipped()(
        ["a handwritten seven", "number 3, handwritten"],
        num_inference_steps=5,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images
    torch.testing.assert_close(images, expected)
    assert "condiff" not in module
