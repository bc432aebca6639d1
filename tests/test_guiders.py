"""Guidance as objects (pipelines/guiders.py): branch selection, the combinations, autoguidance with a guiding UNet,
diffusers' guiders through the shared loop, and bad input refused before any sampling."""

import re

import pytest
import torch
from condiff.pipelines.guiders import Autoguidance, ClassifierFreeGuidance, Guidance, Step
from conftest import tiny_pipeline, tiny_unet
from diffusers import DDIMScheduler

from condiff import ClassConditionalDDPMPipeline
from condiff.hub import PIPELINE_CLASSES, pipeline_code


def step_at(t: int, scale: float, scheduler=None) -> Step:
    scheduler = scheduler or DDIMScheduler(num_train_timesteps=1000)
    x = torch.zeros(2, 1, 4, 4)
    return Step(0, torch.tensor(t), 10, x, x, scheduler, guidance_scale=scale)


@pytest.mark.parametrize(
    "scale, t, expected",
    [(0.0, 500, ("uncond",)), (1.0, 500, ("cond",)), (3.0, 500, ("cond", "uncond")), (3.0, 900, ("cond",))],
)
def test_cfg_asks_only_for_the_branches_a_step_needs(scale, t, expected):
    assert ClassifierFreeGuidance((0.2, 0.6)).branches(step_at(t, scale)) == expected


def test_autoguidance_combines_guide_main_and_optional_cfg():
    main, guide, null = torch.randn(3, 2, 1, 4, 4)
    step = step_at(500, 2.5)
    plain = Autoguidance()
    assert plain.branches(step) == ("cond", "guide")
    assert torch.allclose(plain.combine(step, {"cond": main, "guide": guide}), guide + 2.5 * (main - guide))
    with_cfg = Autoguidance(cfg_scale=3.0, cfg_interval=(0.4, 0.6))
    assert with_cfg.branches(step) == ("cond", "guide", "uncond")
    expected = main + 1.5 * (main - guide) + 2.0 * (main - null)
    assert torch.allclose(with_cfg.combine(step, {"cond": main, "guide": guide, "uncond": null}), expected)
    assert with_cfg.branches(step_at(800, 2.5)) == ("cond", "guide")  # outside the CFG interval
    assert Autoguidance(interval=(0.0, 0.3)).branches(step) == ("cond",)  # outside its own interval: w = 1


def guided_pipe(seed: int = 7) -> ClassConditionalDDPMPipeline:
    pipe = tiny_pipeline()
    pipe.register_modules(guide_unet=tiny_unet(seed=seed).eval())
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return pipe


def run(pipe, **kwargs):
    kwargs = {"output_type": "pt", "num_inference_steps": 4, **kwargs}
    out = pipe(label=[0, 2], generator=torch.Generator().manual_seed(0), **kwargs)
    return out.images, out.nfe_per_image


def test_autoguidance_through_the_pipeline_equals_a_hand_written_loop():
    pipe = guided_pipe()
    images, nfe = run(pipe, guidance="autoguidance", guidance_scale=2.0, output_type="latent")
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(4)
    x = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 2])
    with torch.no_grad():
        for t in scheduler.timesteps:
            main = pipe.unet(x, t, class_labels=labels).sample
            guide = pipe.guide_unet(x, t, class_labels=labels).sample
            x = scheduler.step(guide + 2.0 * (main - guide), t, x, use_clipped_model_output=True).prev_sample
    assert torch.allclose(images, x, atol=1e-5)
    assert nfe == 8  # 4 steps x (main + guide), a guiding model's evaluation counted as one


def test_autoguidance_with_an_identical_guide_is_the_conditional_model_and_w_1_runs_one_branch():
    pipe = guided_pipe()
    pipe.guide_unet.load_state_dict(pipe.unet.state_dict())
    guided, _ = run(pipe, guidance="autoguidance", guidance_scale=4.0)
    conditional, nfe = run(pipe, guidance_scale=1.0)
    assert torch.allclose(guided, conditional, atol=1e-5)
    _, nfe_w1 = run(pipe, guidance="autoguidance", guidance_scale=1.0)
    assert nfe == nfe_w1 == 4


def test_a_saved_guide_loads_and_autoguides(tmp_path):
    pipe = guided_pipe()
    pipe.save_pretrained(tmp_path)
    loaded = ClassConditionalDDPMPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.guide_unet is not None
    assert torch.allclose(run(loaded, guidance="autoguidance")[0], run(pipe, guidance="autoguidance")[0], atol=1e-6)


def test_default_guidance_from_the_config():
    pipe = guided_pipe()
    pipe.register_to_config(default_guidance="autoguidance", autoguidance_cfg_scale=2.0)
    images, nfe = run(pipe, guidance_scale=2.0)
    explicit, _ = run(pipe, guidance=Autoguidance(cfg_scale=2.0), guidance_scale=2.0)
    assert torch.equal(images, explicit) and nfe == 12  # cond + uncond + guide on every step


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"guidance": "auto"}, "guidance must be one of"),
        ({"guidance": 3}, "guidance must be one of"),
    ],
)
def test_unknown_guidance_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        run(tiny_pipeline(), **kwargs)


def test_autoguidance_without_a_guide_names_the_missing_component():
    with pytest.raises(ValueError, match="guide_unet"):
        run(tiny_pipeline(), guidance="autoguidance")


@pytest.mark.parametrize(
    "guide, match",
    [
        (lambda: tiny_unet(num_classes=4), "num_class_embeds"),
        (lambda: _unet_with(channels=3), "in_channels"),
        (lambda: _unet_with(sample_size=16), "samples"),
    ],
)
def test_a_guide_that_does_not_fit_the_unet_is_refused(guide, match):
    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match=match):
        ClassConditionalDDPMPipeline(unet=pipe.unet, scheduler=pipe.scheduler, guide_unet=guide())
    pipe.register_modules(guide_unet=guide())  # swapped in after construction: refused at the call
    with pytest.raises(ValueError, match=match):
        run(pipe, guidance="autoguidance")


def _unet_with(**overrides):
    from condiff.models import class_conditional_unet

    kwargs = dict(sample_size=8, channels=1, block_out_channels=(8, 16), norm_num_groups=4)
    return class_conditional_unet(3, **{**kwargs, **overrides}).eval()


def test_a_condiff_guidance_object_can_be_passed():
    pipe = tiny_pipeline()
    conditional, nfe = run(pipe, guidance=Guidance(), guidance_scale=5.0)  # the conditional branch alone
    assert torch.equal(conditional, run(pipe, guidance_scale=1.0)[0]) and nfe == 4


# ------------------------------------------------------------------------------------------------ diffusers' guiders
guiders = pytest.importorskip("diffusers.guiders")


def test_diffusers_cfg_guider_matches_condiff_cfg_and_counts_evaluations():
    pipe = guided_pipe()
    ours, nfe = run(pipe, guidance_scale=3.0)
    theirs, nfe_theirs = run(pipe, guidance=guiders.ClassifierFreeGuidance(guidance_scale=3.0))
    assert torch.allclose(ours, theirs, atol=1e-5) and nfe == nfe_theirs == 8
    assert pipe.guidance_scale == 3.0
    _, nfe_half = run(pipe, guidance=guiders.ClassifierFreeGuidance(guidance_scale=3.0, start=0.0, stop=0.5))
    assert nfe_half == 6  # two of four steps guided


@pytest.mark.parametrize(
    "make",
    [
        lambda: guiders.AdaptiveProjectedGuidance(guidance_scale=3.0, eta=0.0),
        lambda: guiders.ClassifierFreeZeroStarGuidance(guidance_scale=3.0),
    ],
)
def test_combining_guiders_run_and_differ_from_plain_cfg(make):
    pipe = guided_pipe()
    images, nfe = run(pipe, guidance=make())
    cfg, _ = run(pipe, guidance_scale=make().guidance_scale)
    assert torch.isfinite(images).all() and nfe == 8 and not torch.allclose(images, cfg, atol=1e-4)


def test_a_guider_with_a_call_scale_or_interval_is_refused():
    pipe = tiny_pipeline()
    for kwargs in ({"guidance_scale": 2.0}, {"guidance_interval": (0.2, 0.5)}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            run(pipe, guidance=guiders.ClassifierFreeGuidance(), **kwargs)


def test_an_attention_perturbing_guider_is_refused_when_its_layers_are_not_in_the_unet():
    guider = guiders.PerturbedAttentionGuidance(perturbed_guidance_layers=[0])  # fqn "auto": a DiT's blocks
    with pytest.raises(ValueError, match="fqn='auto'.*which this UNet does not have"):
        run(tiny_pipeline(), guidance=guider)


def test_cfg_scale_default_is_one_rule_across_pipelines():
    pipe = tiny_pipeline()
    assert pipe.default_guidance_scale == 3.0  # no configured default: 3
    pipe.register_to_config(default_guidance_scale=1.5)
    assert pipe.default_guidance_scale == 1.5
    pipe.register_to_config(default_guidance_scale=None, guidance_scale_range=[1.0, 2.0])
    assert pipe.default_guidance_scale == 2.0  # clamped into a trained range


@pytest.mark.parametrize("pipeline_file", sorted(PIPELINE_CLASSES))
def test_each_pipeline_file_imports_every_module_it_needs_itself(pipeline_file):
    """diffusers copies only the files a local custom-pipeline file imports directly, not their imports."""
    from pathlib import Path

    import condiff.pipelines as package

    source = (Path(package.__file__).parent / pipeline_file).read_text()
    direct = {f"{m}.py" for m in re.findall(r"^\s*from\s+\.(\S+)\s+import", source, re.M)}
    assert set(pipeline_code(pipeline_file)) - {pipeline_file} <= direct
