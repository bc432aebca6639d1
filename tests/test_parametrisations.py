"""Training side of learned variance and the mean and score targets: the targets and their inverses against diffusers'
own DDPM arithmetic, the hybrid loss (the mean's gradient stopped inside L_vlb), and the task flags."""

from __future__ import annotations

import json

import pytest
import torch
from condiff.pipelines.variance import (
    epsilon_from_target,
    has_learned_variance,
    learned_log_variance,
    posterior_mean,
    split_variance,
    target_from_epsilon,
)
from diffusers import DDPMScheduler

from condiff.diffusion import denoising_loss, diffusion_target, hybrid_vlb, noisy_batch
from condiff.models import training_scheduler
from condiff.train import run

T = 50


def schedule(prediction_type: str = "epsilon", **kw) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type, **kw
    )


def test_posterior_mean_is_the_mean_diffusers_ddpm_samples_around():
    sched = schedule("sample", clip_sample=False, variance_type="fixed_small")
    g = torch.Generator().manual_seed(0)
    x0, x_t = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)
    for t in (1, 17, T - 1):
        step = sched.step(x0, t, x_t, generator=torch.Generator().manual_seed(5)).prev_sample
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
        expected = step - sched._get_variance(t) ** 0.5 * noise
        torch.testing.assert_close(posterior_mean(sched.alphas_cumprod, x0, x_t, t), expected, rtol=1e-4, atol=1e-5)


def test_learned_log_variance_is_diffusers_learned_range():
    sched = schedule(variance_type="learned_range")
    v = torch.rand(2, 1, 3, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1
    for t in (1, 10, T - 1):
        torch.testing.assert_close(learned_log_variance(v, sched.alphas_cumprod, t), sched._get_variance(t, v))


@pytest.mark.parametrize("kind", ["mean", "score"])
def test_mean_and_score_targets_invert_to_epsilon(kind):
    sched = schedule()
    g = torch.Generator().manual_seed(2)
    x_t, eps = torch.randn(4, 1, 5, 5, generator=g), torch.randn(4, 1, 5, 5, generator=g)
    t = torch.tensor([0, 1, 25, T - 1])
    target = target_from_epsilon(kind, sched.alphas_cumprod, eps, x_t, t)
    torch.testing.assert_close(
        epsilon_from_target(kind, sched.alphas_cumprod, target, x_t, t), eps, rtol=1e-3, atol=1e-3
    )


def test_targets_follow_their_definitions():
    sched = schedule()
    x0 = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(3)) * 2 - 1
    noisy, noise, t = noisy_batch(sched, x0, torch.Generator().manual_seed(4))
    abar = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    score = diffusion_target(sched, x0, noise, t, "score", noisy)
    torch.testing.assert_close(score, -noise / (1 - abar).sqrt())
    mean = diffusion_target(sched, x0, noise, t, "mean", noisy)
    torch.testing.assert_close(mean, posterior_mean(sched.alphas_cumprod, x0, noisy, t), rtol=1e-4, atol=1e-5)
    assert torch.equal(diffusion_target(sched, x0, noise, t), noise)  # the scheduler's own type when no target


class TwoHeads(torch.nn.Module):
    """A stand-in UNet: prediction a * x_t, variance values tanh(b) everywhere (2 output channels for 1)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Parameter(torch.tensor(0.3)), torch.nn.Parameter(torch.tensor(0.2))

    def forward(self, x, t, **kw):
        out = torch.cat([self.a * x, torch.tanh(self.b).expand_as(x)], dim=1)
        return type("Out", (), {"sample": out})()


def grads(vlb_weight: float) -> tuple[float, float, float]:
    net, sched = TwoHeads(), schedule("epsilon", variance_type="learned_range")
    x0 = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(6)) * 2 - 1
    loss = denoising_loss(net, sched, x0, torch.Generator().manual_seed(7), vlb_weight=vlb_weight)
    loss.backward()
    return loss.item(), net.a.grad.item(), 0.0 if net.b.grad is None else net.b.grad.item()


def test_hybrid_loss_trains_the_variance_only_through_l_vlb():
    simple, grad_a, grad_b = grads(0.0)
    hybrid, grad_a_hybrid, grad_b_hybrid = grads(0.001)
    assert grad_b == 0 and grad_b_hybrid != 0  # the variance learns from L_vlb alone
    assert grad_a_hybrid == pytest.approx(grad_a)  # and L_vlb does not move the mean (stop-gradient)
    net, sched = TwoHeads(), schedule("epsilon", variance_type="learned_range")
    x0 = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(6)) * 2 - 1
    noisy, noise, t = noisy_batch(sched, x0, torch.Generator().manual_seed(7))
    pred, v = split_variance(net(noisy, t).sample, 1)
    vlb = hybrid_vlb(sched, x0, noisy, t, pred.detach(), v)
    assert hybrid == pytest.approx(simple + 0.001 * T * vlb.item(), rel=1e-5)


def test_hybrid_vlb_is_smallest_at_the_true_posterior_variance():
    """L_vlb's variance term is minimised by v that recovers beta~ when the mean is exact (v = -1)."""
    sched = schedule("epsilon", variance_type="learned_range")
    x0 = torch.rand(64, 1, 4, 4, generator=torch.Generator().manual_seed(8)) * 2 - 1
    noisy, noise, t = noisy_batch(sched, x0, torch.Generator().manual_seed(9))
    t = t.clamp(min=1)
    noisy = sched.add_noise(x0, noise, t)
    values = {v: hybrid_vlb(sched, x0, noisy, t, noise, torch.full_like(x0, v)).item() for v in (-1.0, 0.0, 1.0)}
    assert values[-1.0] < values[0.0] < values[1.0]
    assert values[-1.0] == pytest.approx(0.0, abs=1e-4)


TINY = [
    "--resolution", "8", "--block_out_channels", "8", "16", "--norm_num_groups", "4", "--train_batch_size", "8",
    "--max_train_samples", "32", "--validation_inference_steps", "2", "--report_to", "none", "--max_train_steps", "2",
    "--checkpointing_steps", "1000", "--validation_steps", "1000", "--num_train_timesteps", "20",
]  # fmt: skip


def test_unconditional_task_learns_its_variance_and_ships_ddpm_with_it(tmp_path):
    out = run(["unconditional", "--output_dir", str(tmp_path), *TINY, "--variance_type", "learned_range",
               "--validation_images", "1"])  # fmt: skip
    unet_config = json.loads((out / "unet" / "config.json").read_text())
    scheduler = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert (unet_config["in_channels"], unet_config["out_channels"]) == (1, 2)
    assert has_learned_variance(type("C", (), unet_config))
    assert scheduler["_class_name"] == "DDPMScheduler" and scheduler["variance_type"] == "learned_range"
    assert json.loads((out / "training_args.json").read_text())["vlb_weight"] == 0.001


def test_the_flag_choices_are_the_pipelines_targets():
    from condiff.pipelines import variance

    from condiff.options import NETWORK_TARGETS

    assert NETWORK_TARGETS == variance.NETWORK_TARGETS


def test_training_scheduler_keeps_epsilon_for_the_mean_target():
    sched = training_scheduler("squaredcos_cap_v2", "epsilon", 20, variance_type="learned_range")
    assert sched.config.variance_type == "learned_range" and sched.variance_type == "learned_range"


@pytest.mark.parametrize(
    "task, extra, message",
    [
        ("unconditional", ["--prediction_type", "mean"], "--prediction_type mean is for the cfg task"),
        ("cfg", ["--vlb_weight", "-1"], "vlb_weight"),
        ("cfg", ["--variance_type", "learned"], "--variance_type"),
        ("cfg", ["--prediction_type", "velocity"], "--prediction_type"),
    ],
)
def test_bad_parametrisation_flags_are_refused_by_name(tmp_path, task, extra, message, capsys):
    with pytest.raises((ValueError, SystemExit)) as err:
        run([task, "--output_dir", str(tmp_path / "run"), *TINY, *extra])
    text = str(err.value) + capsys.readouterr().err
    assert message in text
    assert not (tmp_path / "run" / "unet").exists()
