"""Consistency distillation (issue 10, LCM in pixel space): the skipping schedule is LCMScheduler's, the teacher's
ODE step is diffusers' DDIM step on the guided prediction, the consistency function is the identity at t = 0, the
loss is the online student against the no-grad student one teacher step later, and the task exports a pipeline
that samples with LCMScheduler, one network evaluation per step."""

from __future__ import annotations

import json

import pytest
import torch
from condiff.pipelines import ClassConditionalDDPMPipeline
from condiff.pipelines.guidance import guidance_scale_embedding
from diffusers import DDIMScheduler, LCMScheduler
from test_guidance_distillation import NUM_CLASSES, tiny_student, tiny_teacher

from condiff.distillation import (
    consistency_distillation_loss,
    consistency_output,
    draw_guidance_scales,
    guided_ddim_step,
    guided_teacher_prediction,
    skipping_timesteps,
)
from condiff.train import run


def lcm(n: int = 50, prediction_type: str = "v_prediction") -> LCMScheduler:
    return LCMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type=prediction_type,
        original_inference_steps=n,
        clip_sample=False,
    )


def test_the_skipping_schedule_is_lcm_schedulers_origin_schedule():
    scheduler = lcm(50)
    scheduler.set_timesteps(50)
    assert skipping_timesteps(1000, 50).flip(0).tolist() == scheduler.timesteps.tolist()
    assert skipping_timesteps(1000, 50)[:3].tolist() == [19, 39, 59]


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_the_teachers_guided_step_is_diffusers_ddim_step(prediction_type):
    teacher, scheduler = tiny_teacher(), lcm(50, prediction_type)
    x, labels = torch.randn(3, 1, 8, 8), torch.tensor([1, 2, NUM_CLASSES])
    start, prev, w = torch.full((3,), 519), torch.full((3,), 499), torch.tensor([1.0, 3.0, 5.0])
    ours = guided_ddim_step(teacher, scheduler, x, start, prev, labels, NUM_CLASSES, w)
    ddim = DDIMScheduler.from_config(scheduler.config, timestep_spacing="trailing", clip_sample=False)
    ddim.set_timesteps(50)
    guided = guided_teacher_prediction(teacher, x, start, labels, NUM_CLASSES, w)
    assert ddim.timesteps[24] == 519 and ddim.timesteps[25] == 499
    theirs = ddim.step(guided, 519, x, eta=0.0).prev_sample
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_the_consistency_function_is_the_identity_at_t_0_and_the_denoised_image_at_large_t():
    scheduler, x, pred = lcm(), torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(consistency_output(scheduler, x, pred, torch.zeros(2, dtype=torch.long)), x)
    t = torch.full((2,), 999)
    abar = scheduler.alphas_cumprod[999]
    x0 = abar.sqrt() * x - (1 - abar).sqrt() * pred  # v-prediction
    torch.testing.assert_close(consistency_output(scheduler, x, pred, t), x0, rtol=1e-3, atol=1e-3)


def test_the_loss_compares_the_online_student_with_the_no_grad_student_one_teacher_step_later():
    teacher, student, scheduler = tiny_teacher(), tiny_student().train(), lcm(10)
    clean, labels = torch.rand(5, 1, 8, 8) * 2 - 1, torch.tensor([0, 1, 2, 3, 4])
    teacher_rows, student_calls = [], []
    teacher.register_forward_hook(lambda m, a, k, o: teacher_rows.append(a[0].shape[0]), with_kwargs=True)
    student.register_forward_hook(lambda m, a, k, o: student_calls.append(torch.is_grad_enabled()), with_kwargs=True)
    loss = consistency_distillation_loss(
        student, teacher, scheduler, clean, labels, NUM_CLASSES, (1.0, 6.0), 0.2, torch.Generator().manual_seed(3)
    )
    assert teacher_rows == [10] and student_calls == [True, False] and loss.requires_grad
    # By hand, with the same draws: index, noise, w, label dropout.
    g = torch.Generator().manual_seed(3)
    start = skipping_timesteps(1000, 10)[torch.randint(0, 10, (5,), generator=g)]
    prev = (start - 100).clamp(min=0)
    noisy = scheduler.add_noise(clean, torch.randn(clean.shape, generator=g), start)
    w = draw_guidance_scales(5, (1.0, 6.0), g, clean.device)
    dropped = torch.where(torch.rand(5, generator=g) < 0.2, torch.full_like(labels, NUM_CLASSES), labels)
    with torch.no_grad():

        def f(x, t):
            emb = guidance_scale_embedding(w, 16)
            out = student(x, t, encoder_hidden_states=None, class_labels=dropped, timestep_cond=emb).sample
            return consistency_output(scheduler, x, out, t)

        target = f(guided_ddim_step(teacher, scheduler, noisy, start, prev, dropped, NUM_CLASSES, w), prev)
        expected = torch.mean((f(noisy, start) - target) ** 2)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_consistency_distillation_task_exports_an_lcm_pipeline_that_samples_in_few_steps(tmp_path):
    teacher_dir = tmp_path / "teacher"
    scheduler = LCMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    ClassConditionalDDPMPipeline(unet=tiny_teacher(), scheduler=scheduler).save_pretrained(teacher_dir)
    out = run(["consistency_distillation", "--teacher", str(teacher_dir), "--output_dir", str(tmp_path / "s"),
               "--resolution", "8", "--max_train_steps", "2", "--max_train_samples", "16", "--train_batch_size", "8",
               "--guidance_embedding_dim", "16", "--num_ddim_timesteps", "20", "--default_num_inference_steps", "2",
               "--validation_images_per_class", "1", "--report_to", "none"])  # fmt: skip
    pipe = ClassConditionalDDPMPipeline.from_pretrained(out)
    assert isinstance(pipe.scheduler, LCMScheduler) and pipe.scheduler.config.original_inference_steps == 20
    assert pipe.guidance_embedded and pipe.config.guidance_scale_range == [1.0, 6.0]
    for steps in (1, 2, 4):
        images = pipe(label=[3, 7], num_inference_steps=steps, output_type="pt")
        assert images.nfe_per_image == steps and torch.isfinite(images.images).all()
    assert pipe(label=3).nfe_per_image == 2  # the exported default
    card = (out / "README.md").read_text()
    assert "LCMScheduler" in card and "20 skipping timesteps" in card


def test_consistency_distillation_refuses_a_student_init_without_guidance_input(tmp_path):
    teacher_dir = tmp_path / "teacher"
    ClassConditionalDDPMPipeline(unet=tiny_teacher(), scheduler=lcm()).save_pretrained(teacher_dir)
    with pytest.raises(ValueError, match="does not take the guidance scale as input"):
        run(["consistency_distillation", "--teacher", str(teacher_dir), "--student_init", str(teacher_dir),
             "--output_dir", str(tmp_path / "s"), "--resolution", "8", "--max_train_samples", "8"])  # fmt: skip


def test_consistency_distillation_resumes_exactly_with_its_target_network(tmp_path):
    """The target network (an EMA of the student, `Modules.tracked`) is checkpointed: a run resumed from step 2
    ends with the same weights as one that ran 4 steps straight."""
    import shutil

    from safetensors.torch import load_file

    teacher_dir = tmp_path / "teacher"
    ClassConditionalDDPMPipeline(unet=tiny_teacher(), scheduler=lcm()).save_pretrained(teacher_dir)
    argv = ["consistency_distillation", "--teacher", str(teacher_dir), "--resolution", "8",
            "--max_train_steps", "4", "--checkpointing_steps", "2", "--max_train_samples", "32",
            "--train_batch_size", "8", "--guidance_embedding_dim", "16", "--num_ddim_timesteps", "10",
            "--default_num_inference_steps", "1", "--validation_images_per_class", "1", "--report_to", "none",
            "--target_ema_decay", "0.5", "--learning_rate", "1e-3", "--lr_warmup_steps", "0"]  # fmt: skip
    straight = run([*argv, "--output_dir", str(tmp_path / "a")])
    target = load_file(str(straight / "checkpoint-2" / "tracked_target.safetensors"))
    student = load_file(str(straight / "checkpoint-2" / "model.safetensors"))
    assert target.keys() == student.keys() and any(not torch.equal(target[k], student[k]) for k in target)
    shutil.copytree(straight, tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoint-4")
    resumed = run([*argv, "--output_dir", str(tmp_path / "b"), "--resume_from_checkpoint", "latest"])
    summary = json.loads((resumed / "training_summary.json").read_text())
    assert summary["resumed_from"] == "checkpoint-2" and summary["global_step"] == 4
    for name in ("unet/diffusion_pytorch_model.safetensors", "checkpoint-4/tracked_target.safetensors"):
        a, b = load_file(str(straight / name)), load_file(str(resumed / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
