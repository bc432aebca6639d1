"""The Langevin corrector (predictor-corrector sampling, Song et al. 2021): its network rows counted in nfe_per_image,
corrector_steps=0 unchanged sampling, the argument checks before any sampling, and one corrector step against a hand
computation on a toy epsilon network (DDIM, and Euler, whose latents are the variance-preserving x_t scaled)."""

from __future__ import annotations

import math

import pytest
import torch
from condiff.pipelines import ClassConditionalDDPMPipeline, ClassifierGuidedPipeline
from condiff.pipelines.corrector import langevin_step, training_alpha
from condiff.pipelines.guiders import ClassifierGuidance, Guidance, Step
from condiff.pipelines.noise_aware_classifier import NoiseAwareClassifier
from diffusers import DDIMScheduler, DDPMScheduler, EDMEulerScheduler, EulerDiscreteScheduler
from diffusers.models.unets.unet_2d import UNet2DOutput
from diffusers.utils.torch_utils import randn_tensor

from condiff.models import class_conditional_unet

T, K = 50, 3
SHAPE = (2, 1, 8, 8)


def unet(num_classes=K, out_channels=1):
    torch.manual_seed(0)
    return class_conditional_unet(
        num_classes, sample_size=8, channels=1, block_out_channels=(8, 16), norm_num_groups=4, out_channels=out_channels
    ).eval()


def schedule(cls=DDPMScheduler, **kwargs):
    return cls(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", **kwargs)


def cfg_pipe(scheduler=None, network=None, **config):
    pipe = ClassConditionalDDPMPipeline(unet=network or unet(), scheduler=scheduler or schedule(), **config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def classifier():
    torch.manual_seed(1)
    return NoiseAwareClassifier(
        sample_size=8, block_out_channels=(8, 16), norm_num_groups=4, num_classes=K, num_train_timesteps=T
    ).eval()


def run(pipe, **kwargs):
    kwargs = {"label": [0, 1], "num_inference_steps": 3, "output_type": "latent"} | kwargs
    return pipe(generator=torch.Generator().manual_seed(0), **kwargs)


def record_inputs(network, output_of=None):
    """Record the inputs of every forward of `network`; `output_of(x)`: what it returns instead of its own output."""
    real, inputs = network.forward, []

    def forward(x, t, *args, **kwargs):
        inputs.append(x.clone())
        return UNet2DOutput(sample=output_of(x) if output_of else real(x, t, *args, **kwargs).sample)

    network.forward = forward
    return inputs


# ---------------------------------------------------------------------------------------------------------- NFE
@pytest.mark.parametrize(("scale", "corrector_steps", "nfe"), [(3.0, 1, 40), (3.0, 2, 60), (1.0, 1, 20), (3.0, 0, 20)])
def test_nfe_counts_the_corrector_rows(scale, corrector_steps, nfe):
    out = run(cfg_pipe(), guidance_scale=scale, num_inference_steps=10, corrector_steps=corrector_steps)
    assert out.nfe_per_image == nfe and torch.isfinite(out.images).all()


def test_classifier_guided_corrector_counts_its_rows_and_runs():
    pipe = ClassifierGuidedPipeline(unet(num_classes=None), schedule(), classifier())
    pipe.set_progress_bar_config(disable=True)
    out = run(pipe, classifier_scale=2.0, num_inference_steps=4, corrector_steps=2)
    assert out.nfe_per_image == 4 * 3 and torch.isfinite(out.images).all()


def test_corrector_with_learned_variance_and_ddpm_learned_range_runs():
    pipe = cfg_pipe(schedule(variance_type="learned_range"), unet(out_channels=2))
    out = run(pipe, guidance_scale=3.0, corrector_steps=1)
    assert out.nfe_per_image == 3 * 4 and torch.isfinite(out.images).all()


def test_corrector_steps_zero_samples_as_without_a_corrector():
    pipe = cfg_pipe()
    plain = run(pipe, guidance_scale=3.0).images
    torch.testing.assert_close(run(pipe, guidance_scale=3.0, corrector_steps=0).images, plain, atol=0, rtol=0)
    torch.testing.assert_close(run(pipe, guidance_scale=3.0, corrector_steps=0, corrector_snr=0.5).images, plain,
                               atol=0, rtol=0)  # fmt: skip
    assert not torch.equal(run(pipe, guidance_scale=3.0, corrector_steps=1).images, plain)


def test_config_defaults_apply_and_a_call_overrides_them(tmp_path):
    pipe = cfg_pipe(default_corrector_steps=2, default_corrector_snr=0.2)
    assert run(pipe, guidance_scale=1.0).nfe_per_image == 3 * 3
    assert run(pipe, guidance_scale=1.0, corrector_steps=0).nfe_per_image == 3
    pipe.save_pretrained(tmp_path)
    loaded = ClassConditionalDDPMPipeline.from_pretrained(tmp_path)
    assert (loaded.config.default_corrector_steps, loaded.config.default_corrector_snr) == (2, 0.2)


# ------------------------------------------------------------------------------------------------------ errors
BAD = [
    ({"corrector_steps": -1}, "corrector_steps must be an int in 0..100"),
    ({"corrector_steps": 101}, "corrector_steps must be an int in 0..100"),
    ({"corrector_steps": 1.0}, "corrector_steps must be an int"),
    ({"corrector_steps": True}, "corrector_steps must be an int"),
    ({"corrector_steps": "1"}, "corrector_steps must be an int"),
    ({"corrector_steps": 1, "corrector_snr": 0}, r"corrector_snr must be a real number in \(0, 1\]"),
    ({"corrector_steps": 1, "corrector_snr": -0.1}, "corrector_snr must be"),
    ({"corrector_steps": 1, "corrector_snr": 1.5}, "corrector_snr must be"),
    ({"corrector_steps": 1, "corrector_snr": math.nan}, "corrector_snr must be"),
    ({"corrector_steps": 1, "corrector_snr": True}, "corrector_snr must be"),
    ({"corrector_snr": "0.1"}, "corrector_snr must be"),
]


@pytest.mark.parametrize(("kwargs", "match"), BAD)
@pytest.mark.parametrize("kind", ["cfg", "classifier"])
def test_bad_corrector_arguments_are_refused_before_any_sampling(kwargs, match, kind):
    if kind == "cfg":
        pipe = cfg_pipe()
    else:
        pipe = ClassifierGuidedPipeline(unet(num_classes=None), schedule(), classifier())
    inputs = record_inputs(pipe.unet)
    with pytest.raises(ValueError, match=match):
        run(pipe, **kwargs)
    assert inputs == []


@pytest.mark.parametrize(("kwargs", "match"), [({"default_corrector_steps": -1}, "default_corrector_steps"),
                                               ({"default_corrector_snr": 0.0}, "default_corrector_snr")])  # fmt: skip
def test_bad_config_defaults_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cfg_pipe(**kwargs)
    with pytest.raises(ValueError, match=match):
        ClassifierGuidedPipeline(unet(num_classes=None), schedule(), classifier(), **kwargs)


def test_a_scheduler_without_alphas_cumprod_is_refused_for_the_corrector():
    pipe = cfg_pipe(EDMEulerScheduler())
    inputs = record_inputs(pipe.unet)
    with pytest.raises(ValueError, match="corrector_steps=1 needs a discrete variance-preserving schedule"):
        run(pipe, corrector_steps=1)
    assert inputs == []


# --------------------------------------------------------------------------------------------- one step by hand
def by_hand(x, t, scheduler, z, snr):
    """Song's VP corrector step written out for the toy network eps(x) = x / 2."""
    abar, abar_prev = (float(scheduler.alphas_cumprod[i]) for i in (int(t), int(t) - 1))
    alpha = abar / abar_prev
    score = -(x / 2) / math.sqrt(1 - abar)
    out = []
    for xi, si, zi in zip(x, score, z):
        size = 2 * alpha * (snr * zi.norm() / si.norm()) ** 2
        out.append(xi + size * si + torch.sqrt(2 * size) * zi)
    return torch.stack(out)


def test_one_corrector_step_matches_the_hand_computation_with_ddim():
    pipe, snr = cfg_pipe(schedule(DDIMScheduler)), 0.3
    inputs = record_inputs(pipe.unet, lambda x: x / 2)
    run(pipe, guidance_scale=1.0, num_inference_steps=2, corrector_steps=1, corrector_snr=snr)
    generator = torch.Generator().manual_seed(0)
    x = randn_tensor(SHAPE, generator=generator)
    z = randn_tensor(SHAPE, generator=generator)  # DDIM (eta 0) draws nothing: the corrector's z comes next
    t = pipe.scheduler.timesteps[0]
    assert len(inputs) == 4  # corrector, predictor at each of the two steps
    torch.testing.assert_close(inputs[0], x, atol=0, rtol=0)
    torch.testing.assert_close(inputs[1], by_hand(x, t, pipe.scheduler, z, snr), atol=1e-5, rtol=1e-5)


def test_one_corrector_step_on_euler_works_on_the_variance_preserving_x_and_maps_back():
    pipe, snr = cfg_pipe(schedule(EulerDiscreteScheduler)), 0.16
    inputs = record_inputs(pipe.unet, lambda x: x / 2)
    run(pipe, guidance_scale=1.0, num_inference_steps=2, corrector_steps=1, corrector_snr=snr)
    generator = torch.Generator().manual_seed(0)
    reference = schedule(EulerDiscreteScheduler)
    reference.set_timesteps(2)
    sigma0, t0 = reference.sigmas[0], reference.timesteps[0]
    latents = randn_tensor(SHAPE, generator=generator) * reference.init_noise_sigma
    x = latents / (sigma0**2 + 1) ** 0.5
    torch.testing.assert_close(inputs[0], x)
    corrected = by_hand(x, t0, reference, randn_tensor(SHAPE, generator=generator), snr)
    torch.testing.assert_close(inputs[1], corrected, atol=1e-5, rtol=1e-5)
    # the predictor steps the scheduler's latents, x_t sqrt(sigma^2 + 1): the next model input is Euler's step from it
    reference.scale_model_input(latents, t0)
    moved = reference.step(corrected / 2, t0, corrected * (sigma0**2 + 1) ** 0.5).prev_sample
    torch.testing.assert_close(inputs[2], reference.scale_model_input(moved, reference.timesteps[1]), atol=1e-4,
                               rtol=1e-4)  # fmt: skip


def test_langevin_step_sizes_per_image_and_leaves_a_zero_score_alone():
    x, z = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    eps = torch.stack([torch.randn(1, 4, 4), torch.zeros(1, 4, 4)])
    out = langevin_step(x, eps, abar_t=0.5, alpha_t=0.9, snr=0.16, z=z)
    s = -eps[0] / math.sqrt(0.5)
    size = 2 * 0.9 * (0.16 * z[0].norm() / s.norm()) ** 2
    torch.testing.assert_close(out[0], x[0] + size * s + torch.sqrt(2 * size) * z[0])
    torch.testing.assert_close(out[1], x[1])
    assert training_alpha(schedule().alphas_cumprod, 0) == pytest.approx(float(schedule().alphas_cumprod[0]))


def test_the_corrector_sees_classifier_guidance_s_mean_shift_as_the_score_correction():
    """Under the mean shift the predictor's prediction is unguided (the shift comes after the step); the corrector's
    score must still carry + s g: the prediction of the score correction."""
    torch.manual_seed(0)
    scheduler, labels, x = schedule(prediction_type="v_prediction"), torch.tensor([0, 2]), torch.randn(SHAPE)
    scheduler.set_timesteps(5)
    t = scheduler.timesteps[1]
    clf = classifier()

    def evaluate(sample, names):
        return {"cond": sample * 0.3}

    def guided(method):
        step = Step(1, t, 5, x, x, scheduler, classifier_scale=2.0)
        return ClassifierGuidance(Guidance(), lambda s, ts: clf(s, ts), labels, method), step

    shift, step = guided("mean_shift")
    score, score_step = guided("score")
    corrected = score.predict(score_step, evaluate)
    assert not torch.allclose(shift.predict(step, evaluate), corrected)
    torch.testing.assert_close(shift.score_prediction(Step(1, t, 5, x, x, scheduler, classifier_scale=2.0), evaluate),
                               corrected)  # fmt: skip


# --------------------------------------------------------------------------------------------------------- CLI
def test_generate_flags_reach_the_call_and_are_refused_where_no_corrector_runs():
    from condiff.cli import build_parser
    from condiff.cli_arguments import corrector_kwargs

    args = build_parser().parse_args(["generate", "--corrector-steps", "2", "--corrector-snr", "0.2", "--out", "x.png"])
    args.pipeline = "class-conditional"
    assert corrector_kwargs(args) == {"corrector_steps": 2, "corrector_snr": 0.2}
    args.pipeline = "latent"
    with pytest.raises(ValueError, match="--corrector-steps and --corrector-snr need --pipeline class-conditional"):
        corrector_kwargs(args)
    args = build_parser().parse_args(["generate", "--out", "x.png"])
    args.pipeline = "latent"
    assert corrector_kwargs(args) == {}
    for flag, value in (("--corrector-snr", "0"), ("--corrector-snr", "1.5"), ("--corrector-steps", "101")):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["generate", flag, value, "--out", "x.png"])
