"""Progressive distillation (issue 10, Salimans & Ho 2022 with w as input): one student DDIM step to the target lands
exactly where two guided teacher DDIM steps land (checked with diffusers' DDIMScheduler), the loss is the student's
prediction against that target under one draw of (step, noise, w, label dropout), and the task exports a pipeline
that samples in N trailing DDIM steps and chains into the next stage."""

from __future__ import annotations

import pytest
import torch
from condiff.pipelines import ClassConditionalDDPMPipeline
from condiff.pipelines.guidance import guidance_scale_embedding, prediction_for_original
from diffusers import DDIMScheduler, DDPMScheduler
from test_guidance_distillation import NUM_CLASSES, tiny_student, tiny_teacher

from condiff.distillation import (
    draw_guidance_scales,
    guided_teacher_prediction,
    progressive_distillation_loss,
    student_step_timesteps,
    two_teacher_steps_target,
)
from condiff.train import run


def ddim(prediction_type: str = "v_prediction", **kwargs) -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type,
        timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False, **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
@pytest.mark.parametrize("index", [1, 3, 4])
def test_one_student_step_to_the_target_lands_where_two_teacher_steps_land(prediction_type, index):
    teacher, labels = tiny_student(), torch.tensor([1, 5, NUM_CLASSES])
    x, w = torch.randn(3, 1, 8, 8), torch.tensor([1.0, 2.5, 6.0])
    timesteps = student_step_timesteps(1000, 4, torch.full((3,), index))
    assert [int(t[0]) for t in timesteps] == [250 * index - 1, 250 * index - 126, 250 * index - 251]
    target = two_teacher_steps_target(teacher, ddim(prediction_type), x, timesteps, labels, NUM_CLASSES, w)

    teacher_sampler, student_sampler = ddim(prediction_type), ddim(prediction_type)
    teacher_sampler.set_timesteps(8)
    student_sampler.set_timesteps(4)
    two_steps = x
    for t in timesteps[:2]:
        guided = guided_teacher_prediction(teacher, two_steps, t, labels, NUM_CLASSES, w)
        two_steps = teacher_sampler.step(guided, int(t[0]), two_steps).prev_sample
    start = int(timesteps[0][0])
    student_output = prediction_for_original(x, target, student_sampler.alphas_cumprod[start], prediction_type)
    one_step = student_sampler.step(student_output, start, x).prev_sample
    torch.testing.assert_close(one_step, two_steps, rtol=1e-4, atol=1e-4)
    if index == 1:  # the last step ends on the clean image: the target is the teacher's two-step result itself
        torch.testing.assert_close(target, two_steps, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("make_teacher, rows", [(tiny_student, [5, 5]), (tiny_teacher, [10, 10])])
def test_the_loss_is_the_student_against_the_two_step_target_under_one_draw(make_teacher, rows):
    """An embedded teacher (a guidance-distilled student) runs one branch per step, a CFG teacher two."""
    teacher, student, scheduler = make_teacher(), tiny_student(1).train(), DDPMScheduler.from_config(ddim().config)
    clean, labels = torch.rand(5, 1, 8, 8) * 2 - 1, torch.tensor([0, 1, 2, 3, 4])
    teacher_rows = []
    teacher.register_forward_hook(lambda m, a, k, o: teacher_rows.append(a[0].shape[0]), with_kwargs=True)
    loss = progressive_distillation_loss(
        student, teacher, scheduler, clean, labels, NUM_CLASSES, (1.0, 6.0), 0.2, torch.Generator().manual_seed(3), 4
    )
    assert teacher_rows == rows and loss.requires_grad
    g = torch.Generator().manual_seed(3)
    timesteps = student_step_timesteps(1000, 4, torch.randint(1, 5, (5,), generator=g))
    noisy = scheduler.add_noise(clean, torch.randn(clean.shape, generator=g), timesteps[0])
    w = draw_guidance_scales(5, (1.0, 6.0), g, clean.device)
    dropped = torch.where(torch.rand(5, generator=g) < 0.2, torch.full_like(labels, NUM_CLASSES), labels)
    with torch.no_grad():
        target = two_teacher_steps_target(teacher, scheduler, noisy, timesteps, dropped, NUM_CLASSES, w)
        abar = scheduler.alphas_cumprod[timesteps[0]].view(-1, 1, 1, 1)
        v_target = (abar.sqrt() * noisy - target) / (1 - abar).sqrt()
        emb = guidance_scale_embedding(w, 16)
        out = student(noisy, timesteps[0], encoder_hidden_states=None, class_labels=dropped, timestep_cond=emb).sample
    assert loss.item() == pytest.approx(torch.mean((out - v_target) ** 2).item(), rel=1e-5)


def stage(tmp_path, teacher_dir, name: str, steps: int, *extra: str):
    return run(["progressive_distillation", "--teacher", str(teacher_dir), "--output_dir", str(tmp_path / name),
                "--resolution", "8", "--max_train_steps", "2", "--max_train_samples", "16", "--train_batch_size", "8",
                "--guidance_embedding_dim", "16", "--student_steps", str(steps), "--validation_images_per_class", "1",
                "--report_to", "none", *extra])  # fmt: skip


def test_progressive_stages_export_trailing_ddim_pipelines_and_chain(tmp_path):
    teacher_dir = tmp_path / "teacher"
    ClassConditionalDDPMPipeline(unet=tiny_teacher(), scheduler=ddim()).save_pretrained(teacher_dir)
    first = stage(
        tmp_path, teacher_dir, "pd4", 4, "--guidance_scale_range", "1", "5", "--validation_guidance_scale", "2"
    )
    second = stage(tmp_path, first, "pd2", 2, "--guidance_scale_range", "2", "4")
    for folder, steps, scale_range in ((first, 4, [1.0, 5.0]), (second, 2, [2.0, 4.0])):
        pipe = ClassConditionalDDPMPipeline.from_pretrained(folder)
        assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.scheduler.config.timestep_spacing == "trailing"
        assert pipe.guidance_embedded and pipe.config.guidance_scale_range == scale_range
        assert pipe.config.default_guidance_scale == (2.0 if steps == 4 else 3.0)  # --validation_guidance_scale
        out = pipe(label=[3, 7], guidance_scale=3.0, output_type="pt")
        assert out.nfe_per_image == steps and torch.isfinite(out.images).all()
        card = (folder / "README.md").read_text()
        assert f"samples in {steps} steps what the teacher samples in\n{2 * steps}" in card


def test_progressive_distillation_refuses_bad_steps_and_ranges_before_training(tmp_path):
    teacher_dir = tmp_path / "teacher"
    ClassConditionalDDPMPipeline(unet=tiny_teacher(), scheduler=ddim()).save_pretrained(teacher_dir)
    with pytest.raises(ValueError, match=r"--student_steps must divide the 1000 training timesteps: one of \[1, 2, 4"):
        stage(tmp_path, teacher_dir, "bad", 3)
    embedded = tmp_path / "embedded"
    ClassConditionalDDPMPipeline(
        unet=tiny_student(), scheduler=ddim(), guidance_scale_range=(1.0, 4.0)
    ).save_pretrained(embedded)
    with pytest.raises(ValueError, match=r"--guidance_scale_range \[1.0, 6.0\] must lie in the teacher's trained"):
        stage(tmp_path, embedded, "wide", 4)
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").glob("checkpoint-*"))


def test_a_stage_starts_from_student_init_when_given(tmp_path):
    """`--student_init` (e.g. a guidance-distilled student) is the stage's starting UNet: after one step at a
    vanishing learning rate the exported student is that UNet, not the teacher plus a guidance input."""
    from safetensors.torch import load_file

    teacher_dir, init_dir = tmp_path / "teacher", tmp_path / "init"
    ClassConditionalDDPMPipeline(unet=tiny_teacher(), scheduler=ddim()).save_pretrained(teacher_dir)
    init = tiny_student(seed=1)
    ClassConditionalDDPMPipeline(unet=init, scheduler=ddim(), guidance_scale_range=(1.0, 6.0)).save_pretrained(init_dir)
    out = stage(tmp_path, teacher_dir, "pd", 4, "--student_init", str(init_dir), "--learning_rate", "1e-12",
                "--max_train_steps", "1", "--no-use_ema")  # fmt: skip
    exported = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    for name, value in init.state_dict().items():
        torch.testing.assert_close(exported[name], value, atol=1e-6, rtol=0)
    teacher_weights = tiny_teacher().state_dict()
    assert any(not torch.equal(exported[k], v) for k, v in teacher_weights.items() if k in exported)
