"""The one-step generator that ships beside the teacher (issue 23): guidance-embedded, one trailing DDIM step, one
network evaluation per image, judged by the shipped evaluator, and the model of `condiff generate --fast`."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image
from test_shipped_distilled import accuracy

from condiff import ClassConditionalDDPMPipeline, shipped_model_path
from condiff.cli import main as cli_main

FOLDER = shipped_model_path("one-step")


def test_shipped_one_step_generator_takes_one_network_evaluation_per_image():
    pipe = ClassConditionalDDPMPipeline.from_pretrained(FOLDER)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.guidance_embedded and isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.config.default_num_inference_steps == 1
    labels = [c for c in range(10) for _ in range(10)]
    out = pipe(label=labels, generator=torch.Generator().manual_seed(123), output_type="pt")
    assert out.nfe_per_image == 1
    assert accuracy(out.images, labels) >= 0.97  # chance is 0.1; 1,000 samples measure 99%+ (its card)
    per_class = out.images.view(10, 10, -1)
    assert (per_class.std(dim=1).mean(dim=1) > 0.05).all()  # the ten samples of each class differ


def test_generate_fast_uses_the_shipped_one_step_model(tmp_path):
    out = tmp_path / "sevens.png"
    assert cli_main(["generate", "--fast", "--label", "7", "--num-images", "4", "--out", str(out)]) == 0
    grid = np.asarray(Image.open(out).convert("L"), dtype=np.float32)
    tiles = grid.reshape(2, 56, 2, 56).transpose(0, 2, 1, 3).reshape(4, 56, 56)[:, ::2, ::2]
    assert accuracy(torch.from_numpy(tiles.copy())[:, None] / 255.0, [7] * 4) >= 0.75
    report = tmp_path / "fast.json"
    argv = ["evaluate", "--fast", "--num-per-class", "2", "--out", str(report), "--quiet"]
    assert cli_main(argv) == 0
    assert json.loads(report.read_text())["nfe_per_image"] == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "somewhere"], "--fast picks the shipped one-step model"),
        (["--pipeline", "classifier-guided"], "--fast is a class-conditional model"),
        (["--prompt", "a three"], "--fast is a class-conditional model"),
    ],
)
def test_fast_refuses_another_model_or_pipeline_before_loading(tmp_path, capsys, extra, message):
    out = tmp_path / "x.png"
    assert cli_main(["generate", "--fast", "--label", "1", "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err and not out.exists()
