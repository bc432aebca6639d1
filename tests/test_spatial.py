"""Spatial conditioning by concatenation: the conditions' math, the two pipelines and their refusals."""

import numpy as np
import PIL.Image
import pytest
import torch
from condiff.pipelines.spatial_conditions import (
    augment_low_resolution,
    downsample_area,
    drop_condition,
    layout_map,
    one_hot_layout,
    psnr,
    upsample_bicubic,
)
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from condiff import SemanticLayoutPipeline, SuperResolutionPipeline
from condiff.models import class_conditional_condition_unet

K = 3  # classes of the tiny models


def scheduler():
    return DDIMScheduler(num_train_timesteps=50, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")


def sr_pipe(classes: bool = True, seed: int = 0) -> SuperResolutionPipeline:
    torch.manual_seed(seed)
    unet = class_conditional_condition_unet(K if classes else None, 8, 1, (8, 16), 1, 4, 16, condition_channels=1)
    pipe = SuperResolutionPipeline(unet.eval(), scheduler(), max_noise_level=20, default_num_inference_steps=3)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def layout_pipe(seed: int = 0) -> SemanticLayoutPipeline:
    torch.manual_seed(seed)
    unet = class_conditional_condition_unet(None, 8, 1, (8, 16), 1, 4, condition_channels=K + 1)
    pipe = SemanticLayoutPipeline(unet.eval(), scheduler(), layout_cell=2, default_num_inference_steps=3)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------- conditions
def test_area_downsampling_is_the_mean_of_each_block_and_bicubic_returns_to_size():
    x = torch.arange(16.0).view(1, 1, 4, 4) / 16
    low = downsample_area(x, 2)
    assert torch.allclose(low[0, 0], torch.tensor([[2.5, 4.5], [10.5, 12.5]]) / 16)
    assert upsample_bicubic(low, (4, 4)).shape == (1, 1, 4, 4)


def test_augmentation_follows_q_of_c_s_given_c_0():
    abar = torch.tensor([0.99, 0.25])
    low = torch.full((4000, 1, 2, 2), 0.8)
    noisy = augment_low_resolution(low, torch.ones(4000, dtype=torch.long), abar, seeded())
    assert abs(noisy.mean().item() - 0.5 * 0.8) < 0.02  # sqrt(abar) c_0
    assert abs(noisy.std().item() - 0.75**0.5) < 0.02  # sqrt(1 - abar)
    eps = torch.randn(1, 1, 2, 2)
    clean = augment_low_resolution(low[:1], torch.zeros(1).long(), abar, noise=eps)
    assert torch.allclose(clean, 0.99**0.5 * 0.8 + 0.1 * eps)


def test_layout_map_marks_the_cells_with_ink_by_class_and_one_hot_has_a_null_of_zeros():
    images = -torch.ones(2, 1, 4, 4)
    images[0, 0, 0, 0] = 1.0  # ink in the top-left cell of digit 0
    images[1, 0, 3, 2:] = 0.5  # ink in the bottom-right cell of digit 1
    ids = layout_map(images, torch.tensor([2, 1]), cell=2, background_id=K)
    assert ids.tolist() == [[[2, 3], [3, 3]], [[3, 3], [3, 1]]]
    one_hot = one_hot_layout(ids, K + 1, (4, 4))
    assert one_hot.shape == (2, K + 1, 4, 4) and torch.equal(one_hot.sum(1), torch.ones(2, 4, 4))
    assert one_hot[0, 2, :2, :2].eq(1).all() and one_hot[0, 2, 2:].eq(0).all()  # nearest-resized cells
    dropped = drop_condition(one_hot.repeat(500, 1, 1, 1), 0.3, seeded())
    null_rows = dropped.flatten(1).abs().sum(1) == 0
    assert 0.25 < null_rows.float().mean().item() < 0.35


def test_psnr_in_db():
    a = torch.zeros(1, 1, 4, 4)
    assert psnr(a, a + 0.02).item() == pytest.approx(10 * np.log10(4 / 0.0004), rel=1e-5)


# ------------------------------------------------------------------------------------------------- pipelines
@pytest.mark.parametrize("image", [
    torch.rand(2, 1, 4, 4), np.random.rand(2, 4, 4, 1).astype(np.float32),
    [PIL.Image.fromarray(np.uint8(np.random.rand(4, 4) * 255))] * 2,
])  # fmt: skip
def test_super_resolution_takes_what_diffusers_image_processors_take(image):
    out = sr_pipe()(image=image, label=[0, 2], output_type="pt", generator=seeded())
    assert out.images.shape == (2, 1, 8, 8) and out.nfe_per_image == 3  # w = 1: one branch per step


def test_scale_one_is_the_conditional_model_and_scale_zero_drops_image_and_label_together():
    pipe = sr_pipe()
    low = torch.rand(1, 1, 4, 4)
    run = lambda **kw: pipe(image=low, generator=seeded(), output_type="pt", **kw)  # noqa: E731
    cond = run(label=1, guidance_scale=1.0)
    guided = run(label=1, guidance_scale=2.0)
    assert guided.nfe_per_image == 6 and not torch.allclose(guided.images, cond.images)
    uncond = run(label=1, guidance_scale=0.0).images
    other_input = pipe(image=torch.rand(1, 1, 4, 4), label=0, guidance_scale=0.0, generator=seeded(), output_type="pt")
    assert torch.allclose(uncond, other_input.images, atol=1e-6)  # neither the image nor the label is seen


def test_noise_level_changes_the_condition_and_is_checked():
    pipe = sr_pipe()
    low = torch.rand(1, 1, 4, 4)
    a = pipe(image=low, noise_level=0, generator=seeded(), output_type="pt").images
    b = pipe(image=low, noise_level=20, generator=seeded(), output_type="pt").images
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match=r"noise_level must be an integer in \[0, 20\]"):
        pipe(image=low, noise_level=21)


@pytest.mark.parametrize("kwargs, match", [
    ({"image": torch.rand(1, 3, 4, 4)}, "image must have 1 channel"),
    ({"image": torch.rand(1, 1, 16, 16)}, "image is 16x16, larger than the output 8x8"),
    ({"image": torch.rand(1, 1, 4, 4), "height": 9}, "height must be a multiple of 2"),
    ({"image": torch.rand(2, 1, 4, 4), "label": [0, 1, 2]}, "label has 3 entries but image has 2"),
    ({"image": torch.rand(1, 1, 4, 4), "label": 5}, "label"),
    ({"image": None}, "image is required"),
    ({"image": "not an image"}, "image must be"),
    ({"image": torch.full((1, 1, 4, 4), float("nan"))}, "finite values"),
])  # fmt: skip
def test_super_resolution_refuses_bad_input_before_sampling(kwargs, match):
    pipe = sr_pipe()
    pipe.unet.forward = lambda *a, **k: pytest.fail("the unet ran")
    with pytest.raises(ValueError, match=match):
        pipe(**kwargs)


def test_a_label_for_a_unet_without_classes_is_refused():
    with pytest.raises(ValueError, match="no class embedding"):
        sr_pipe(classes=False)(image=torch.rand(1, 1, 4, 4), label=1)


def test_layout_canvas_larger_than_training_and_its_refusals():
    pipe = layout_pipe()
    layout = np.full((4, 8), K)
    layout[1:3, 1:3], layout[1:3, 5:7] = 0, 2
    out = pipe(image=layout, output_type="np", generator=seeded())
    assert out.images.shape == (1, 8, 16, 1)  # layout_cell 2 x the map
    assert pipe(image=torch.tensor(layout), height=12, width=12, output_type="pt").images.shape == (1, 1, 12, 12)
    pipe.unet.forward = lambda *a, **k: pytest.fail("the unet ran")
    with pytest.raises(ValueError, match=r"unknown category ids \[7\]; allowed: 0..2 \(classes\) and 3 \(background\)"):
        pipe(image=np.full((4, 4), 7))
    with pytest.raises(ValueError, match="integer category ids"):
        pipe(image=np.full((4, 4), 0.5))
    with pytest.raises(ValueError, match="share one size"):
        pipe(image=[np.zeros((4, 4), int), np.zeros((2, 2), int)])
    with pytest.raises(ValueError, match="PIL layout map must be mode"):
        pipe(image=PIL.Image.new("RGB", (4, 4)))


def test_layout_follows_the_map_through_cfg_and_pil_maps_work():
    pipe = layout_pipe()
    layout = PIL.Image.fromarray(np.uint8(np.full((4, 4), K)))
    a = pipe(image=layout, guidance_scale=0.0, generator=seeded(), output_type="pt").images
    b = pipe(image=np.zeros((4, 4), int), guidance_scale=0.0, generator=seeded(), output_type="pt").images
    assert torch.allclose(a, b, atol=1e-6)  # w = 0: the map is not seen
    c = pipe(image=np.zeros((4, 4), int), guidance_scale=3.0, generator=seeded(), output_type="pt")
    assert c.nfe_per_image == 6 and not torch.allclose(b, c.images)


@pytest.mark.parametrize("make", [sr_pipe, layout_pipe])
def test_save_load_scheduler_swap_and_callbacks(make, tmp_path):
    pipe = make()
    image = torch.rand(1, 1, 4, 4) if isinstance(pipe, SuperResolutionPipeline) else np.zeros((4, 4), int)
    before = pipe(image=image, generator=seeded(), output_type="pt").images
    pipe.save_pretrained(tmp_path)
    loaded = type(pipe).from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert torch.allclose(loaded(image=image, generator=seeded(), output_type="pt").images, before, atol=1e-5)
    loaded.scheduler = EulerDiscreteScheduler.from_config(loaded.scheduler.config)
    assert loaded(image=image, generator=seeded(), output_type="pt").images.shape == before.shape
    seen = []

    def stop_after_one(p, step, t, kwargs):
        seen.append((step, kwargs["latents"].shape, p.num_timesteps))
        p._interrupt = True
        return kwargs

    loaded(image=image, callback_on_step_end=stop_after_one)
    assert seen == [(0, (1, 1, 8, 8), 3)]


# ------------------------------------------------------------------------------------------------------------ CLI
def test_cli_generates_from_an_image_file_and_refuses_mismatched_flags(tmp_path, capsys):
    from condiff.cli import main

    sr, layout = tmp_path / "sr", tmp_path / "layout"
    sr_pipe().save_pretrained(sr)
    layout_pipe().save_pretrained(layout)
    low = tmp_path / "low.png"
    PIL.Image.fromarray(np.uint8(np.random.default_rng(0).random((4, 4)) * 255)).save(low)
    out = tmp_path / "sharp.png"
    assert main(["generate", "--model", str(sr), "--image", str(low), "--noise-level", "5", "--num-images", "2",
                 "--out", str(out), "--upscale", "1", "--quiet"]) == 0  # fmt: skip
    assert PIL.Image.open(out).size == (16, 8)  # 2 images of 8x8 side by side
    layout_map_file = tmp_path / "map.npy"
    np.save(layout_map_file, np.full((4, 6), K))
    out = tmp_path / "canvas.png"
    assert main(["generate", "--model", str(layout), "--image", str(layout_map_file), "--num-images", "1",
                 "--out", str(out), "--upscale", "1", "--quiet"]) == 0  # fmt: skip
    assert PIL.Image.open(out).size == (12, 8)
    for argv, message in [
        (["generate", "--model", str(sr), "--out", str(tmp_path / "a.png")], "needs --image FILE"),
        (["generate", "--image", str(low), "--out", str(tmp_path / "a.png")], "--image and --noise-level need"),
        (["generate", "--model", str(layout), "--image", str(layout_map_file), "--noise-level", "3", "--out",
          str(tmp_path / "a.png")], "--noise-level needs --pipeline super-resolution"),
        (["evaluate", "--model", str(sr)], "benchmarks/spatial_conditioning.py"),
    ]:  # fmt: skip
        assert main(argv) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "a.png").exists()


@pytest.mark.parametrize("make", [sr_pipe, layout_pipe])
def test_an_image_of_a_batch_with_its_own_generator_equals_it_alone(make):
    pipe = make()
    if isinstance(pipe, SuperResolutionPipeline):
        images = [torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4)]
        batch = {"image": torch.cat(images), "noise_level": 10}
        alone = [{"image": image, "noise_level": 10} for image in images]
    else:
        maps = [np.full((4, 4), K), np.zeros((4, 4), int)]
        batch, alone = {"image": maps}, [{"image": m} for m in maps]
    together = pipe(**batch, generator=[seeded(1), seeded(2)], guidance_scale=2.0, output_type="pt").images
    for i, kwargs in enumerate(alone):
        single = pipe(**kwargs, generator=seeded(i + 1), guidance_scale=2.0, output_type="pt").images
        assert torch.allclose(together[i : i + 1], single, atol=1e-5)
