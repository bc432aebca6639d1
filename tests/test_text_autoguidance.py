"""Autoguidance on the text-to-image pipeline: a guide UNet given the same prompt, D = guide + w (main - guide),
its network evaluations counted, CFG on top, the default from the config, save/load, and guides that do not fit."""

import pytest
import torch
from condiff.pipelines import LatentCFGPipeline
from conftest import TEXT_WIDTH as WIDTH
from test_latent_cfg_pipeline import run, tiny_latent_pipeline

from condiff.models import latent_text_unet


def guide(seed: int = 1, width: int = WIDTH, size: int = 4):
    torch.manual_seed(seed)
    return latent_text_unet(2, size, width, (8, 16), attention_head_dim=2, norm_num_groups=4).eval()  # smaller


def rebuilt(pipe, **config) -> LatentCFGPipeline:
    """`pipe`'s components in a new pipeline with `config` (and its tiny text encoder's name)."""
    components = pipe.components | {k: config.pop(k) for k in ("guide_unet",) if k in config}
    name = pipe.config.text_encoder_name_or_path
    new = LatentCFGPipeline(**components, text_encoder_name_or_path=name, max_text_length=8, **config)
    new.set_progress_bar_config(disable=True)
    return new


@pytest.fixture
def pipe(encoder_folder):
    return tiny_latent_pipeline(encoder_folder)


def test_a_guide_equal_to_the_main_model_leaves_the_prompt_alone_and_its_rows_are_counted(pipe):
    cond = run(pipe, prompt="a seven", guidance_scale=1.0)
    pipe.guide_unet = pipe.unet
    out = pipe("a seven", num_inference_steps=3, guidance="autoguidance", guidance_scale=4.0, output_type="latent",
               generator=torch.Generator().manual_seed(0))  # fmt: skip
    torch.testing.assert_close(out.images, cond)  # main + (w - 1)(main - guide) = main
    assert out.nfe_per_image == 6.0  # 3 steps x (main, guide)


def test_autoguidance_extrapolates_away_from_the_guide_given_the_prompt(pipe):
    pipe.guide_unet = guide()
    seen = []
    hook = pipe.guide_unet.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["encoder_hidden_states"]), with_kwargs=True
    )
    try:
        auto = run(pipe, prompt="a seven", negative_prompt="thin", guidance="autoguidance", guidance_scale=3.0)
    finally:
        hook.remove()
    prompt = pipe.encode_prompt(["a seven"])[0][0]
    assert len(seen) == 3 and all(torch.equal(s[0], prompt) for s in seen)  # the prompt, never the negative one
    assert not torch.allclose(auto, run(pipe, prompt="a seven", guidance_scale=1.0))
    with_cfg = rebuilt(pipe, autoguidance_cfg_scale=2.0, default_guidance="autoguidance")
    out = with_cfg("a seven", num_inference_steps=3, guidance_scale=3.0, output_type="latent")
    assert out.nfe_per_image == 9.0  # the default guidance is autoguidance, with CFG's null branch on top


def test_the_guide_and_the_default_guidance_survive_save_and_load(pipe, tmp_path):
    pipe = rebuilt(pipe, guide_unet=guide(), default_guidance="autoguidance")
    pipe.save_pretrained(tmp_path)
    loaded = LatentCFGPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.default_guidance == "autoguidance" and loaded.guide_unet is not None
    torch.testing.assert_close(run(loaded, prompt="a seven"), run(pipe, prompt="a seven"))


@pytest.mark.parametrize("bad, match", [
    (dict(width=WIDTH * 2), "cross_attention_dim"),
    (dict(size=8), "makes"),
])  # fmt: skip
def test_a_guide_that_does_not_fit_is_refused_when_built_and_when_swapped_in(pipe, bad, match):
    with pytest.raises(ValueError, match=match):
        rebuilt(pipe, guide_unet=guide(**bad))
    pipe.guide_unet = guide(**bad)
    with pytest.raises(ValueError, match=match):
        run(pipe, prompt="a seven", guidance="autoguidance")


def test_autoguidance_without_a_guide_and_a_bad_default_are_refused(pipe):
    with pytest.raises(ValueError, match="needs the pipeline component 'guide_unet'"):
        run(pipe, prompt="a seven", guidance="autoguidance")
    with pytest.raises(ValueError, match="default_guidance must be one of"):
        rebuilt(pipe, default_guidance="auto")
