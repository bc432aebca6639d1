"""diffusers' own CFG cut-off callback (`SDCFGCutoffCallback`) on condiff's three pipelines: after the cut-off step
the run is the conditional prediction alone, exactly as a guidance interval that ends there (the reference runs no
callback at all); the "prompt_embeds" callback tensor is [negative; positive], and handed-back embeddings are used."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.callbacks import SDCFGCutoffCallback
from test_classifier_guided_pipeline import make_pipe as classifier_guided_pipe
from test_latent_cfg_pipeline import tiny_latent_pipeline

from condiff import ClassConditionalDDPMPipeline

STEPS = 4


def interval_after(pipe, step: int) -> tuple[float, float]:
    """The guidance interval that guides steps 0..step and no later one (timesteps fall along the run)."""
    pipe.scheduler.set_timesteps(STEPS)
    return float(pipe.scheduler.timesteps[step]) / pipe.scheduler.config.num_train_timesteps, 1.0


def run(pipe, **kwargs):
    defaults = {"num_inference_steps": STEPS, "output_type": "latent", "generator": torch.Generator().manual_seed(0)}
    return pipe(**defaults | kwargs_of(pipe) | kwargs)


def kwargs_of(pipe) -> dict:
    return {"prompt": ["a seven", "a thick one"]} if hasattr(pipe, "encode_prompt") else {"label": [0, 2]}


def test_class_pipeline_cutoff_equals_conditional_after_the_cutoff_step(pipe):
    spy = []
    pipe.unet.register_forward_pre_hook(lambda m, a, kw: spy.append(kw["class_labels"].tolist()), with_kwargs=True)
    cutoff = SDCFGCutoffCallback(cutoff_step_ratio=0.5)  # int(4 * 0.5) = step 2
    out = run(pipe, guidance_scale=3.0, callback_on_step_end=cutoff)
    assert spy == [[0, 2, 3, 3]] * 3 + [[0, 2]]  # guided through step 2, then the conditional branch alone
    assert pipe.guidance_scale == 1.0 and not pipe.do_classifier_free_guidance  # "off" is stored as w = 1
    reference = run(pipe, guidance_scale=3.0, guidance_interval=interval_after(pipe, 2))
    assert torch.equal(out.images, reference.images) and out.nfe_per_image == reference.nfe_per_image == 7
    unconditional = run(pipe, guidance_scale=0.0)
    assert not torch.allclose(out.images, unconditional.images)


def test_class_pipeline_prompt_embeds_are_the_class_ids_and_can_be_replaced(pipe):
    seen = []

    def relabel(p, i, t, tensors):
        seen.append(tensors["prompt_embeds"].tolist())
        return {"prompt_embeds": torch.tensor([1, 1])} if i == 0 else tensors  # N rows: the conditional half

    spy = []
    pipe.unet.register_forward_pre_hook(lambda m, a, kw: spy.append(kw["class_labels"].tolist()), with_kwargs=True)
    run(pipe, guidance_scale=3.0, callback_on_step_end=relabel, callback_on_step_end_tensor_inputs=["prompt_embeds"])
    assert seen[0] == [3, 3, 0, 2] and seen[1] == [3, 3, 1, 1]  # [null; labels]
    assert spy[0] == [0, 2, 3, 3] and spy[1:] == [[1, 1, 3, 3]] * 3
    with pytest.raises(ValueError, match="returned prompt_embeds with 3 rows; expected 4"):
        run(pipe, guidance_scale=3.0, callback_on_step_end=lambda p, i, t, x: {"prompt_embeds": torch.zeros(3)})


def test_guidance_embedded_student_cutoff_runs_at_w_1(pipe):
    """A guidance-distilled UNet takes w as an input: after the cut-off it is given w = 1 (conditional)."""
    from condiff.models import class_conditional_condition_unet

    torch.manual_seed(0)
    unet = class_conditional_condition_unet(
        3, sample_size=8, channels=1, block_out_channels=(8, 16), norm_num_groups=4, guidance_embedding_dim=8
    ).eval()
    student = ClassConditionalDDPMPipeline(unet, pipe.scheduler)
    student.set_progress_bar_config(disable=True)
    out = run(student, guidance_scale=3.0, callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=0.25))
    reference = run(student, guidance_scale=3.0, guidance_interval=interval_after(student, 1))
    assert torch.equal(out.images, reference.images)


@pytest.mark.parametrize("prompts", [["a seven"], ["a seven", "a thick one"]])
def test_latent_pipeline_cutoff_equals_conditional_after_the_cutoff_step(encoder_folder, prompts):
    """SDCFGCutoffCallback hands back `prompt_embeds[-1:]`; for one prompt that is the positive row, for several the
    last row of the positive half: either way the pipeline keeps every image's own prompt."""
    pipe = tiny_latent_pipeline(encoder_folder)
    cutoff = SDCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=1)
    out = run(pipe, prompt=prompts, negative_prompt="thin", guidance_scale=4.0, callback_on_step_end=cutoff)
    reference = run(
        pipe, prompt=prompts, negative_prompt="thin", guidance_scale=4.0, guidance_interval=interval_after(pipe, 1)
    )
    assert torch.equal(out.images, reference.images) and out.nfe_per_image == 2 + 2 + 1 + 1


def test_latent_pipeline_prompt_embeds_are_negative_then_positive_and_are_used(encoder_folder):
    pipe = tiny_latent_pipeline(encoder_folder)
    (positive, negative), (other, _) = pipe.encode_prompt("a seven", negative_prompt="thin"), pipe.encode_prompt("b")
    seen, given = [], []
    pipe.unet.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["encoder_hidden_states"]), with_kwargs=True)

    def swap(p, i, t, tensors):
        given.append(tensors["prompt_embeds"])
        return {"prompt_embeds": torch.cat([tensors["negative_prompt_embeds"], other])} if i == 0 else tensors

    inputs = ["prompt_embeds", "negative_prompt_embeds"]
    run(pipe, prompt="a seven", negative_prompt="thin", guidance_scale=3.0, callback_on_step_end=swap,
        callback_on_step_end_tensor_inputs=inputs)  # fmt: skip
    assert torch.equal(given[0], torch.cat([negative, positive]))  # as Stable Diffusion passes them under CFG
    assert torch.equal(seen[0], torch.cat([positive, negative]))  # the UNet's batch: conditional rows first
    assert all(torch.equal(s, torch.cat([other, negative])) for s in seen[1:])


def test_classifier_guided_cutoff_turns_cfg_off_and_keeps_classifier_guidance():
    pipe = classifier_guided_pipe(
        DDPMScheduler(num_train_timesteps=50, beta_schedule="squaredcos_cap_v2"), num_classes=3
    )
    cutoff = SDCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=1)
    out = run(pipe, guidance_scale=3.0, classifier_scale=0.0, callback_on_step_end=cutoff)
    reference = run(pipe, guidance_scale=3.0, classifier_scale=0.0, guidance_interval=interval_after(pipe, 1))
    assert torch.equal(out.images, reference.images) and out.nfe_per_image == 6
    unconditional_unet = classifier_guided_pipe(DDPMScheduler(num_train_timesteps=50))
    plain = run(unconditional_unet, classifier_scale=2.0)
    assert torch.equal(run(unconditional_unet, classifier_scale=2.0, callback_on_step_end=cutoff).images, plain.images)
