"""The step-distilled student that ships beside the teacher (issue 10): guidance-embedded, few trailing DDIM steps,
one network evaluation per step, judged by the shipped evaluator, and reachable through `condiff generate`."""

import numpy as np
import torch
from diffusers import DDIMScheduler
from PIL import Image

from condiff import ClassConditionalDDPMPipeline, shipped_model_path
from condiff.cli import main as cli_main
from condiff.evaluation import classifier_features_and_logits, default_classifier

FOLDER = shipped_model_path("distilled")


def accuracy(images: torch.Tensor, labels: list[int]) -> float:
    _, logits = classifier_features_and_logits(default_classifier(), images * 2 - 1)
    return float((logits.argmax(1) == np.array(labels)).mean())


def test_shipped_student_samples_in_its_few_steps_are_classified_as_requested():
    pipe = ClassConditionalDDPMPipeline.from_pretrained(FOLDER)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.guidance_embedded and isinstance(pipe.scheduler, DDIMScheduler)
    labels = [c for c in range(10) for _ in range(4)]
    out = pipe(label=labels, generator=torch.Generator().manual_seed(123), output_type="pt")
    assert out.nfe_per_image == pipe.config.default_num_inference_steps <= 4  # one evaluation per step
    assert accuracy(out.images, labels) >= 0.9  # chance is 0.1


def test_generate_command_runs_the_shipped_student(tmp_path):
    out = tmp_path / "sevens.png"
    assert cli_main(["generate", "--model", str(FOLDER), "--label", "7", "--num-images", "4", "--out", str(out)]) == 0
    grid = np.asarray(Image.open(out).convert("L"), dtype=np.float32)
    tiles = grid.reshape(2, 56, 2, 56).transpose(0, 2, 1, 3).reshape(4, 56, 56)[:, ::2, ::2]
    assert accuracy(torch.from_numpy(tiles.copy())[:, None] / 255.0, [7] * 4) >= 0.75
