"""The diffusers pipeline conventions, checked the way diffusers' `PipelineTesterMixin` checks them: save/load, dtype
moves, batch consistency, scheduler swaps, `callback_on_step_end` changing guidance or interrupting mid-run,
`output_type="latent"`, `num_images_per_prompt`, and a caller's UNet left as it was given."""

from __future__ import annotations

import pytest
import torch
from condiff.pipelines import CondiffPipelineOutput
from conftest import tiny_unet
from diffusers import DDIMScheduler, DDPMScheduler, ImagePipelineOutput
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

from condiff import ClassConditionalDDPMPipeline

STEPS = 4


def sample(pipe, output_type: str = "latent", seed: int = 0, **kwargs):
    kwargs.setdefault("label", [0, 2])
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("generator", torch.Generator().manual_seed(seed))
    return pipe(output_type=output_type, **kwargs)


class UNetSpy:
    """Records the class labels of every UNet forward pass."""

    def __init__(self, pipe):
        self.calls: list[list[int]] = []
        real = pipe.unet.forward

        def forward(x, t, class_labels=None, **kw):
            self.calls.append(class_labels.tolist())
            return real(x, t, class_labels=class_labels, **kw)

        pipe.unet.forward = forward


# ------------------------------------------------------------------------------------ save, load, dtype, batches


def test_save_load_round_trip_is_exact(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    loaded = ClassConditionalDDPMPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(pipe.config)
    assert torch.equal(sample(loaded, guidance_scale=2.0).images, sample(pipe, guidance_scale=2.0).images)


def test_dtype_move_runs_in_that_dtype(pipe):
    reference = sample(pipe, output_type="pt").images
    pipe.to(torch.bfloat16)
    assert pipe.unet.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in pipe.unet.parameters())
    assert sample(pipe).images.dtype == torch.bfloat16
    low = sample(pipe, output_type="pt").images.float()
    assert (low - reference).abs().mean() < 0.05  # same images, up to bfloat16 rounding


def test_batch_equals_images_sampled_one_by_one(pipe):
    def generators(seeds):  # one per image: DDPM draws fresh noise at every step
        return [torch.Generator().manual_seed(s) for s in seeds]

    batch = sample(pipe, label=[0, 1, 2], generator=generators([5, 6, 7]), guidance_scale=2.5).images
    for i in range(3):
        single = sample(pipe, label=[i], generator=generators([5 + i]), guidance_scale=2.5).images
        torch.testing.assert_close(single, batch[i : i + 1], atol=1e-5, rtol=0)


def test_scheduler_swap_and_back_gives_the_same_images(pipe):
    first = sample(pipe, guidance_scale=2.0).images
    ddpm_config = pipe.scheduler.config
    pipe.scheduler = DDIMScheduler.from_config(ddpm_config)
    ddim = sample(pipe, guidance_scale=2.0).images
    pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    assert not torch.allclose(ddim, first)
    assert torch.equal(sample(pipe, guidance_scale=2.0).images, first)


# ------------------------------------------------------------------------------------ callbacks change the run


def switch_guidance_after(step: int, scale: float, seen: list | None = None):
    def callback(p, i, t, tensors):
        if seen is not None:
            seen.append((i, p.guidance_scale, p.num_timesteps, p.do_classifier_free_guidance))
        if i == step:
            p._guidance_scale = scale
        return tensors

    return callback


def test_callback_turns_guidance_off_mid_run(pipe):
    """`pipe._guidance_scale = 0.0` from a callback is diffusers' "guidance off": the conditional prediction alone
    from the next step (stored as 1.0), not the unconditional one; a call's guidance_scale=0 stays unconditional."""
    spy, seen = UNetSpy(pipe), []
    out = sample(pipe, guidance_scale=3.0, callback_on_step_end=switch_guidance_after(1, 0.0, seen))
    # Steps 0-1 run both branches (2 conditional rows + 2 null rows), steps 2-3 only the conditional branch.
    assert spy.calls == [[0, 2, 3, 3], [0, 2, 3, 3], [0, 2], [0, 2]]
    assert seen == [(0, 3.0, STEPS, True), (1, 3.0, STEPS, True), (2, 1.0, STEPS, False), (3, 1.0, STEPS, False)]
    assert out.nfe_per_image == (2 + 2 + 1 + 1)
    assert torch.equal(
        out.images, sample(pipe, guidance_scale=3.0, callback_on_step_end=switch_guidance_after(1, 1.0)).images
    )
    spy.calls.clear()
    unconditional = sample(pipe, guidance_scale=0.0, callback_on_step_end=switch_guidance_after(1, 0.0))
    assert spy.calls == [[3, 3]] * STEPS  # w = 0 as a call's argument: the null class at every step
    assert not torch.allclose(unconditional.images, out.images)


def test_callback_scale_change_equals_a_guidance_interval(pipe):
    """Guidance until step k, conditional after it == a guidance interval that ends below step k's timestep."""
    pipe.scheduler.set_timesteps(STEPS)
    t1 = int(pipe.scheduler.timesteps[1])
    num_train = pipe.scheduler.config.num_train_timesteps
    switched = sample(pipe, guidance_scale=3.0, callback_on_step_end=switch_guidance_after(1, 1.0))
    interval = sample(pipe, guidance_scale=3.0, guidance_interval=(t1 / num_train, 1.0))
    assert torch.equal(switched.images, interval.images)
    assert switched.nfe_per_image == interval.nfe_per_image == 2 + 2 + 1 + 1
    # ... and turning guidance on at step k == an interval that starts there.
    t2 = int(pipe.scheduler.timesteps[2])
    late = sample(pipe, guidance_scale=1.0, callback_on_step_end=switch_guidance_after(1, 3.0))
    assert torch.equal(late.images, sample(pipe, guidance_scale=3.0, guidance_interval=(0.0, t2 / num_train)).images)
    assert not torch.equal(late.images, sample(pipe, guidance_scale=1.0).images)


class CFGCutoff(PipelineCallback):
    """diffusers' own callback class: guidance off after `cutoff_step_index` (like its SDCFGCutoffCallback)."""

    tensor_inputs = ["latents"]

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
        if step_index == self.config.cutoff_step_index:
            pipeline._guidance_scale = 0.0
        return callback_kwargs


def test_diffusers_callback_classes_work(pipe):
    cutoff = CFGCutoff(cutoff_step_ratio=None, cutoff_step_index=1)
    by_class = sample(pipe, guidance_scale=3.0, callback_on_step_end=cutoff)
    by_function = sample(pipe, guidance_scale=3.0, callback_on_step_end=switch_guidance_after(1, 0.0))
    assert torch.equal(by_class.images, by_function.images) and by_class.nfe_per_image == 6
    both = MultiPipelineCallbacks([CFGCutoff(cutoff_step_ratio=None, cutoff_step_index=2)])
    assert sample(pipe, guidance_scale=3.0, callback_on_step_end=both).nfe_per_image == 2 + 2 + 2 + 1


def test_interrupt_stops_early_and_returns_the_current_latents(pipe):
    spy, at_stop = UNetSpy(pipe), {}

    def stop_after_step_1(p, i, t, tensors):
        if i == 1:
            p._interrupt = True
            at_stop["latents"] = tensors["latents"].clone()
        return tensors

    out = sample(pipe, guidance_scale=2.0, callback_on_step_end=stop_after_step_1)
    assert len(spy.calls) == 2  # steps 0 and 1 ran, 2 and 3 were skipped
    assert pipe.interrupt and out.nfe_per_image == 4
    assert torch.equal(out.images, at_stop["latents"])
    assert not sample(pipe, guidance_scale=2.0).images.equal(out.images)
    assert not pipe.interrupt  # every call starts uninterrupted
    assert len(spy.calls) == 2 + STEPS


def test_latent_output_is_the_final_latents_untouched(pipe):
    last = {}

    def keep(p, i, t, tensors):
        last["latents"] = tensors["latents"].clone()
        return tensors

    latent = sample(pipe, guidance_scale=2.0, callback_on_step_end=keep).images
    assert torch.equal(latent, last["latents"]) and latent.is_contiguous()
    assert latent.min() < 0 < latent.max()  # model space, [-1, 1] (DDPM clips x0), not the [0, 1] images
    pt = sample(pipe, output_type="pt", guidance_scale=2.0).images
    assert torch.equal(pt, (latent / 2 + 0.5).clamp(0, 1))


def test_output_class_carries_the_nfe(pipe):
    out = sample(pipe, guidance_scale=2.0)
    assert isinstance(out, CondiffPipelineOutput) and isinstance(out, ImagePipelineOutput)
    assert out.nfe_per_image == 2 * STEPS and out.images.shape == (2, 1, 8, 8)
    assert not hasattr(pipe, "last_nfe_per_image")  # no per-call state left on the pipeline
    (images,) = sample(pipe, guidance_scale=2.0, return_dict=False)
    assert torch.equal(images, out.images)


# ------------------------------------------------------------------------------------ num_images_per_prompt


def test_num_images_per_prompt_is_an_alias(pipe):
    alias = sample(pipe, num_images_per_prompt=2, guidance_scale=2.0).images
    assert alias.shape[0] == 4
    assert torch.equal(alias, sample(pipe, num_images_per_label=2, guidance_scale=2.0).images)
    both = sample(pipe, num_images_per_label=2, num_images_per_prompt=2, guidance_scale=2.0).images
    assert torch.equal(both, alias)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"num_images_per_label": 2, "num_images_per_prompt": 3}, ValueError, "alias of num_images_per_label"),
        ({"num_images_per_prompt": 0}, ValueError, "num_images_per_prompt"),
        ({"num_images_per_prompt": 1.5}, TypeError, "num_images_per_prompt"),
    ],
)
def test_num_images_per_prompt_errors_name_the_arguments(pipe, kwargs, error, match, monkeypatch):
    monkeypatch.setattr(pipe.unet, "forward", lambda *a, **k: pytest.fail("model ran"))
    with pytest.raises(error, match=match):
        sample(pipe, **kwargs)


# ------------------------------------------------------------------------------------ the caller's UNet


def test_the_callers_unet_is_not_modified():
    unet = tiny_unet()
    before = {k: (v.clone(), v.stride()) for k, v in unet.state_dict().items()}
    training, dtype = unet.training, unet.dtype
    p = ClassConditionalDDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=50))
    p.set_progress_bar_config(disable=True)
    sample(p, guidance_scale=2.0)
    after = unet.state_dict()
    assert p.unet is unet and unet.training == training and unet.dtype == dtype
    for name, (value, stride) in before.items():
        assert torch.equal(after[name], value) and after[name].stride() == stride, name
    assert unet.conv_in.weight.is_contiguous()  # not converted to channels_last
    assert not unet._forward_hooks and not unet._forward_pre_hooks


def test_only_a_unet_loaded_by_the_pipeline_is_converted(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    loaded = ClassConditionalDDPMPipeline.from_pretrained(tmp_path)
    assert loaded.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)  # its own: ~1.2x on CPU
    mine = tiny_unet()
    given = ClassConditionalDDPMPipeline.from_pretrained(tmp_path, unet=mine)
    assert given.unet is mine and mine.conv_in.weight.is_contiguous()
