"""What helps the spatial models beyond their condition: a class hint from a classifier of the low-resolution input
(`label="auto"`), and layout training on crops of composed canvases (`--canvas_fraction`)."""

import json

import pytest
import torch
from condiff.pipelines.spatial_conditions import downsample_area, layout_map, upsample_bicubic
from conftest import sample_without_condiff
from test_spatial import K, seeded, sr_pipe
from test_spatial_training import spatial_args

from condiff import SuperResolutionPipeline
from condiff.evaluator import MnistClassifier
from condiff.hub import stage_pipeline_code
from condiff.tasks.spatial import compose_canvas_crops
from condiff.train import parse, run


def tiny_classifier(num_classes: int = K, seed: int = 0) -> MnistClassifier:
    torch.manual_seed(seed)
    return MnistClassifier(num_classes=num_classes, image_size=8, channels=(4, 8), feature_dim=8).eval()


def hinted_pipe(classifier_resolution=None) -> SuperResolutionPipeline:
    pipe = sr_pipe()
    return SuperResolutionPipeline(
        pipe.unet, pipe.scheduler, max_noise_level=20, default_num_inference_steps=3, classifier=tiny_classifier(),
        classifier_resolution=classifier_resolution,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- label="auto"
def test_auto_label_is_the_classifiers_most_likely_class_of_the_input_as_it_was_trained():
    pipe, low = hinted_pipe(classifier_resolution=2), torch.rand(4, 1, 4, 4) * 2 - 1
    seen = []
    pipe.classifier.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    expected = pipe.most_likely_classes(low)
    trained_on = upsample_bicubic(downsample_area(low, (2, 2)), (8, 8))  # the classifier was trained on 2x2 inputs
    torch.testing.assert_close(seen[0], trained_on, rtol=0, atol=0)
    assert torch.equal(expected, pipe.classifier(trained_on).argmax(1))
    pipe.most_likely_classes(low[..., :2, :2])  # a 2x2 input is only upsampled
    torch.testing.assert_close(seen[-1], upsample_bicubic(low[..., :2, :2], (8, 8)), rtol=0, atol=0)
    pipe.set_progress_bar_config(disable=True)
    image = (low + 1) / 2
    auto = pipe(image=image, label="auto", guidance_scale=2.0, generator=seeded(), output_type="pt").images
    given = pipe(image=image, label=expected.tolist(), guidance_scale=2.0, generator=seeded(), output_type="pt")
    torch.testing.assert_close(auto, given.images, rtol=0, atol=0)
    other = pipe(image=image, label=[(int(c) + 1) % K for c in expected], guidance_scale=2.0, generator=seeded(),
                 output_type="pt").images  # fmt: skip
    assert not torch.allclose(auto, other)


def test_auto_label_and_the_classifier_are_checked_before_sampling():
    pipe = sr_pipe()
    pipe.unet.forward = lambda *a, **k: pytest.fail("the unet ran")
    with pytest.raises(ValueError, match='label="auto" needs a classifier'):
        pipe(image=torch.rand(1, 1, 4, 4), label="auto")
    unet, scheduler = sr_pipe().unet, sr_pipe().scheduler
    with pytest.raises(ValueError, match="classifier has 5 classes; the unet has 3"):
        SuperResolutionPipeline(unet, scheduler, classifier=tiny_classifier(5))
    with pytest.raises(ValueError, match="classifier has 3 classes; the unet has None"):
        SuperResolutionPipeline(sr_pipe(classes=False).unet, scheduler, classifier=tiny_classifier())
    with pytest.raises(ValueError, match="classifier_resolution"):
        SuperResolutionPipeline(unet, scheduler, classifier=tiny_classifier(), classifier_resolution=0)


def test_the_classifier_is_saved_with_its_code_and_loads_with_and_without_condiff(tmp_path):
    pipe = hinted_pipe(classifier_resolution=2)
    pipe.save_pretrained(tmp_path / "sr")
    stage_pipeline_code(tmp_path / "sr", "super_resolution.py")
    index = json.loads((tmp_path / "sr" / "model_index.json").read_text())
    assert index["classifier"] == ["digit_classifier", "MnistClassifier"] and index["classifier_resolution"] == 2
    assert (tmp_path / "sr" / "classifier" / "digit_classifier.py").is_file()
    loaded = SuperResolutionPipeline.from_pretrained(tmp_path / "sr")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.classifier) is MnistClassifier
    for name, value in pipe.classifier.state_dict().items():
        assert torch.equal(loaded.classifier.state_dict()[name], value)
    low = torch.full((1, 1, 4, 4), 0.5)
    here = loaded(image=low, label="auto", generator=seeded(), output_type="pt").images
    call = "{'image': torch.full((1, 1, 4, 4), 0.5), 'label': 'auto'}"
    there, module = sample_without_condiff(tmp_path / "sr", tmp_path / "out.pt", call)
    assert "condiff" not in module and torch.allclose(there, here, atol=1e-5)


# ----------------------------------------------------------------------------------------- composed canvases
def test_canvas_crops_are_cell_aligned_windows_of_batch_digits_with_their_classes():
    n, cell = 64, 2
    images = torch.linspace(0.1, 0.9, n).view(n, 1, 1, 1).expand(n, 1, 8, 8).clone()  # digit i: value v_i
    labels = torch.arange(n)
    crops, pixel_labels = compose_canvas_crops(images, labels, 0.5, cell, seeded())
    composed = (crops != images).flatten(1).any(1)
    assert 0.3 < composed.float().mean() < 0.7
    empty = crops[:, 0] == -1.0
    assert empty.any() and (crops[:, 0][~empty] == images[:, 0, 0, 0][pixel_labels[~empty]]).all()
    coarse = pixel_labels[:, ::cell, ::cell].repeat_interleave(cell, 1).repeat_interleave(cell, 2)
    assert torch.equal(pixel_labels, coarse)  # a cell never straddles two slots
    assert torch.equal(pixel_labels[~composed], labels[~composed].view(-1, 1, 1).expand(-1, 8, 8))
    ids = layout_map(crops, pixel_labels, cell, background_id=n)
    assert torch.equal(ids == n, empty[:, ::cell, ::cell])  # ink where a digit was placed, its class there
    unchanged, same = compose_canvas_crops(images, labels, 0.0, cell, seeded())
    assert torch.equal(unchanged, images) and torch.equal(same[:, 0, 0], labels)


def test_canvas_fraction_trains_layouts_only_and_its_loss_is_exact(tmp_path):
    with pytest.raises(ValueError, match="--canvas_fraction needs --condition layout"):
        run(spatial_args(tmp_path, "--canvas_fraction", "0.5"))
    cls, args, _ = parse(spatial_args(tmp_path, "--condition", "layout", "--canvas_fraction", "1.0"))
    task = cls(args)
    task.check_args()
    dataset, modules = task.dataset(), task.build()
    batch = task.collate([dataset[i] for i in range(8)])
    losses = [task.loss(modules, batch, torch.Generator().manual_seed(3))[0].item() for _ in range(2)]
    assert losses[0] == losses[1]


def test_cli_label_auto_uses_the_folders_classifier_and_is_refused_without_one(tmp_path, capsys):
    import numpy as np
    import PIL.Image

    from condiff.cli import main

    hinted, plain = tmp_path / "hinted", tmp_path / "plain"
    hinted_pipe().save_pretrained(hinted)
    sr_pipe().save_pretrained(plain)
    low = tmp_path / "low.png"
    PIL.Image.fromarray(np.uint8(np.random.default_rng(0).random((4, 4)) * 255)).save(low)
    out = tmp_path / "sharp.png"
    argv = ["generate", "--image", str(low), "--label", "Auto", "--upscale", "1", "--quiet", "--seed", "0"]
    assert main([*argv, "--model", str(hinted), "--out", str(out)]) == 0
    assert "label=auto" in capsys.readouterr().out
    pipe = hinted_pipe()
    hint = int(pipe.most_likely_classes(pipe.image_processor.preprocess(PIL.Image.open(low)))[0])
    argv_given = [*argv[:4], str(hint), *argv[5:], "--model", str(hinted), "--out", str(tmp_path / "given.png")]
    assert main(argv_given) == 0
    assert np.array_equal(np.asarray(PIL.Image.open(out)), np.asarray(PIL.Image.open(tmp_path / "given.png")))
    assert main([*argv, "--model", str(plain), "--out", str(tmp_path / "a.png")]) == 2
    assert 'label="auto" needs a classifier' in capsys.readouterr().err
    assert not (tmp_path / "a.png").exists()


def test_a_super_resolution_run_exports_its_input_classifier_for_label_auto(tmp_path):
    folder = tmp_path / "limit"
    tiny_classifier(num_classes=10).save_pretrained(folder)
    (folder / "metrics.json").write_text(json.dumps({"test_accuracy": 0.5, "input_resolution": 2}))
    with pytest.raises(ValueError, match="needs --condition super_resolution with --class_labels"):
        run(spatial_args(tmp_path, "--input_classifier", str(folder)))
    with pytest.raises(ValueError, match="not a trained evaluator folder"):
        run(spatial_args(tmp_path, "--class_labels", "--input_classifier", str(tmp_path)))
    out = run(spatial_args(tmp_path, "--class_labels", "--input_classifier", str(folder), "--max_train_steps", "1"))
    pipe = SuperResolutionPipeline.from_pretrained(out)
    assert type(pipe.classifier) is MnistClassifier and pipe.config.classifier_resolution == 2
    assert "2x2 inputs" in (out / "README.md").read_text()
    low = torch.rand(3, 1, 4, 4)
    assert pipe.most_likely_classes(low * 2 - 1).shape == (3,)
