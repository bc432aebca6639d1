"""Classifier-guidance formulas in pipelines/guidance.py (Dhariwal & Nichol 2021, Algorithms 1 and 2)."""

from __future__ import annotations

import pytest
import torch
from condiff.pipelines.guidance import classifier_log_prob_grad, mean_shift, score_correction
from condiff.pipelines.noise_aware_classifier import NoiseAwareClassifier
from diffusers import DDPMScheduler


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return NoiseAwareClassifier(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4, num_classes=3).eval()


def test_the_gradient_raises_the_log_probability_of_the_requested_class(classifier):
    torch.manual_seed(1)
    x, t = torch.randn(6, 1, 8, 8), torch.tensor([10, 200, 500, 700, 900, 999])
    labels = torch.tensor([0, 1, 2, 0, 1, 2])

    def log_p(sample):
        with torch.no_grad():
            return torch.log_softmax(classifier(sample, t), -1).gather(1, labels[:, None]).squeeze(1)

    with torch.no_grad():  # callable from a gradient-free sampling loop
        grad = classifier_log_prob_grad(classifier, x, t, labels)
    assert grad.shape == x.shape and not grad.requires_grad
    step = 1e-2 / grad.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
    assert (log_p(x + step * grad) > log_p(x)).all()
    assert (log_p(x - step * grad) < log_p(x)).all()
    # Per image: the gradient of a one-image batch equals that image's row of the batched gradient.
    single = classifier_log_prob_grad(classifier, x[2:3], t[2:3], labels[2:3])
    assert torch.allclose(single, grad[2:3], atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_score_correction_is_the_guided_score_expressed_in_the_network_output(prediction_type):
    torch.manual_seed(2)
    x_t, eps, grad = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    abar, s = torch.tensor(0.3), 2.5
    a, b = abar.sqrt(), (1 - abar).sqrt()
    # The score-space formula: grad log p(x_t | y) = -eps / b + s * g, back to noise: eps_hat = -b * score.
    eps_hat = -b * (-eps / b + s * grad)
    to_output = {
        "epsilon": lambda e: e,
        "v_prediction": lambda e: (e - b * x_t) / a,  # v = a eps - b x0 with x0 = (x_t - b eps) / a
        "sample": lambda e: (x_t - b * e) / a,
    }[prediction_type]
    corrected = score_correction(to_output(eps), grad, abar, s, prediction_type)
    assert torch.allclose(corrected, to_output(eps_hat), atol=1e-5)


def test_scale_zero_changes_nothing_bit_for_bit():
    pred, grad = torch.randn(2, 1, 4, 4), torch.full((2, 1, 4, 4), float("nan"))
    assert score_correction(pred, grad, 0.5, 0.0, "v_prediction") is pred
    assert mean_shift(pred, grad, 0.1, 0.0) is pred


def test_one_ancestral_step_moves_its_mean_by_scale_times_variance_times_gradient():
    scheduler = DDPMScheduler(num_train_timesteps=100, variance_type="fixed_small")
    scheduler.set_timesteps(100)
    torch.manual_seed(3)
    x_t, eps, grad = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    t = scheduler.timesteps[40]

    def step():
        return scheduler.step(eps, t, x_t, generator=torch.Generator().manual_seed(7)).prev_sample

    variance = scheduler._get_variance(t)  # the step's posterior variance Sigma (diffusers' own value)
    shifted = mean_shift(step(), grad, variance, 3.0)
    assert torch.allclose(shifted - step(), 3.0 * variance * grad, atol=1e-6)
