"""`condiff generate --prompt` on a text-to-image folder, the CLI's refusals, and the prompt adapter that lets the
class-conditional evaluation tools score a text pipeline."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image
from test_latent_cfg_pipeline import tiny_latent_pipeline

from condiff import shipped_model_path
from condiff.captions import attribute_prompts, evaluation_prompts
from condiff.cli import main
from condiff.evaluation.text_prompts import PromptedPipeline


@pytest.fixture
def latent_dir(encoder_folder, tmp_path):
    tiny_latent_pipeline(encoder_folder).save_pretrained(tmp_path / "latent")
    return str(tmp_path / "latent")


def test_generate_with_prompts_writes_one_row_per_prompt(latent_dir, tmp_path, capsys):
    out = tmp_path / "grid.png"
    code = main(["generate", "--model", latent_dir, "--prompt", "a thick seven", "a thin 1", "--negative-prompt",
                 "blurry", "--num-images", "3", "--steps", "2", "--upscale", "1",
                 "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0 and Image.open(out).size == (3 * 8, 2 * 8)
    assert "6 images: 3 per label x 2 label(s)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--prompt", "a seven", "--label", "3"], "--label does not apply to --pipeline latent"),
        (["--pipeline", "latent"], "a text-to-image model (--pipeline latent) needs --prompt"),
        (["--pipeline", "classifier-guided", "--prompt", "a"], "--prompt and --negative-prompt need --pipeline latent"),
        (["--prompt", "a", "--classifier-scale", "2"], "--classifier-scale needs --pipeline classifier-guided"),
    ],
)
def test_generate_refuses_options_of_another_pipeline(argv, message, tmp_path, capsys):
    assert main(["generate", *argv, "--out", str(tmp_path / "x.png")]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "x.png").exists()


def test_evaluate_scores_a_text_model_on_held_out_prompts(tmp_path, capsys):
    """`condiff evaluate --pipeline latent` (once refused): the shipped text model, 1 image per digit, 2 steps; the
    report records the settings actually used, the model's defaults resolved."""
    out = tmp_path / "latent.json"
    argv = ["evaluate", "--pipeline", "latent", "--num-per-class", "1", "--steps", "2", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    assert report["pipeline"] == "latent" and report["num_samples"] == 10 and 0 <= report["accuracy"] <= 1
    assert report["guidance_method"] == "classifier-free" and report["classifier_scale"] is None
    assert report["guidance_scale"] == 3.0  # the shipped text model's default_guidance_scale
    assert report["scheduler"] == "DPMSolverMultistepScheduler" and report["num_inference_steps"] == 2
    assert "held-out phrasings" in report["notes"]["prompts"] and "attributes" not in report


def test_evaluate_measures_attribute_control_on_request(tmp_path, capsys):
    argv = ["evaluate", "--model", str(shipped_model_path("latent")), "--num-per-class", "1", "--steps", "1",
            "--guidance-scale", "3", "--attributes", "1", "--out", str(tmp_path / "a.json")]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    section = json.loads((tmp_path / "a.json").read_text())["attributes"]
    assert section["guidance_scale"] == 3.0
    assert [(c["attribute"], c["images_per_value"], len(c["gap_sd"])) for c in section["control"]] == [
        ("thickness", 10, 10),
        ("slant", 10, 10),
    ]
    assert [n["images"] for n in section["negative"]] == [10, 10]
    assert main(["evaluate", "--attributes", "1"]) == 2  # a class-conditional model has no prompts
    assert "--attributes needs a text-to-image model" in capsys.readouterr().err


def test_prompted_pipeline_cycles_held_out_phrasings_per_digit(encoder_folder):
    pipe = tiny_latent_pipeline(encoder_folder)
    adapter = PromptedPipeline(pipe)
    prompts = adapter.prompts([7, 7, 1, 7, 7, 7, 7])
    sevens = evaluation_prompts(7)
    assert prompts == [sevens[0], sevens[1], evaluation_prompts(1)[0], sevens[2], sevens[3], sevens[4], sevens[0]]
    thick = PromptedPipeline(pipe, lambda d: attribute_prompts(d, "thickness", "thick"))
    assert all("thick" in p for p in thick.prompts(range(10)))
    seen = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["encoder_hidden_states"]), with_kwargs=True
    )
    out = PromptedPipeline(pipe, negative_prompt="thin")(label=[3, 4], num_inference_steps=1, output_type="np")
    hook.remove()
    assert out.images.shape == (2, 8, 8, 1) and np.isfinite(out.images).all()
    assert torch.equal(seen[0][2], pipe.encode_prompt(["thin"])[0][0])
    adapter.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    assert isinstance(pipe.scheduler, DDIMScheduler) and adapter.config is pipe.config


def test_held_out_phrasing_styles_are_not_training_captions():
    from condiff.captions import training_caption_set
    from condiff.evaluation.text_prompts import held_out_styles

    train = {caption.lower().strip() for caption in training_caption_set()}
    styles = held_out_styles()
    assert len(styles) >= 5
    for name, phrasings in styles.items():
        for digit in range(10):
            prompts = phrasings(digit)
            assert prompts and not {p.lower().strip() for p in prompts} & train, (name, digit)
            if name != "eval":
                assert any(str(digit) in p or DIGIT_WORDS[digit] in p for p in prompts)


DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
