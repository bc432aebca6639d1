"""Training tasks for classifier guidance (issue 8): the unconditional denoiser and the noise-aware classifier,
end to end through the engine on tiny models, and the per-noise-level accuracy metric."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from condiff.evaluation.metrics import accuracy_by_noise_level
from condiff.models import training_scheduler
from condiff.train import run

REPO = Path(__file__).resolve().parents[1]
TINY_DATA = ["--resolution", "8", "--norm_num_groups", "4", "--train_batch_size", "8", "--max_train_samples", "64",
             "--report_to", "none"]  # fmt: skip


def test_unconditional_task_exports_a_diffusers_ddpm_pipeline(tmp_path):
    from diffusers import DDPMPipeline

    out = run(["unconditional", "--output_dir", str(tmp_path / "u"), *TINY_DATA, "--block_out_channels", "8", "16",
               "--max_train_steps", "3", "--validation_images", "4", "--validation_inference_steps", "2"])  # fmt: skip
    pipe = DDPMPipeline.from_pretrained(out, use_safetensors=True)
    assert pipe.unet.config.num_class_embeds is None and pipe.unet.config.sample_size == 8
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler" and pipe.scheduler.config.thresholding
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=3, num_inference_steps=2, output_type="np").images
    assert images.shape == (3, 8, 8, 1) and np.isfinite(images).all()
    card = (out / "README.md").read_text()
    assert f'DDPMPipeline.from_pretrained("{out}")' in card and (out / "samples" / "final.png").is_file()


def test_noise_aware_classifier_task_reports_accuracy_per_noise_level(tmp_path):
    from condiff.pipelines.noise_aware_classifier import NoiseAwareClassifier

    out = run(["classifier", "--output_dir", str(tmp_path / "c"), *TINY_DATA, "--block_out_channels", "8", "16",
               "--max_train_steps", "2", "--validation_images", "50", "--num_train_timesteps", "100"])  # fmt: skip
    model = NoiseAwareClassifier.from_pretrained(out, use_safetensors=True)
    assert model.config.num_classes == 10 and model.config.num_train_timesteps == 100
    table = json.loads((out / "accuracy_by_timestep.json").read_text())
    assert table["split"] == "mnist-10k test split" and table["num_images"] == 50
    assert [r["timestep"] for r in table["rows"]] == [0, 10, 20, 30, 40, 50, 59, 69, 79, 89, 99]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in table["rows"])
    assert (out / "accuracy_by_timestep.png").stat().st_size > 1000
    card = (out / "README.md").read_text()
    assert "| t | noise fraction | accuracy |" in card and "accuracy_by_timestep.png" in card


@pytest.mark.parametrize("augment", [False, True])
def test_classifier_augment_noises_randomly_transformed_digits(monkeypatch, augment):
    """`--augment` noises a random rotation / scale / shift of each digit (the evaluator's `random_affine`, drawn
    from the training generator); without it the clean batch is noised as it is."""
    import condiff.diffusion
    from condiff.data import load_mnist_arrays, uint8_to_model_tensor
    from condiff.engine.task import Modules
    from condiff.evaluator import random_affine
    from condiff.train import parse

    cleans = []

    def noisy_batch(scheduler, clean, generator):  # the noising step, recorded: x_t = x0 at t = 0
        cleans.append(clean)
        return clean, torch.zeros_like(clean), torch.zeros(len(clean), dtype=torch.long)

    monkeypatch.setattr(condiff.diffusion, "noisy_batch", noisy_batch)
    task_cls, args, _ = parse(["classifier", "--output_dir", "unused", *(["--augment"] if augment else [])])
    task = task_cls(args)
    task.noise_scheduler = training_scheduler("squaredcos_cap_v2", "epsilon", 1000)
    digits, labels = load_mnist_arrays("train")
    images, labels = uint8_to_model_tensor(digits[:8]), torch.from_numpy(labels[:8])
    classifier = lambda x, t: x.flatten(1)[:, :10] * 0 + torch.zeros(10, requires_grad=True)  # noqa: E731
    loss, _ = task.loss(Modules(trained={"classifier": classifier}), {"images": images, "labels": labels},
                        torch.Generator().manual_seed(3))  # fmt: skip
    assert torch.isclose(loss, torch.tensor(np.log(10.0), dtype=loss.dtype))
    expected = random_affine(images, generator=torch.Generator().manual_seed(3)) if augment else images
    torch.testing.assert_close(cleans[0], expected)
    moved = (cleans[0] - images).abs().amax(dim=(1, 2, 3))
    assert bool((moved > 0.5).all()) if augment else bool((moved == 0).all())


def test_the_classifier_component_loads_without_condiff(tmp_path):
    """The component's code is Hub-loadable: import the file by path with condiff made unimportable."""
    from condiff.pipelines.noise_aware_classifier import NoiseAwareClassifier

    torch.manual_seed(0)
    NoiseAwareClassifier(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4).save_pretrained(tmp_path / "m")
    code = (
        "import sys, importlib.util, torch\n"
        "sys.modules['condiff'] = None\n"
        "spec = importlib.util.spec_from_file_location('nac', sys.argv[1])\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "m = mod.NoiseAwareClassifier.from_pretrained(sys.argv[2], use_safetensors=True)\n"
        "torch.manual_seed(1); x = torch.randn(2, 1, 8, 8)\n"
        "print(m(x, torch.tensor([0, 500])).sum().item())\n"
    )
    args = [sys.executable, "-c", code, str(REPO / "pipelines" / "noise_aware_classifier.py"), str(tmp_path / "m")]
    result = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    local = NoiseAwareClassifier.from_pretrained(tmp_path / "m", use_safetensors=True)
    torch.manual_seed(1)
    x = torch.randn(2, 1, 8, 8)
    assert float(result.stdout) == pytest.approx(local(x, torch.tensor([0, 500])).sum().item(), abs=1e-5)


class ConstantClassifier(torch.nn.Module):
    """Always predicts class `k` (whatever the noise)."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, t):
        logits = torch.zeros(len(x), 10)
        logits[:, self.k] = 1.0
        return logits


def test_accuracy_by_noise_level_counts_correct_predictions():
    images = torch.zeros(30, 1, 8, 8)
    labels = torch.tensor([3] * 12 + [5] * 18)
    scheduler = training_scheduler("linear", "epsilon", 100)
    rows = accuracy_by_noise_level(ConstantClassifier(3), scheduler, images, labels, [0, 50, 99], batch_size=7)
    assert [r["timestep"] for r in rows] == [0, 50, 99]
    assert [r["accuracy"] for r in rows] == [pytest.approx(0.4)] * 3
    assert rows[1]["noise_fraction"] == 0.5


def test_shipped_noise_aware_classifier_reproduces_its_accuracy_table():
    """The shipped classifier (scripts/train_classifier.py, 4,000 steps) is accurate on clean digits, near chance on
    pure noise, and its recorded table is what it computes (same images, same noise)."""
    from condiff.pipelines.noise_aware_classifier import NoiseAwareClassifier

    import condiff
    from condiff.data import load_mnist_arrays, uint8_to_model_tensor

    folder = Path(condiff.__file__).parent / "assets" / "mnist-noisy-classifier"
    model = NoiseAwareClassifier.from_pretrained(folder, use_safetensors=True)
    table = json.loads((folder / "accuracy_by_timestep.json").read_text())
    recorded = {r["timestep"]: r["accuracy"] for r in table["rows"]}
    images, labels = load_mnist_arrays("test")
    scheduler = training_scheduler("squaredcos_cap_v2", "epsilon", model.config.num_train_timesteps)
    rows = accuracy_by_noise_level(model, scheduler, uint8_to_model_tensor(images), labels, [0, 500, 998])
    measured = {r["timestep"]: r["accuracy"] for r in rows}
    assert measured == {t: recorded[t] for t in (0, 500, 998)}
    assert measured[0] >= 0.95 and measured[998] <= 0.25
