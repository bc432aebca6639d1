"""Issue 19 item 2: the classifier-guided default the README and card describe (DDPM with the mean shift) is the one
that runs: the shipped folder, `scheduler_for("ddpm")` (`--scheduler ddpm`) and the assembler's `--sampler ddpm`
all give a DDPM scheduler whose fixed variance the mean shift can use."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from condiff.pipelines import ClassifierGuidedPipeline
from condiff.pipelines.guidance import ancestral_variance, supports_mean_shift
from condiff.pipelines.noise_aware_classifier import NoiseAwareClassifier
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler

from condiff import shipped_model_path
from condiff.assemble import main as assemble_main
from condiff.evaluation.guidance_methods import Setting, run_settings
from condiff.models import class_conditional_unet, default_sampling_scheduler, scheduler_for, training_scheduler

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # as `python benchmarks/<script>.py`
import classifier_guidance as cg_benchmark  # noqa: E402


def test_shipped_default_is_the_mean_shift_and_runs():
    """Since issue 22 the shipped UNet learned its variance: the default mean shift uses that Sigma, and the
    classifier is the product of two noise-aware classifiers."""
    folder = shipped_model_path("classifier-guided")
    assert json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["variance_type"] == "learned_range"
    pipe = ClassifierGuidedPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.scheduler).__name__ == "DDPMScheduler" and pipe.unet.config.out_channels == 2
    assert type(pipe.classifier).__name__ == "NoiseAwareClassifierEnsemble" and len(pipe.classifier.members) == 2
    assert (pipe.config.default_num_inference_steps, pipe.config.default_classifier_scale) == (50, 4.9)
    assert pipe.default_guidance_method() == "mean_shift"
    assert pipe.check_guidance_method("mean_shift") == "mean_shift"  # `--guidance-method mean_shift` is accepted
    card = (folder / "README.md").read_text()
    assert "guidance method `mean_shift`" in card and "guidance method `score`" not in card

    def sample(**kwargs) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return pipe(label=[3, 7], num_inference_steps=4, generator=g, output_type="pt", **kwargs).images

    default, mean_shift, score = sample(), sample(guidance_method="mean_shift"), sample(guidance_method="score")
    assert torch.isfinite(default).all() and default.shape == (2, 1, 28, 28)
    torch.testing.assert_close(default, mean_shift, atol=0, rtol=0)
    assert (default - score).abs().max() > 1e-3  # the default is not the score correction


def test_scheduler_for_ddpm_writes_a_fixed_variance_the_mean_shift_supports(tmp_path):
    default_sampling_scheduler(training_scheduler()).save_config(tmp_path / "dpm")
    dpm = DPMSolverMultistepScheduler.from_pretrained(tmp_path / "dpm")  # a saved model's: variance_type None
    assert dpm.config.variance_type is None
    ddpm = scheduler_for("ddpm", dpm.config)
    assert ddpm.config.variance_type == "fixed_small" and supports_mean_shift(ddpm)
    ddpm.save_config(tmp_path / "ddpm")
    assert json.loads((tmp_path / "ddpm" / "scheduler_config.json").read_text())["variance_type"] == "fixed_small"
    # a variance the config names is kept, and other samplers are unchanged
    assert (
        scheduler_for("ddpm", DDPMScheduler(variance_type="fixed_large").config).config.variance_type == "fixed_large"
    )
    assert not supports_mean_shift(scheduler_for("ddim", ddpm.config))
    assert scheduler_for("dpm++2m", ddpm.config).config.algorithm_type == "dpmsolver++"


def test_ddpm_without_variance_type_is_treated_as_diffusers_steps_it():
    """diffusers' DDPMScheduler with variance_type None samples with the posterior ("fixed_small") variance."""
    unset = DDPMScheduler(num_train_timesteps=100, variance_type=None)
    fixed = DDPMScheduler(num_train_timesteps=100, variance_type="fixed_small")
    assert unset.config.variance_type is None and supports_mean_shift(unset)
    x, eps = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1)), torch.randn(2, 1, 4, 4)
    for s in (unset, fixed):
        s.set_timesteps(10)
    t = unset.timesteps[3]
    torch.testing.assert_close(ancestral_variance(unset, t), ancestral_variance(fixed, t))
    steps = [s.step(eps, t, x, generator=torch.Generator().manual_seed(2)).prev_sample for s in (unset, fixed)]
    torch.testing.assert_close(steps[0], steps[1])
    assert not supports_mean_shift(DDIMScheduler.from_config(unset.config))


@pytest.fixture(scope="module")
def parts_with_dpm_scheduler(tmp_path_factory):
    """A tiny unconditional model saved with DPM-Solver++ (as condiff's training exports are) and a classifier."""
    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    unet = class_conditional_unet(None, sample_size=28, channels=1, block_out_channels=(8, 16), norm_num_groups=4)
    scheduler = default_sampling_scheduler(training_scheduler(num_train_timesteps=100))
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(root / "unet-model")
    NoiseAwareClassifier(block_out_channels=(8, 16), norm_num_groups=4, num_train_timesteps=100).save_pretrained(
        root / "classifier"
    )
    return root


def test_assembler_sampler_ddpm_writes_a_mean_shift_folder(parts_with_dpm_scheduler, tmp_path):
    parts, out = parts_with_dpm_scheduler, tmp_path / "cg"
    argv = ["--diffusion_model", str(parts / "unet-model"), "--classifier", str(parts / "classifier")]
    assemble_main([*argv, "--output_dir", str(out), "--sampler", "ddpm", "--num_inference_steps", "4"])
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["variance_type"] == "fixed_small"
    pipe = ClassifierGuidedPipeline.from_pretrained(out)
    assert type(pipe.scheduler).__name__ == "DDPMScheduler" and pipe.default_guidance_method() == "mean_shift"
    assert "guidance method `mean_shift`" in (out / "README.md").read_text()
    pipe.set_progress_bar_config(disable=True)
    settings = [
        Setting("ddpm", "g", "cg", "ddpm", 2, {"classifier_scale": 1.0}),
        *cg_benchmark.sweep_settings(
            {"ddpm": [1.0], "ddim": [1.0], "dpm++2m": []}, {"ddpm": 2, "ddim": 2, "dpm++2m": 2}
        ),
    ]
    rows = run_settings({"cg": pipe}, settings, num_per_class=1, log=lambda line: None)["rows"]
    assert [r["guidance_method"] for r in rows] == ["mean_shift", "mean_shift", "score"]  # as run, not as labelled
