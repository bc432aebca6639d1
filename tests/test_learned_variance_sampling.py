"""Sampling side of learned variance and the mean and score targets (issue 22): a UNet with 2 x C output channels
samples with every offered scheduler as its first C channels do, except an ancestral DDPM with a learned variance,
which samples with it (and classifier guidance's mean shift uses that Sigma); a network that predicts the mean or the
score samples as the epsilon network it stands for; and the refusals before any sampling."""

from __future__ import annotations

import pytest
import torch
from condiff.pipelines import ClassConditionalDDPMPipeline, ClassifierGuidedPipeline
from condiff.pipelines.guidance import classifier_log_prob_grad
from condiff.pipelines.noise_aware_classifier import NoiseAwareClassifier
from condiff.pipelines.variance import check_variance_setup, target_from_epsilon
from conftest import latents_after_first_step
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.models.unets.unet_2d import UNet2DOutput
from diffusers.utils.torch_utils import randn_tensor

from condiff.models import class_conditional_unet, scheduler_for
from condiff.options import SAMPLERS

T, K, STEPS = 50, 3, 4
LABELS = [0, 1, 2]


def unet(num_classes=K, out_channels=1, seed=0):
    torch.manual_seed(seed)
    return class_conditional_unet(
        num_classes, sample_size=8, channels=1, block_out_channels=(8, 16), norm_num_groups=4, out_channels=out_channels
    ).eval()


def ddpm(variance_type="learned_range", prediction_type="epsilon"):
    return DDPMScheduler(
        num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", variance_type=variance_type,
        prediction_type=prediction_type,
    )  # fmt: skip


def cfg_pipe(network, scheduler, **config):
    pipe = ClassConditionalDDPMPipeline(unet=network, scheduler=scheduler, **config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, **kwargs):
    kwargs = {"label": LABELS, "num_inference_steps": STEPS, "output_type": "latent"} | kwargs
    return pipe(generator=torch.Generator().manual_seed(0), **kwargs).images


def replace_forward(network, output_of):
    """Make `network` return `output_of(x, t, real output)`; returns the list of the inputs it was called with."""
    real, calls = network.forward, []

    def forward(x, t, *args, **kwargs):
        calls.append(x)
        return UNet2DOutput(sample=output_of(x, t, real(x, t, *args, **kwargs).sample))

    network.forward = forward
    return calls


# ------------------------------------------------------------------------------------------------ learned variance
@pytest.mark.parametrize("name", sorted(set(SAMPLERS) - {"ddpm"}))
def test_every_other_sampler_samples_the_prediction_alone(name):
    """DDIM, DPM-Solver++ (whose config says learned_range: diffusers would keep `model_output[:, :3]`, both channels
    of this 1-channel model), UniPC, Euler: the learned-variance UNet samples exactly as its first channel does."""
    network = unet(out_channels=2)
    scheduler = scheduler_for(name, ddpm().config)
    if name == "dpm++2m":
        assert scheduler.config.variance_type == "learned_range"
    pipe = cfg_pipe(network, scheduler)
    learned = sample(pipe, guidance_scale=3.0)
    replace_forward(network, lambda x, t, out: out[:, :1])
    first_channel = sample(pipe, guidance_scale=3.0)
    assert learned.shape == (3, 1, 8, 8)
    torch.testing.assert_close(learned, first_channel, atol=0, rtol=0)


def test_ddpm_learned_range_samples_with_the_learned_variance():
    network = unet(out_channels=2)
    learned = sample(cfg_pipe(network, ddpm("learned_range")), guidance_scale=3.0)
    fixed = sample(cfg_pipe(network, ddpm("fixed_small")), guidance_scale=3.0)
    assert torch.isfinite(learned).all() and not torch.allclose(learned, fixed)


def test_guidance_combines_the_predictions_and_the_variance_comes_from_the_conditional_branch():
    network = unet(out_channels=2)
    pipe = cfg_pipe(network, ddpm())
    x, t = torch.randn(2, 1, 8, 8), torch.tensor(30)
    cond, uncond = torch.tensor([0, 1]), torch.tensor([K, K])
    notes, rows = {}, [0]
    out = pipe._evaluate(x, ("uncond", "cond"), t=t, conditions={"cond": cond, "uncond": uncond}, scale=None,
                         rows=rows, notes=notes)  # fmt: skip
    expected = network(torch.cat([x, x]), t, class_labels=torch.cat([cond, uncond])).sample
    torch.testing.assert_close(out["cond"], expected[:2, :1])
    torch.testing.assert_close(out["uncond"], expected[2:, :1])
    torch.testing.assert_close(notes["variance_values"], expected[:2, 1:])
    assert rows == [4] and out["cond"].shape == (2, 1, 8, 8)
    pipe._evaluate(x, ("uncond",), t=t, conditions={"cond": cond, "uncond": uncond}, scale=None, rows=rows, notes=notes)
    torch.testing.assert_close(notes["variance_values"], expected[2:, 1:])  # w = 0: the only branch's


def refused_before_sampling(pipe, match, **kwargs):
    calls = replace_forward(pipe.unet, lambda x, t, out: out)
    with pytest.raises(ValueError, match=match):
        sample(pipe, **kwargs)
    assert calls == []


def test_a_ddpm_with_learned_variance_needs_a_unet_that_predicts_it():
    refused_before_sampling(cfg_pipe(unet(), ddpm("learned_range")), r"variance_type='learned_range'.*out_channels=1")
    refused_before_sampling(cfg_pipe(unet(), ddpm("learned")), "variance_type='learned'")


def test_output_channels_neither_c_nor_2c_are_refused():
    refused_before_sampling(cfg_pipe(unet(out_channels=3), ddpm("fixed_small")), r"unet has out_channels=3.* 1 .* 2")


def test_dpm_solver_that_would_cut_a_learned_variance_prediction_is_refused_for_more_than_3_channels():
    dpm = DPMSolverMultistepScheduler(num_train_timesteps=T, variance_type="learned_range")
    check_variance_setup(dpm, 2, 1)  # 1 channel: [:, :3] keeps the whole prediction
    check_variance_setup(dpm, 6, 3)
    with pytest.raises(ValueError, match=r"first 3 channels.*variance_type=None"):
        check_variance_setup(dpm, 8, 4)
    check_variance_setup(DPMSolverMultistepScheduler(num_train_timesteps=T), 8, 4)


# -------------------------------------------------------------------------------------- classifier guidance's Sigma
def classifier():
    torch.manual_seed(1)
    return NoiseAwareClassifier(
        sample_size=8, block_out_channels=(8, 16), norm_num_groups=4, num_classes=K, num_train_timesteps=T
    ).eval()


def after_first_step(pipe, **kwargs):
    """Latents after the first denoising step of this file's `sample`."""
    return latents_after_first_step(sample, pipe, **kwargs)


def test_mean_shift_uses_the_learned_sigma_per_pixel():
    network, clf, s = unet(num_classes=None, out_channels=2), classifier(), 2.0
    pipe = ClassifierGuidedPipeline(network, ddpm("learned_range"), clf)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.default_guidance_method() == "mean_shift"
    shift = after_first_step(pipe, classifier_scale=s) - after_first_step(pipe, classifier_scale=0.0)

    # by hand: x_T, the UNet's variance values v and the classifier's gradient at the first step
    x = randn_tensor((3, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    t = int(pipe.scheduler.timesteps[0])
    prev = t - T // STEPS
    abar = pipe.scheduler.alphas_cumprod
    beta = 1 - abar[t] / abar[prev]
    beta_tilde = (1 - abar[prev]) / (1 - abar[t]) * beta
    v = network(x, t).sample[:, 1:]
    frac = (v + 1) / 2
    sigma = torch.exp(frac * beta.log() + (1 - frac) * beta_tilde.log())
    grad = classifier_log_prob_grad(clf, x, torch.tensor(t), torch.tensor(LABELS))
    assert sigma.std() > 0  # per pixel, not one number
    torch.testing.assert_close(shift, s * sigma * grad, atol=1e-6, rtol=1e-4)


def test_mean_shift_with_learned_variance_and_a_class_conditional_unet_runs():
    pipe = ClassifierGuidedPipeline(unet(out_channels=2), ddpm("learned_range"), classifier())
    pipe.set_progress_bar_config(disable=True)
    out = pipe(label=LABELS, guidance_scale=2.0, num_inference_steps=STEPS, output_type="latent",
               generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert torch.isfinite(out.images).all() and out.nfe_per_image == 2 * STEPS


def test_classifier_guided_refuses_a_learned_ddpm_without_learned_variance():
    pipe = ClassifierGuidedPipeline(unet(num_classes=None), ddpm("learned_range"), classifier())
    pipe.set_progress_bar_config(disable=True)
    refused_before_sampling(pipe, "variance_type='learned_range'")


# ------------------------------------------------------------------------------------------- mean and score targets
@pytest.mark.parametrize("name", ["ddim", "dpm++2m"])
@pytest.mark.parametrize("kind", ["mean", "score"])
def test_a_mean_or_score_network_samples_as_the_epsilon_network_it_stands_for(name, kind):
    scheduler = scheduler_for(name, ddpm("fixed_small").config)
    reference = sample(cfg_pipe(unet(), scheduler), guidance_scale=3.0)
    network, abar = unet(), scheduler.alphas_cumprod
    replace_forward(network, lambda x, t, eps: target_from_epsilon(kind, abar, eps, x, t))
    pipe = cfg_pipe(network, scheduler_for(name, ddpm("fixed_small").config), prediction_target=kind)
    torch.testing.assert_close(sample(pipe, guidance_scale=3.0), reference, atol=1e-4, rtol=1e-4)


def test_a_mean_network_with_learned_variance_keeps_its_variance_values():
    reference = sample(cfg_pipe(unet(out_channels=2), ddpm()), guidance_scale=3.0)
    network, abar = unet(out_channels=2), ddpm().alphas_cumprod

    def as_mean(x, t, out):
        return torch.cat([target_from_epsilon("mean", abar, out[:, :1], x, t), out[:, 1:]], dim=1)

    replace_forward(network, as_mean)
    pipe = cfg_pipe(network, ddpm(), prediction_target="mean")
    torch.testing.assert_close(sample(pipe, guidance_scale=3.0), reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("target", ["eps", "epsilon", 1, ""])
def test_prediction_target_must_be_none_mean_or_score(target):
    with pytest.raises(ValueError, match=r"prediction_target must be one of \(None, 'mean', 'score'\)"):
        cfg_pipe(unet(), ddpm("fixed_small"), prediction_target=target)


def test_prediction_target_needs_an_epsilon_scheduler_before_any_sampling():
    with pytest.raises(ValueError, match=r"prediction_target='score' needs .*prediction_type='v_prediction'"):
        cfg_pipe(unet(), ddpm("fixed_small", "v_prediction"), prediction_target="score")
    pipe = cfg_pipe(unet(), ddpm("fixed_small"), prediction_target="mean")
    assert pipe.config.prediction_target == "mean"
    pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config, prediction_type="sample")
    refused_before_sampling(pipe, "prediction_target='mean' needs")


def test_prediction_target_survives_save_and_load(tmp_path):
    pipe = cfg_pipe(unet(), ddpm("fixed_small"), prediction_target="score")
    pipe.save_pretrained(tmp_path)
    loaded = ClassConditionalDDPMPipeline.from_pretrained(tmp_path)
    assert loaded.config.prediction_target == "score"
