"""Guidance distillation (issue 10): the student starts as the teacher, its target is the teacher's guided prediction
for the drawn w (one no-grad teacher pass per batch), the pipeline runs one branch per step for a guidance-embedded
UNet and honours scales 0 and 1 through the embedding, and micro-batched sampling equals one-batch sampling."""

from __future__ import annotations

import pytest
import torch
from condiff.pipelines import ClassConditionalDDPMPipeline
from condiff.pipelines.guidance import cfg_combine, guidance_scale_embedding
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel

from condiff.diffusion import drop_labels, noisy_batch
from condiff.distillation import (
    draw_guidance_scales,
    guidance_distillation_loss,
    guidance_embedded_student,
    guided_teacher_prediction,
)
from condiff.models import class_conditional_condition_unet
from condiff.train import run

NUM_CLASSES = 10


def tiny_teacher(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    unet = class_conditional_condition_unet(NUM_CLASSES, 8, 1, (8, 16), 1, 4)
    with torch.no_grad():  # a random non-trivial class embedding (diffusers initialises it at N(0, 1) already)
        unet.class_embedding.weight.mul_(3)
    return unet.eval()


def tiny_student(seed: int = 0) -> UNet2DConditionModel:
    student = guidance_embedded_student(tiny_teacher(seed), 16)
    with torch.no_grad():  # a trained-looking student: the guidance input matters
        student.time_embedding.cond_proj.weight.normal_(0, 0.5)
    return student.eval()


def test_guidance_embedding_is_diffusers_lcm_formula():
    from diffusers import LatentConsistencyModelPipeline

    w = torch.tensor([0.0, 1.0, 3.3, 6.0])
    ours = guidance_scale_embedding(w, 33)
    theirs = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, 33)
    assert torch.equal(ours, theirs) and not torch.equal(ours[0], ours[1])


def test_the_student_starts_as_the_teacher_for_every_w():
    teacher = tiny_teacher()
    student = guidance_embedded_student(teacher, 16)
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([10, 200, 500, 900]), torch.tensor([0, 3, 7, NUM_CLASSES])
    with torch.no_grad():
        ref = teacher(x, t, encoder_hidden_states=None, class_labels=y).sample
        for w in (0.0, 1.0, 4.5):
            emb = guidance_scale_embedding(torch.full((4,), w), 16)
            out = student(x, t, encoder_hidden_states=None, class_labels=y, timestep_cond=emb).sample
            torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    assert student.config.time_cond_proj_dim == 16 and teacher.config.time_cond_proj_dim is None


def test_a_unet2dmodel_teacher_is_refused_with_the_flag_to_use():
    from condiff.models import class_conditional_unet

    with pytest.raises(ValueError, match="--architecture UNet2DConditionModel"):
        guidance_embedded_student(class_conditional_unet(NUM_CLASSES, 8, 1, (8, 16), 1, False, 4))


def test_the_distillation_target_is_the_teachers_guided_prediction_for_the_drawn_w():
    teacher, student = tiny_teacher(), tiny_student()
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    clean, labels = torch.rand(6, 1, 8, 8) * 2 - 1, torch.tensor([0, 1, 2, 3, 4, 5])
    calls = []
    teacher.register_forward_hook(lambda m, args, kwargs, out: calls.append(args[0].shape[0]), with_kwargs=True)
    loss = guidance_distillation_loss(student, teacher, scheduler, clean, labels, NUM_CLASSES, (1.0, 6.0), 0.3,
                                      torch.Generator().manual_seed(5))  # fmt: skip
    assert calls == [12]  # one teacher pass of 2N rows per batch
    # The same draws by hand: noise and t first, then w, then label dropout, all from the generator.
    g = torch.Generator().manual_seed(5)
    noisy, _, t = noisy_batch(scheduler, clean, g)
    w = draw_guidance_scales(6, (1.0, 6.0), g, clean.device)
    dropped = drop_labels(labels, NUM_CLASSES, 0.3, g)
    assert bool(((w >= 1) & (w <= 6)).all()) and w.std() > 0
    with torch.no_grad():
        cond = teacher(noisy, t, encoder_hidden_states=None, class_labels=dropped).sample
        uncond = teacher(noisy, t, encoder_hidden_states=None, class_labels=torch.full_like(dropped, 10)).sample
        target = uncond + w.view(-1, 1, 1, 1) * (cond - uncond)
        emb = guidance_scale_embedding(w, 16)
        pred = student(noisy, t, encoder_hidden_states=None, class_labels=dropped, timestep_cond=emb).sample
    torch.testing.assert_close(guided_teacher_prediction(teacher, noisy, t, dropped, NUM_CLASSES, w), target)
    assert loss.item() == pytest.approx(torch.mean((pred - target) ** 2).item(), rel=1e-5)
    assert loss.requires_grad and all(p.grad is None for p in teacher.parameters())


def test_distillation_learns_the_guided_prediction_on_a_fixed_batch():
    teacher = tiny_teacher()
    student = guidance_embedded_student(teacher, 16).train()
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    clean, labels = torch.rand(16, 1, 8, 8) * 2 - 1, torch.arange(16) % NUM_CLASSES

    def loss_at(seed):
        return guidance_distillation_loss(student, teacher, scheduler, clean, labels, NUM_CLASSES, (0.0, 6.0), 0.1,
                                          torch.Generator().manual_seed(seed))  # fmt: skip

    with torch.no_grad():
        first = loss_at(0).item()
    opt = torch.optim.Adam(student.parameters(), lr=2e-3)
    for _ in range(40):
        loss = loss_at(0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def embedded_pipeline(**kwargs) -> ClassConditionalDDPMPipeline:
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    pipe = ClassConditionalDDPMPipeline(unet=tiny_student(), scheduler=scheduler, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def count_unet_rows(pipe):
    seen = []

    def hook(module, args, kwargs, out):
        seen.append((args[0].shape[0], kwargs.get("timestep_cond"), kwargs["class_labels"]))

    pipe.unet.register_forward_hook(hook, with_kwargs=True)
    return seen


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0])
def test_a_guidance_embedded_unet_runs_one_branch_per_step_with_w_as_input(scale):
    pipe = embedded_pipeline()
    seen = count_unet_rows(pipe)
    out = pipe(label=[2, 5], guidance_scale=scale, num_inference_steps=4, output_type="pt",
               generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out.nfe_per_image == 4 and len(seen) == 4 and not pipe.do_classifier_free_guidance
    expected = guidance_scale_embedding(torch.full((2,), scale), 16)
    for rows, w_emb, labels in seen:  # scale 0 and 1 too: the class with the embedding of w, never the null branch
        assert rows == 2 and torch.equal(w_emb, expected) and labels.tolist() == [2, 5]


def test_the_guidance_input_changes_the_images_and_the_interval_uses_w_1_outside():
    pipe = embedded_pipeline()
    kwargs = dict(label=[1, 4], num_inference_steps=6, output_type="pt")
    a = pipe(guidance_scale=1.0, generator=torch.Generator().manual_seed(0), **kwargs).images
    b = pipe(guidance_scale=4.0, generator=torch.Generator().manual_seed(0), **kwargs).images
    c = pipe(guidance_scale=4.0, guidance_interval=(1.0, 1.0), generator=torch.Generator().manual_seed(0), **kwargs)
    assert (a - b).abs().max() > 1e-3 and torch.equal(c.images, a)  # no step inside the interval: w = 1 everywhere


def test_embedded_pipeline_refuses_rescale_and_scales_outside_training_before_any_work():
    pipe = embedded_pipeline(guidance_scale_range=(0.0, 6.0))
    seen = count_unet_rows(pipe)
    with pytest.raises(ValueError, match="guidance_rescale must be 0 with a guidance-embedded UNet"):
        pipe(label=1, guidance_rescale=0.5)
    with pytest.raises(ValueError, match=r"guidance_scale must be in \[0.0, 6.0\]"):
        pipe(label=1, guidance_scale=7.0)
    assert seen == []


def test_embedded_pipeline_saves_and_loads_with_its_guidance_input(tmp_path):
    pipe = embedded_pipeline(guidance_scale_range=(0.0, 6.0), micro_batch_size=3)
    pipe.save_pretrained(tmp_path / "p", safe_serialization=True)
    loaded = ClassConditionalDDPMPipeline.from_pretrained(tmp_path / "p")
    assert loaded.guidance_embedded and loaded.config.guidance_scale_range == [0.0, 6.0]
    kwargs = dict(label=[3, 8], guidance_scale=2.5, num_inference_steps=3, output_type="pt")
    ref = pipe(generator=torch.Generator().manual_seed(1), **kwargs).images
    torch.testing.assert_close(loaded(generator=torch.Generator().manual_seed(1), **kwargs).images, ref)


def test_a_call_without_a_scale_uses_the_models_default_guidance_scale(tmp_path):
    pipe = embedded_pipeline(guidance_scale_range=(1.0, 3.0), default_guidance_scale=1.5)
    pipe.save_pretrained(tmp_path / "p", safe_serialization=True)
    loaded = ClassConditionalDDPMPipeline.from_pretrained(tmp_path / "p")
    seen = count_unet_rows(loaded)
    kwargs = dict(label=[3, 8], num_inference_steps=2, output_type="pt")
    default = loaded(generator=torch.Generator().manual_seed(1), **kwargs).images
    assert loaded.guidance_scale == 1.5 and torch.equal(seen[0][1], guidance_scale_embedding(torch.full((2,), 1.5), 16))
    explicit = loaded(guidance_scale=1.5, generator=torch.Generator().manual_seed(1), **kwargs).images
    other = loaded(guidance_scale=3.0, generator=torch.Generator().manual_seed(1), **kwargs).images
    assert torch.equal(default, explicit) and not torch.equal(default, other)
    teacher = ClassConditionalDDPMPipeline(unet=tiny_teacher(), scheduler=loaded.scheduler)
    teacher.set_progress_bar_config(disable=True)
    teacher(label=1, num_inference_steps=1)
    assert teacher.config.default_guidance_scale is None and teacher.guidance_scale == 3.0  # None: 3
    narrow = embedded_pipeline(guidance_scale_range=(1.0, 2.0))  # e.g. a student saved before the default existed
    narrow(label=1, num_inference_steps=1)
    assert narrow.guidance_scale == 2.0  # 3 clamped into the trained range


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(default_guidance_scale=-1.0), "default_guidance_scale must be a finite number >= 0, got -1.0"),
        (dict(default_guidance_scale=4.0, guidance_scale_range=(1.0, 3.0)), r"must lie in guidance_scale_range \[1"),
    ],
)
def test_a_bad_default_guidance_scale_is_refused_naming_it(kwargs, message):
    with pytest.raises(ValueError, match=message):
        embedded_pipeline(**kwargs)


@pytest.mark.parametrize("embedded", [False, True])
def test_micro_batched_sampling_equals_one_batch_sampling(embedded):
    if embedded:
        pipe = embedded_pipeline()
    else:
        scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
        pipe = ClassConditionalDDPMPipeline(unet=tiny_teacher(), scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
    labels = list(range(NUM_CLASSES)) + [3]
    kwargs = dict(label=labels, guidance_scale=3.0, num_inference_steps=4, output_type="pt")
    generators = [torch.Generator().manual_seed(i) for i in range(len(labels))]
    whole = pipe(generator=generators, **kwargs).images
    pipe.register_to_config(micro_batch_size=4)
    seen = count_unet_rows(pipe)
    generators = [torch.Generator().manual_seed(i) for i in range(len(labels))]
    sliced = pipe(generator=generators, **kwargs).images
    per_step = [4, 4, 3] if embedded else [4, 4, 4, 4, 4, 2]  # 11 rows, or 22 with both CFG branches
    assert [r for r, _, _ in seen] == per_step * 4
    torch.testing.assert_close(sliced, whole, rtol=0, atol=1e-5)


def test_guidance_distillation_task_trains_and_exports_a_loadable_student(tmp_path):
    teacher_dir = tmp_path / "teacher"
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    teacher = ClassConditionalDDPMPipeline(unet=tiny_teacher(), scheduler=scheduler, default_num_inference_steps=3)
    teacher.save_pretrained(teacher_dir, safe_serialization=True)
    out = run(["guidance_distillation", "--teacher", str(teacher_dir), "--output_dir", str(tmp_path / "s"),
               "--resolution", "8", "--max_train_steps", "3", "--max_train_samples", "32", "--train_batch_size", "8",
               "--guidance_embedding_dim", "16", "--validation_images_per_class", "1",
               "--report_to", "none"])  # fmt: skip
    pipe = ClassConditionalDDPMPipeline.from_pretrained(out)
    assert pipe.guidance_embedded and pipe.config.guidance_scale_range == [0.0, 6.0]
    assert pipe.config.default_num_inference_steps == 3 and (out / "samples" / "final.png").is_file()
    card = (out / "README.md").read_text()
    assert "guidance-distilled" in card and "[0, 6]" in card
    out_nfe = pipe(label=1, guidance_scale=3.0, output_type="pt").nfe_per_image
    assert out_nfe == 3


def test_guidance_distillation_refuses_a_bad_teacher_folder_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="--teacher .* is not a saved pipeline folder"):
        run(["guidance_distillation", "--teacher", str(tmp_path), "--output_dir", str(tmp_path / "s")])
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())  # nothing written


def test_cfg_combine_with_per_row_scales_is_the_per_row_formula():
    cond, uncond, w = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2), torch.tensor([0.0, 1.0, 2.5])
    out = cfg_combine(uncond, cond, w.view(-1, 1, 1, 1))
    torch.testing.assert_close(out[0], uncond[0])
    torch.testing.assert_close(out[1], cond[1])
    torch.testing.assert_close(out[2], uncond[2] + 2.5 * (cond[2] - uncond[2]))


def test_cfg_task_trains_a_teacher_as_a_unet2dconditionmodel(tmp_path):
    flags = ["--resolution", "8", "--block_out_channels", "8", "16", "--norm_num_groups", "4",
             "--max_train_samples", "16", "--train_batch_size", "8", "--validation_images_per_class", "1",
             "--validation_inference_steps", "2", "--report_to", "none"]  # fmt: skip
    with pytest.raises(ValueError, match="--attention is available only with --architecture UNet2DModel"):
        run(["cfg", "--output_dir", str(tmp_path / "x"), "--architecture", "UNet2DConditionModel", "--attention"])
    out = run(["cfg", "--output_dir", str(tmp_path / "t"), "--architecture", "UNet2DConditionModel",
               "--max_train_steps", "2", *flags])  # fmt: skip
    pipe = ClassConditionalDDPMPipeline.from_pretrained(out)
    assert isinstance(pipe.unet, UNet2DConditionModel) and not pipe.guidance_embedded
    assert pipe.config.micro_batch_size == 32 and "`UNet2DConditionModel`" in (out / "README.md").read_text()
    assert pipe(label=[1, 2], guidance_scale=3.0, num_inference_steps=2, output_type="pt").nfe_per_image == 4
    assert guidance_embedded_student(pipe.unet, 8).config.time_cond_proj_dim == 8
