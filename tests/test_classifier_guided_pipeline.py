"""ClassifierGuidedPipeline on tiny models: scale 0 is unguided sampling bit for bit, the mean shift and the score
correction land in the sampler as the formulas say, guidance raises the classifier's log-probability, every listed
scheduler runs, save/load (also without condiff), the diffusers conventions, and bad input."""

from __future__ import annotations

import functools
import logging

import pytest
import torch
from condiff.pipelines import ClassConditionalDDPMPipeline, ClassifierGuidedPipeline
from condiff.pipelines.guidance import alpha_prod_at, classifier_log_prob_grad, score_correction
from condiff.pipelines.noise_aware_classifier import NoiseAwareClassifier
from conftest import latents_after_first_step, sample_without_condiff
from diffusers import (
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EDMEulerScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from condiff.evaluator import MnistClassifier
from condiff.hub import stage_pipeline_code
from condiff.models import class_conditional_condition_unet, class_conditional_unet

T, K, STEPS = 50, 3, 5


def unet(num_classes=None, seed=0):
    torch.manual_seed(seed)
    return class_conditional_unet(
        num_classes, sample_size=8, channels=1, block_out_channels=(8, 16), norm_num_groups=4
    ).eval()


def noisy_classifier(**overrides):
    torch.manual_seed(1)
    config = dict(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4, num_classes=K, num_train_timesteps=T)
    return NoiseAwareClassifier(**(config | overrides)).eval()


def ddpm(prediction_type="v_prediction"):
    return DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type)


def make_pipe(scheduler=None, classifier="noisy", num_classes=None):
    clf = noisy_classifier() if classifier == "noisy" else classifier
    pipe = ClassifierGuidedPipeline(unet(num_classes), scheduler or ddpm(), clf, id2label={0: "a", 1: "b", 2: "c"})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def sample(pipe, **kwargs):
    kwargs = {"label": [0, 1, 2], "num_inference_steps": STEPS, "generator": gen(), "output_type": "latent"} | kwargs
    return pipe(**kwargs).images


def after_first_step(pipe, **kwargs):
    """Latents after the first denoising step of this file's `sample`."""
    return latents_after_first_step(sample, pipe, **kwargs)


# ------------------------------------------------------------------------------------------------ the formulas


def test_scale_zero_is_unguided_sampling_bit_for_bit():
    pipe = make_pipe()
    reference = DDPMPipeline(pipe.unet, pipe.scheduler)
    reference.set_progress_bar_config(disable=True)
    unguided = reference(batch_size=3, num_inference_steps=STEPS, generator=gen(), output_type="np").images
    zero = sample(pipe, classifier_scale=0.0, output_type="np")
    assert (zero == unguided).all()
    assert not (sample(pipe, classifier_scale=4.0, output_type="np") == unguided).all()
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    assert torch.equal(sample(pipe, classifier_scale=0.0), sample(pipe, label=None, num_images_per_label=3))


def test_one_mean_shift_step_moves_the_mean_by_s_sigma_g():
    pipe, s = make_pipe(), 3.0
    x_T = torch.randn(3, 1, 8, 8, generator=gen(5))
    plain = after_first_step(pipe, classifier_scale=0.0, latents=x_T)
    shifted = after_first_step(pipe, classifier_scale=s, latents=x_T)  # same generator: the same noise z is drawn
    t = pipe.scheduler.timesteps[0]
    grad = classifier_log_prob_grad(pipe.classifier, x_T, t, torch.tensor([0, 1, 2]))
    sigma = pipe.scheduler._get_variance(int(t))
    assert sigma > 0
    torch.testing.assert_close(shifted - plain, s * sigma * grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_the_score_correction_is_what_the_deterministic_sampler_steps_with(prediction_type):
    pipe, s = make_pipe(DDIMScheduler.from_config(ddpm(prediction_type).config)), 2.0
    x_T = torch.randn(3, 1, 8, 8, generator=gen(6))
    guided = after_first_step(pipe, classifier_scale=s, latents=x_T)
    scheduler, t = pipe.scheduler, pipe.scheduler.timesteps[0]
    with torch.no_grad():
        pred = pipe.unet(x_T, t).sample
    grad = classifier_log_prob_grad(pipe.classifier, x_T, t, torch.tensor([0, 1, 2]))
    corrected = score_correction(pred, grad, scheduler.alphas_cumprod[int(t)], s, prediction_type)
    expected = scheduler.step(corrected, t, x_T, use_clipped_model_output=True).prev_sample
    torch.testing.assert_close(guided, expected, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(guided, after_first_step(pipe, classifier_scale=0.0, latents=x_T))


def test_alpha_prod_at_is_exact_on_integer_timesteps_and_monotone_between():
    scheduler = ddpm()
    assert torch.equal(alpha_prod_at(scheduler, 17), scheduler.alphas_cumprod[17])
    mid = alpha_prod_at(scheduler, 17.5)
    assert scheduler.alphas_cumprod[18] < mid < scheduler.alphas_cumprod[17]


def trained_tiny_classifier(scheduler):
    """A noise-aware classifier of three 8x8 patterns (a bright row at 1, 4 or 7), trained for a few seconds."""
    torch.manual_seed(0)
    clf = NoiseAwareClassifier(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4, num_classes=K)
    clf.register_to_config(num_train_timesteps=T)
    optimizer = torch.optim.Adam(clf.parameters(), lr=3e-3)
    for _ in range(150):
        labels = torch.randint(0, K, (64,))
        clean = -torch.ones(64, 1, 8, 8)
        clean[torch.arange(64), 0, 1 + 3 * labels] = 1.0
        t = torch.randint(0, T, (64,))
        noisy = scheduler.add_noise(clean, torch.randn_like(clean), t)
        loss = torch.nn.functional.cross_entropy(clf(noisy, t), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return clf.eval()


def test_guidance_raises_the_log_probability_of_the_requested_class():
    scheduler = ddpm()
    clf = trained_tiny_classifier(scheduler)
    labels = torch.tensor([0, 1, 2] * 4)
    x, t = torch.randn(12, 1, 8, 8, generator=gen(3)), torch.full((12,), 30)

    def log_p(sample, at=t):
        with torch.no_grad():
            return torch.log_softmax(clf(sample, at), -1).gather(1, labels[:, None]).mean()

    grad = classifier_log_prob_grad(clf, x, t, labels)
    assert log_p(x + 0.05 * grad / grad.norm()) > log_p(x)
    # Through the whole sampler: guided samples are classified as the requested class far more often.
    pipe = ClassifierGuidedPipeline(unet(), scheduler, clf)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(label=labels, num_inference_steps=10, generator=gen(), output_type="latent")
    zero_t = torch.zeros(12, dtype=torch.long)
    unguided, guided = pipe(classifier_scale=0.0, **kwargs).images, pipe(classifier_scale=8.0, **kwargs).images
    accuracy = lambda images: (clf(images, zero_t).argmax(1) == labels).float().mean().item()  # noqa: E731
    with torch.no_grad():
        assert accuracy(guided) >= 0.9 > accuracy(unguided) + 0.3
        assert log_p(guided, zero_t) > log_p(unguided, zero_t) + 1.0


# -------------------------------------------------------------------------------------------- schedulers, methods

SCHEDULERS = [DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler]
SCHEDULERS += [EulerDiscreteScheduler, EulerAncestralDiscreteScheduler]


@pytest.mark.parametrize("scheduler_class", SCHEDULERS, ids=lambda c: c.__name__)
def test_every_listed_scheduler_runs_guided(scheduler_class):
    pipe = make_pipe(scheduler_class.from_config(ddpm().config))
    expected = "mean_shift" if scheduler_class is DDPMScheduler else "score"
    assert pipe.default_guidance_method() == expected
    guided, unguided = sample(pipe, classifier_scale=3.0), sample(pipe, classifier_scale=0.0)
    assert torch.isfinite(guided).all() and not torch.allclose(guided, unguided)
    if scheduler_class is DDPMScheduler:  # the score correction works for an ancestral sampler too
        score = sample(pipe, classifier_scale=3.0, guidance_method="score")
        assert torch.isfinite(score).all() and not torch.allclose(score, guided)


def test_training_free_guidance_with_a_clean_classifier():
    torch.manual_seed(2)
    clean = MnistClassifier(num_classes=K, image_size=8, channels=(4, 8), feature_dim=8).eval()
    pipe = make_pipe(DDIMScheduler.from_config(ddpm().config), classifier=clean)
    out = pipe(label=[0, 1, 2], classifier_scale=3.0, num_inference_steps=STEPS, generator=gen(), output_type="pt")
    assert out.nfe_per_image == STEPS and not out.images.requires_grad
    assert not torch.allclose(out.images, sample(pipe, classifier_scale=0.0, output_type="pt"))
    assert torch.equal(sample(pipe, classifier_scale=0.0), sample(pipe, label=None, num_images_per_label=3))


@pytest.mark.parametrize("architecture", ["UNet2DModel", "UNet2DConditionModel"])
def test_classifier_guidance_combines_with_cfg_on_a_class_conditional_unet(architecture):
    pipe = make_pipe(num_classes=K)
    if architecture == "UNet2DConditionModel":  # the shipped CFG model's class (no cross-attention)
        torch.manual_seed(0)
        pipe.unet = class_conditional_condition_unet(K, 8, 1, (8, 16), 1, 4).eval()
    cfg = ClassConditionalDDPMPipeline(pipe.unet, pipe.scheduler)
    cfg.set_progress_bar_config(disable=True)
    cfg_only = cfg(label=[0, 1, 2], guidance_scale=2.0, num_inference_steps=STEPS, generator=gen(), output_type="pt")
    same = sample(pipe, guidance_scale=2.0, classifier_scale=0.0, output_type="pt")
    torch.testing.assert_close(same, cfg_only.images, atol=1e-5, rtol=0)  # cfg runs its UNet channels_last
    both = pipe(label=[0, 1, 2], guidance_scale=2.0, classifier_scale=3.0, num_inference_steps=STEPS, generator=gen())
    assert both.nfe_per_image == 2 * STEPS
    assert not torch.allclose(sample(pipe, guidance_scale=2.0, classifier_scale=3.0, output_type="pt"), same)


# ------------------------------------------------------------------------------------------------ conventions


def test_save_load_round_trip(tmp_path):
    pipe = make_pipe()
    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "classifier" / "noise_aware_classifier.py").is_file()
    assert not list(tmp_path.rglob("*.bin"))
    loaded = ClassifierGuidedPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.classifier) is NoiseAwareClassifier and loaded.id2label == {0: "a", 1: "b", 2: "c"}
    # Same weights (checked below for the classifier); a loaded UNet's kernels may round differently (~5e-7).
    loaded_images = sample(loaded, classifier_scale=3.0, label="c")
    torch.testing.assert_close(loaded_images, sample(pipe, classifier_scale=3.0, label=2), atol=2e-6, rtol=0)
    standalone = NoiseAwareClassifier.from_pretrained(tmp_path / "classifier")
    assert all(torch.equal(a, b) for a, b in zip(standalone.parameters(), pipe.classifier.parameters(), strict=True))


def test_the_saved_folder_loads_without_condiff(tmp_path):
    pipe, model = make_pipe(), tmp_path / "model"
    pipe.save_pretrained(model)
    stage_pipeline_code(model, "classifier_guided.py")
    call = "dict(label=[0, 1, 2], classifier_scale=3.0, num_inference_steps=5)"
    images, module = sample_without_condiff(model, tmp_path / "images.pt", call)
    assert "diffusers_modules" in module
    expected = sample(pipe, classifier_scale=3.0, output_type="pt")
    torch.testing.assert_close(images, expected, atol=2e-6, rtol=0)


def test_dtype_move_and_batch_consistency():
    pipe = make_pipe()
    generators = lambda seeds: [gen(s) for s in seeds]  # noqa: E731
    batch = sample(pipe, classifier_scale=3.0, generator=generators([5, 6, 7]))
    for i in range(3):
        single = sample(pipe, classifier_scale=3.0, label=[i], generator=generators([5 + i]))
        torch.testing.assert_close(single, batch[i : i + 1], atol=1e-5, rtol=0)
    reference = sample(pipe, classifier_scale=3.0, output_type="pt")
    pipe.to(torch.bfloat16)
    low = sample(pipe, classifier_scale=3.0, output_type="pt")
    assert low.dtype == torch.bfloat16 and (low.float() - reference).abs().mean() < 0.05


def test_callback_changes_the_scale_like_a_guidance_interval_and_sees_the_state():
    pipe, seen = make_pipe(DDIMScheduler.from_config(ddpm().config)), []

    def off_after_step_1(p, i, t, tensors):
        assert not tensors["latents"].requires_grad  # no autograd graph is carried from step to step
        seen.append((p.classifier_scale, p.num_timesteps, p.guidance_scale))
        if i == 1:
            p._classifier_scale = 0.0
        return {}

    switched = sample(pipe, classifier_scale=3.0, callback_on_step_end=off_after_step_1)
    assert seen[:3] == [(3.0, STEPS, 1.0), (3.0, STEPS, 1.0), (0.0, STEPS, 1.0)]
    t1 = float(pipe.scheduler.timesteps[1]) / T
    assert torch.equal(switched, sample(pipe, classifier_scale=3.0, guidance_interval=(t1, 1.0)))


def test_interrupt_latent_output_and_num_images_per_prompt():
    pipe = make_pipe()
    first = after_first_step(pipe, classifier_scale=3.0)
    out = pipe(label=[0, 1, 2], classifier_scale=3.0, num_inference_steps=STEPS, generator=gen(), output_type="latent")
    assert not torch.equal(first, out.images) and out.nfe_per_image == STEPS
    as_pt = sample(pipe, classifier_scale=3.0, output_type="pt")
    torch.testing.assert_close(as_pt, (out.images / 2 + 0.5).clamp(0, 1))
    assert sample(pipe, label=1, num_images_per_prompt=4).shape == (4, 1, 8, 8)
    interrupted = sample(
        pipe, classifier_scale=3.0, callback_on_step_end=lambda p, i, t, x: setattr(p, "_interrupt", 1)
    )
    torch.testing.assert_close(interrupted, first)


# -------------------------------------------------------------------------------------------------- bad input

MISMATCHES = [
    (dict(num_classes=4), "classifier has 4 classes"),
    (dict(in_channels=3), "classifier takes 3 channels"),
    (dict(sample_size=16), "classifier takes 16x16 images"),
    (dict(num_train_timesteps=1000), "trained on 1000 timesteps but the scheduler has num_train_timesteps=50"),
]


@pytest.mark.parametrize("overrides, match", MISMATCHES)
def test_a_classifier_that_does_not_fit_is_refused(overrides, match):
    with pytest.raises(ValueError, match=match):
        ClassifierGuidedPipeline(unet(num_classes=K), ddpm(), noisy_classifier(**overrides))


BAD_CALLS = [
    (dict(classifier_scale=-1.0), ValueError, "classifier_scale must be a finite number >= 0"),
    (dict(classifier_scale=float("nan")), ValueError, "classifier_scale must be a finite number >= 0"),
    (dict(classifier_scale="2"), TypeError, "classifier_scale must be a real number"),
    (dict(label=3), ValueError, r"label must be in 0\.\.2"),
    (dict(label="zz"), ValueError, "not a class name"),
    (dict(guidance_method="mean_shift"), ValueError, "mean_shift' needs an ancestral DDPMScheduler"),
    (dict(guidance_method="langevin"), ValueError, r"guidance_method must be one of \('mean_shift', 'score'\)"),
    (dict(num_inference_steps=51), ValueError, "num_inference_steps must be <= 50"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD_CALLS)
def test_bad_calls_fail_before_any_model_work(kwargs, error, match, monkeypatch):
    pipe = make_pipe(DDIMScheduler.from_config(ddpm().config))
    monkeypatch.setattr(pipe.unet, "forward", functools.partial(pytest.fail, "the UNet ran"))
    with pytest.raises(error, match=match):
        sample(pipe, **kwargs)


def test_a_label_without_a_classifier_names_the_problem():
    pipe = ClassifierGuidedPipeline(unet(), ddpm())
    pipe.set_progress_bar_config(disable=True)
    assert sample(pipe, label=None, num_images_per_label=2).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="label needs a classifier"):
        sample(pipe, label=1)


@pytest.mark.parametrize("classifier_scale", [0.0, 3.0])
def test_a_scheduler_without_alphas_cumprod_is_refused_before_the_loop(classifier_scale, monkeypatch):
    """EDM schedulers have no alphas_cumprod: refused up front (it used to crash mid-loop), naming the scheduler."""
    pipe = make_pipe(EDMEulerScheduler(num_train_timesteps=T))
    monkeypatch.setattr(pipe.unet, "forward", functools.partial(pytest.fail, "the UNet ran"))
    with pytest.raises(ValueError, match="scheduler EDMEulerScheduler has no alphas_cumprod: classifier guidance"):
        sample(pipe, classifier_scale=classifier_scale)


def test_guidance_scale_is_accepted_and_ignored_for_an_unconditional_unet(caplog):
    """As diffusers pipelines accept a scale that does not apply: any guidance_scale runs the one UNet branch."""
    pipe = make_pipe()
    reference = pipe(label=[0, 1, 2], num_inference_steps=STEPS, generator=gen(), output_type="latent")
    with caplog.at_level(logging.WARNING):
        for w in (1.0, 0.0, 3.0):
            out = pipe(
                label=[0, 1, 2], guidance_scale=w, num_inference_steps=STEPS, generator=gen(), output_type="latent"
            )
            assert torch.equal(out.images, reference.images) and out.nfe_per_image == reference.nfe_per_image == STEPS
    assert caplog.text.count("is ignored: the unet is unconditional") == 2  # 0 and 3, not 1
    with pytest.raises(ValueError, match="guidance_scale must be a finite number >= 0"):
        sample(pipe, guidance_scale=-1.0)


def test_the_guidance_scale_state_follows_a_callback_for_an_unconditional_unet_too():
    """diffusers' `test_callback_cfg`: a callback adding 1 to `pipe._guidance_scale` at every step leaves
    guidance_scale = the call's w + the number of steps, whatever the UNet (the scale is ignored, not replaced)."""

    def increase(pipe, i, t, kwargs):
        pipe._guidance_scale += 1.0
        return kwargs

    pipe = make_pipe()
    out = pipe(label=1, guidance_scale=2.0, num_inference_steps=STEPS, generator=gen(), output_type="latent",
               callback_on_step_end=increase)  # fmt: skip
    assert pipe.guidance_scale == 2.0 + pipe.num_timesteps == 2.0 + STEPS and out.nfe_per_image == STEPS
