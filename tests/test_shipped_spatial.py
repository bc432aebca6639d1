"""The shipped spatial models: super-resolution keeps held-out digits' class and agrees with its input; the layout
model draws the map's classes where the map puts them, on a canvas larger than it was trained on; both folders load
without condiff."""

import numpy as np
import torch
from condiff.pipelines.spatial_conditions import downsample_area, layout_map, psnr
from conftest import sample_without_condiff

from condiff import SemanticLayoutPipeline, SuperResolutionPipeline, shipped_model_path
from condiff.data import load_mnist_arrays, uint8_to_model_tensor
from condiff.evaluation.metrics import default_classifier
from condiff.evaluator import classifier_accuracy


def shipped(cls, name):
    pipe = cls.from_pretrained(shipped_model_path(name))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_super_resolution_of_held_out_digits_keeps_their_class_and_agrees_with_the_input():
    images, labels = load_mnist_arrays("test")
    real = uint8_to_model_tensor(images[100:120])
    pipe = shipped(SuperResolutionPipeline, "super-resolution")
    for size, min_accuracy in ((14, 0.95), (7, 0.8)):
        low = downsample_area(real, size)
        out = pipe(image=(low + 1) / 2, generator=torch.Generator().manual_seed(0), output_type="pt").images * 2 - 1
        assert out.shape == (20, 1, 28, 28)
        assert classifier_accuracy(default_classifier(), out, labels[100:120]) >= min_accuracy
        assert psnr(downsample_area(out, size), low).mean() > 25  # bicubic: about 26 dB at 7x7


def test_the_shipped_class_hint_is_the_7x7_classifiers_and_sharpens_ambiguous_inputs():
    images, labels = load_mnist_arrays("test")
    real = uint8_to_model_tensor(images[:500])
    pipe = shipped(SuperResolutionPipeline, "super-resolution")
    assert type(pipe.classifier).__name__ == "MnistClassifier" and pipe.config.classifier_resolution == 7
    low = downsample_area(real, 7)
    hints = pipe.most_likely_classes(low).numpy()
    assert (hints == labels[:500]).mean() >= 0.96  # the information limit: about 97.6% on the 1,000 test digits
    assert (
        pipe.most_likely_classes(downsample_area(real[:100], 14)) == torch.from_numpy(hints[:100])
    ).float().mean() > 0.95
    wrong = np.flatnonzero(hints != labels[:500])[:4]  # ambiguous inputs: the hint decides the class drawn
    out = pipe(image=(low[wrong] + 1) / 2, label="auto", generator=torch.Generator().manual_seed(0), output_type="pt")
    predicted = default_classifier()(out.images * 2 - 1).argmax(1).numpy()
    assert (predicted == hints[wrong]).mean() >= 0.75


def test_layout_canvas_larger_than_training_puts_each_class_in_its_region():
    images, labels = load_mnist_arrays("test")
    pipe = shipped(SemanticLayoutPipeline, "layout")
    digits = [int(np.flatnonzero(labels == c)[0]) for c in (2, 5, 8)]
    maps = layout_map(uint8_to_model_tensor(images[digits]), torch.tensor([2, 5, 8]), 4, pipe.background_id)
    canvas_map = torch.full((7, 21), pipe.background_id)
    for i in range(3):
        canvas_map[:, 7 * i : 7 * (i + 1)] = maps[i]
    out = pipe(image=canvas_map, generator=torch.Generator().manual_seed(0), output_type="pt").images * 2 - 1
    assert out.shape == (1, 1, 28, 84)
    crops = torch.cat([out[..., 28 * i : 28 * (i + 1)] for i in range(3)])
    assert classifier_accuracy(default_classifier(), crops, [2, 5, 8]) == 1.0


def test_the_shipped_spatial_folders_load_without_condiff(tmp_path):
    for cls, name, call, kwargs in (
        (SuperResolutionPipeline, "super-resolution", "{'image': torch.full((1, 1, 7, 7), 0.5), 'label': 'auto', "
         "'num_inference_steps': 3}", {"image": torch.full((1, 1, 7, 7), 0.5), "label": "auto"}),
        (SemanticLayoutPipeline, "layout", "{'image': torch.full((7, 7), 10), 'num_inference_steps': 3}",
         {"image": torch.full((7, 7), 10)}),
    ):  # fmt: skip
        images, module = sample_without_condiff(shipped_model_path(name), tmp_path / f"{name}.pt", call)
        expected = shipped(cls, name)(**kwargs, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                                      output_type="pt").images  # fmt: skip
        torch.testing.assert_close(images, expected)
        assert "condiff" not in module
