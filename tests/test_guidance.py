"""The CFG formula and its identities at scales 0 and 1, on the formula and through the pipeline."""

import pytest
import torch
from condiff.pipelines.guidance import (
    cfg_combine,
    check_guidance_arguments,
    guided_prediction,
    in_guidance_interval,
    rescale_guided,
)


def test_cfg_combine_values():
    uncond, cond = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 2.0])
    assert torch.equal(cfg_combine(uncond, cond, 0.0), uncond)
    assert torch.equal(cfg_combine(uncond, cond, 1.0), cond)
    assert torch.allclose(cfg_combine(uncond, cond, 3.0), torch.tensor([7.0, 10.0]))


def test_rescale_matches_conditional_std():
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(4, 1, 8, 8, generator=g)
    guided = 5 * torch.randn(4, 1, 8, 8, generator=g)
    full = rescale_guided(guided, cond, 1.0)
    assert torch.allclose(full.std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)), atol=1e-5)
    assert torch.equal(rescale_guided(guided, cond, 0.0), guided)


class CountingModel:
    def __init__(self):
        self.calls = []

    def __call__(self, x, labels):
        self.calls.append(x.shape[0])
        return x * 0 + labels.float().view(-1, 1, 1, 1)


@pytest.mark.parametrize("scale", [0.0, 2.5, torch.tensor([1.0, 3.0])])
def test_guided_prediction_runs_both_branches_in_one_pass_with_scalar_or_per_row_scales(scale):
    model = CountingModel()
    x = torch.zeros(2, 1, 2, 2)
    cond, uncond = torch.tensor([1, 1]), torch.tensor([5, 5])
    pred, rows = guided_prediction(model, x, cond, uncond, scale)
    assert rows == 4 and model.calls == [4]
    w = torch.as_tensor(scale).reshape(-1, 1, 1, 1)
    assert torch.allclose(pred, (5 + w * (1 - 5)).expand_as(x))


def test_guidance_interval():
    assert in_guidance_interval(999, 1000, (0.0, 1.0))
    assert in_guidance_interval(500, 1000, (0.2, 0.6))
    assert not in_guidance_interval(700, 1000, (0.2, 0.6))
    assert not in_guidance_interval(100, 1000, (0.2, 0.6))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"guidance_scale": -1.0}, "guidance_scale"),
        ({"guidance_scale": float("nan")}, "guidance_scale"),
        ({"guidance_scale": float("inf")}, "guidance_scale"),
        ({"guidance_rescale": 1.5}, "guidance_rescale"),
        ({"guidance_interval": (0.8, 0.2)}, "guidance_interval"),
        ({"guidance_interval": (0.0,)}, "guidance_interval"),
    ],
)
def test_bad_guidance_arguments(kwargs, match):
    args = {"guidance_scale": 2.0, "guidance_rescale": 0.0, "guidance_interval": (0.0, 1.0)} | kwargs
    with pytest.raises(ValueError, match=match):
        check_guidance_arguments(**args)
    with pytest.raises(TypeError, match="guidance_scale"):
        check_guidance_arguments("3", 0.0, (0.0, 1.0))


def _call(pipe, **kwargs):
    return pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=4, output_type="pt", **kwargs)


def _sample(pipe, **kwargs):
    return _call(pipe, **kwargs).images


def test_scale_zero_is_unconditional_sampling(pipe):
    guided = _call(pipe, label=[0, 2], guidance_scale=0.0)
    uncond = _call(pipe, label=None, num_images_per_label=2)
    assert torch.equal(guided.images, uncond.images)
    assert guided.nfe_per_image == uncond.nfe_per_image == 4


def test_scale_one_is_conditional_sampling(pipe):
    out = _call(pipe, label=[0, 2], guidance_scale=1.0)
    guided = out.images
    assert out.nfe_per_image == 4

    # Plain conditional sampling written out with the scheduler, no guidance code at all.
    latents = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    pipe.scheduler.set_timesteps(4)
    labels = torch.tensor([0, 2])
    generator = torch.Generator().manual_seed(0)
    torch.randn((2, 1, 8, 8), generator=generator)  # same draws as the pipeline's initial noise
    with torch.no_grad():
        for t in pipe.scheduler.timesteps:
            eps = pipe.unet(latents, t, class_labels=labels).sample
            latents = pipe.scheduler.step(eps, t, latents, generator=generator).prev_sample
    assert torch.allclose(guided, (latents / 2 + 0.5).clamp(0, 1), atol=1e-6)


def test_guided_sampling_batches_both_branches_and_differs(pipe):
    guided = _call(pipe, label=[0, 2], guidance_scale=4.0)
    assert guided.nfe_per_image == 8
    assert not torch.allclose(guided.images, _sample(pipe, label=[0, 2], guidance_scale=1.0))


def test_full_interval_equals_plain_cfg_and_empty_interval_equals_conditional(pipe):
    plain = _sample(pipe, label=[1, 2], guidance_scale=3.0)
    assert torch.equal(_sample(pipe, label=[1, 2], guidance_scale=3.0, guidance_interval=(0.0, 1.0)), plain)
    conditional = _sample(pipe, label=[1, 2], guidance_scale=1.0)
    # An interval no timestep falls into: every step runs the conditional branch only.
    empty = _call(pipe, label=[1, 2], guidance_scale=3.0, guidance_interval=(0.999, 0.999))
    assert torch.equal(empty.images, conditional)
    assert empty.nfe_per_image == 4
