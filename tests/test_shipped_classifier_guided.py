"""The shipped classifier-guided MNIST pipeline (unconditional UNet + noise-aware classifier), judged by the shipped
evaluator: guidance turns chance-level "accuracy" into the requested digits; the folder carries its own code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from conftest import sample_without_condiff

from condiff import ClassifierGuidedPipeline, shipped_model_path
from condiff.evaluation import classifier_features_and_logits, default_classifier
from condiff.hub import pipeline_code

LABELS = [c for c in range(10) for _ in range(3)]


def evaluator_accuracy(images: torch.Tensor) -> float:
    _, logits = classifier_features_and_logits(default_classifier(), images * 2 - 1)
    return float((logits.argmax(1) == np.array(LABELS)).mean())


def test_guidance_with_the_shipped_models_raises_accuracy_far_above_chance():
    pipe = ClassifierGuidedPipeline.from_pretrained(shipped_model_path("classifier-guided"))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.num_classes == 10 and pipe.id2label[7] == "seven"

    def accuracy(scale: float) -> float:
        g = torch.Generator().manual_seed(7)
        return evaluator_accuracy(pipe(label=LABELS, classifier_scale=scale, generator=g, output_type="pt").images)

    unguided, guided = accuracy(0.0), accuracy(pipe.config.default_classifier_scale)
    assert unguided <= 0.35, unguided  # unconditional samples: the requested digit only by chance (0.1)
    assert guided >= 0.8, guided


def test_shipped_folder_carries_its_code_and_loads_without_condiff(tmp_path):
    folder = shipped_model_path("classifier-guided")
    repo_pipelines = Path(__file__).resolve().parents[1] / "pipelines"
    for target, source in pipeline_code("classifier_guided.py").items():
        assert (folder / target).read_bytes() == (repo_pipelines / source).read_bytes(), target
    classifier_code = folder / "classifier" / "noise_aware_classifier.py"
    assert classifier_code.read_bytes() == (repo_pipelines / "noise_aware_classifier.py").read_bytes()
    images, _ = sample_without_condiff(folder, tmp_path / "images.pt", "dict(label=[3, 7], num_inference_steps=4)")
    pipe = ClassifierGuidedPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    expected = pipe(label=[3, 7], num_inference_steps=4, generator=g, output_type="pt").images
    torch.testing.assert_close(images, expected, atol=1e-5, rtol=0)
