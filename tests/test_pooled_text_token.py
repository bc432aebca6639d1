"""The pooled text token: one more cross-attention token, the mean of the encoder's hidden states over the prompt's
own tokens, in the encoding, the pipeline (its config, prompt_embeds checks) and the latent task."""

import pytest
import torch
from condiff.pipelines import LatentCFGPipeline
from condiff.pipelines.text_encoding import encode_text, load_text_encoder
from test_latent_cfg_pipeline import tiny_latent_pipeline
from test_latent_training import LATENT

from condiff import shipped_model_path
from condiff.train import run

PROMPTS = ["a seven", "the digit 7, thick and upright", ""]


def test_the_pooled_token_is_the_mean_over_the_prompt_tokens(encoder_folder):
    encoder, tokenizer = load_text_encoder(encoder_folder)
    plain = encode_text(encoder, tokenizer, PROMPTS, 12)
    pooled = encode_text(encoder, tokenizer, PROMPTS, 12, pooled_token=True)
    assert plain.shape[1] == 12 and pooled.shape == (3, 13, plain.shape[2])
    torch.testing.assert_close(pooled[:, :12], plain)
    for row, prompt in enumerate(PROMPTS):
        n = len(tokenizer(prompt)["input_ids"])  # [CLS] ... [SEP], no padding
        torch.testing.assert_close(pooled[row, 12], plain[row, :n].mean(0), atol=1e-5, rtol=1e-5)
    # padding is excluded: the pooled token does not depend on the padded length
    longer = encode_text(encoder, tokenizer, PROMPTS, 20, pooled_token=True)
    torch.testing.assert_close(longer[:, 20], pooled[:, 12], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(pooled[0, 12], pooled[1, 12])


def _pooled_pipeline(encoder_folder) -> LatentCFGPipeline:
    pipe = tiny_latent_pipeline(encoder_folder)
    pipe.register_to_config(pooled_text_token=True)
    return pipe


def test_the_pipeline_encodes_and_checks_the_extra_token(encoder_folder):
    pipe = _pooled_pipeline(encoder_folder)
    cond, null = pipe.encode_prompt(["a seven", "a thick 3"])
    assert cond.shape[1] == null.shape[1] == pipe.text_tokens == 9  # max_text_length 8, plus one
    seen = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["encoder_hidden_states"]), with_kwargs=True
    )
    try:
        kwargs = {"num_inference_steps": 2, "output_type": "latent", "guidance_scale": 3.0}
        by_prompt = pipe(["a seven", "a thick 3"], generator=torch.Generator().manual_seed(0), **kwargs).images
        by_embeds = pipe(prompt_embeds=cond, generator=torch.Generator().manual_seed(0), **kwargs).images
    finally:
        hook.remove()
    assert seen[0].shape[1] == 9
    torch.testing.assert_close(by_prompt, by_embeds)
    with pytest.raises(ValueError, match=r"prompt_embeds must have shape \(N >= 1, 9, "):
        pipe(prompt_embeds=cond[:, :8], num_inference_steps=1)


def test_the_config_entry_survives_save_and_load(encoder_folder, tmp_path):
    pipe = _pooled_pipeline(encoder_folder)
    pipe.save_pretrained(tmp_path / "p")
    loaded = LatentCFGPipeline.from_pretrained(tmp_path / "p")
    assert loaded.config.pooled_text_token is True and loaded.text_tokens == 9
    assert tiny_latent_pipeline(encoder_folder).text_tokens == 8  # off by default: earlier folders load unchanged


def test_the_latent_task_trains_and_exports_with_the_pooled_token(tmp_path, encoder_folder):
    vae = str(shipped_model_path("latent") / "vae")
    out = run(["latent_cfg", "--output_dir", str(tmp_path / "l"), "--vae", vae, "--text_encoder", encoder_folder,
               *LATENT, "--max_train_steps", "2", "--max_train_samples", "64", "--train_batch_size", "16",
               "--pooled_text_token"])  # fmt: skip
    pipe = LatentCFGPipeline.from_pretrained(out)
    assert pipe.config.pooled_text_token is True and pipe.text_tokens == 13
    pipe.set_progress_bar_config(disable=True)
    images = pipe("a seven", num_inference_steps=2, output_type="pt").images
    assert images.shape == (1, 1, 28, 28) and torch.isfinite(images).all()
