"""`condiff generate --prompt` on a text-to-image folder, the CLI's refusals, and the prompt adapter that lets the
class-conditional evaluation tools score a text pipeline."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image
from test_latent_cfg_pipeline import tiny_latent_pipeline

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
        (["--pipeline", "latent"], "--pipeline latent needs --prompt"),
        (["--pipeline", "classifier-guided", "--prompt", "a"], "--prompt and --negative-prompt need --pipeline latent"),
        (["--prompt", "a", "--classifier-scale", "2"], "--classifier-scale needs --pipeline classifier-guided"),
    ],
)
def test_generate_refuses_options_of_another_pipeline(argv, message, tmp_path, capsys):
    assert main(["generate", *argv, "--out", str(tmp_path / "x.png")]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "x.png").exists()


def test_evaluate_points_text_models_to_the_benchmark(capsys):
    assert main(["evaluate", "--pipeline", "latent"]) == 2
    assert "benchmarks/latent_cfg.py" in capsys.readouterr().err


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
    assert torch.equal(seen[0][2], pipe.encode_prompt(["thin"])[0])
    adapter.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    assert isinstance(pipe.scheduler, DDIMScheduler) and adapter.config is pipe.config
