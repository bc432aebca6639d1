"""Distribution matching distillation (issue 23): the one-step generator's image is what the exported 1-step DDIM
pipeline samples, the regression target is the few-step student's own DDIM path, the generator loss's gradient is
DMD's normalised score difference (zero where the fake score equals the teacher's), updates alternate between the
fake score and the generator (each touching only its own weights), and the task resumes exactly and exports a 1-NFE
pipeline."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from condiff.pipelines import ClassConditionalDDPMPipeline
from diffusers import DDIMScheduler, DDPMScheduler
from safetensors.torch import load_file
from test_guidance_distillation import NUM_CLASSES, tiny_student, tiny_teacher

from condiff import distribution_matching as dm
from condiff.distillation import embedded_prediction
from condiff.train import run


def ddim(clip: bool = False) -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
        timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=clip,
    )  # fmt: skip


def test_turns_follow_the_two_time_scale_rule():
    turns = [dm.is_generator_turn(step, 2, 3) for step in range(12)]
    assert turns == [False, False, False, False, False, True, False, False, False, True, False, False]
    assert all(dm.is_generator_turn(step, 0, 0) for step in range(5))


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_one_and_few_step_samples_are_the_pipelines_ddim_path(steps):
    net, labels, w = tiny_student(), torch.tensor([1, 4, NUM_CLASSES]), torch.tensor([1.0, 1.5, 2.0])
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sampler = ddim(clip=True)
    sampler.set_timesteps(steps)
    sample = noise
    for t in sampler.timesteps:
        prediction = embedded_prediction(net, sample, t.expand(3), labels, w)
        sample = sampler.step(prediction, t, sample).prev_sample
    torch.testing.assert_close(dm.few_step_sample(net, ddim(), noise, labels, w, steps), sample, atol=1e-5, rtol=0)
    if steps == 1:  # unclipped; the sampler clips the same x0
        torch.testing.assert_close(dm.one_step_sample(net, ddim(), noise, labels, w).clamp(-1, 1), sample)


def test_the_generator_gradient_is_dmds_normalised_score_difference():
    images = torch.randn(2, 1, 4, 4, requires_grad=True)
    real, fake = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    dm.distribution_matching_loss(images, real, fake).backward()
    scale = (images.detach() - real).abs().mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(images.grad, (fake - real) / scale / images.numel())


def test_no_generator_gradient_when_the_fake_score_is_the_teachers():
    """An embedded teacher and a fake score with its weights score alike: the generator is not moved."""
    teacher, generator_net = tiny_student(), tiny_student(seed=1).train()
    noise, labels, w = torch.randn(4, 1, 8, 8), torch.tensor([0, 3, 5, NUM_CLASSES]), torch.full((4,), 1.5)
    g = torch.Generator().manual_seed(0)
    loss, images = dm.generator_loss(generator_net, teacher, teacher, ddim(), noise, labels, w, NUM_CLASSES,
                                     (0.02, 0.98), g)  # fmt: skip
    loss.backward()
    assert images.shape == noise.shape and loss.item() == 0.0
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in generator_net.parameters())
    other = tiny_student(seed=2)
    loss, _ = dm.generator_loss(generator_net, other, teacher, ddim(), noise, labels, w, NUM_CLASSES, (0.02, 0.98),
                                torch.Generator().manual_seed(0))  # fmt: skip
    assert loss.item() > 0


def test_the_fake_score_learns_the_generators_images_by_denoising():
    fake, images = tiny_student().train(), torch.rand(4, 1, 8, 8) * 2 - 1
    labels, w, scheduler = torch.tensor([0, 1, 2, 3]), torch.full((4,), 1.2), DDPMScheduler.from_config(ddim().config)
    loss = dm.fake_score_loss(fake, scheduler, images, labels, w, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    t = torch.randint(0, 1000, (4,), generator=g)
    noise = torch.randn(images.shape, generator=g)
    abar = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    v = abar.sqrt() * noise - (1 - abar).sqrt() * images
    with torch.no_grad():
        out = embedded_prediction(fake, scheduler.add_noise(images, noise, t), t, labels, w)
    assert loss.item() == pytest.approx(torch.mean((out - v) ** 2).item(), rel=1e-5)


def folders(tmp_path):
    teacher_dir, init_dir = tmp_path / "teacher", tmp_path / "init"
    ClassConditionalDDPMPipeline(unet=tiny_teacher(), scheduler=ddim()).save_pretrained(teacher_dir)
    ClassConditionalDDPMPipeline(
        unet=tiny_student(seed=1), scheduler=ddim(), guidance_scale_range=(1.0, 2.0), default_num_inference_steps=2
    ).save_pretrained(init_dir)
    return teacher_dir, init_dir


def dmd_argv(teacher_dir, init_dir, *extra: str) -> list[str]:
    return ["distribution_matching", "--teacher", str(teacher_dir), "--student_init", str(init_dir),
            "--regression_teacher", str(init_dir), "--resolution", "8", "--max_train_samples", "16",
            "--train_batch_size", "8", "--guidance_embedding_dim", "16", "--validation_images_per_class", "1",
            "--report_to", "none", "--fake_updates_per_generator_update", "1", "--learning_rate", "1e-3",
            *extra]  # fmt: skip


def test_updates_alternate_and_each_moves_only_its_network(tmp_path):
    teacher_dir, init_dir = folders(tmp_path)
    argv = dmd_argv(teacher_dir, init_dir, "--checkpointing_steps", "1", "--max_train_steps", "2", "--no-use_ema")
    out = run([*argv, "--output_dir", str(tmp_path / "a")])
    states = [load_file(str(out / f"checkpoint-{k}" / "model.safetensors")) for k in (1, 2)]
    fakes = [load_file(str(out / f"checkpoint-{k}" / "model_1.safetensors")) for k in (1, 2)]
    start = tiny_student(seed=1).state_dict()
    assert all(torch.equal(states[0][k], start[k]) for k in start)  # step 1 trained the fake score only
    assert any(not torch.equal(states[1][k], start[k]) for k in start)  # step 2 the generator only
    assert all(torch.equal(fakes[0][k], fakes[1][k]) for k in fakes[0])
    pipe = ClassConditionalDDPMPipeline.from_pretrained(out)
    result = pipe(label=[3, 7], output_type="pt")
    assert result.nfe_per_image == 1 and isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.config.guidance_scale_range == [1.0, 2.0] and pipe.config.default_guidance_scale == 1.25
    assert "one network evaluation per image" in " ".join((out / "README.md").read_text().split())


def test_distribution_matching_resumes_exactly(tmp_path):
    """Both networks and the turn (from the step counter) are restored: a run resumed from step 3 ends with the
    weights of one that ran 5 steps straight."""
    teacher_dir, init_dir = folders(tmp_path)
    argv = dmd_argv(teacher_dir, init_dir, "--checkpointing_steps", "3", "--max_train_steps", "5")
    straight = run([*argv, "--output_dir", str(tmp_path / "a")])
    shutil.copytree(straight, tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "unet")
    resumed = run([*argv, "--output_dir", str(tmp_path / "b"), "--resume_from_checkpoint", "checkpoint-3"])
    summary = json.loads((resumed / "training_summary.json").read_text())
    assert summary["resumed_from"] == "checkpoint-3" and summary["global_step"] == 5
    a = load_file(str(straight / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(resumed / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_flags_are_refused_before_training(tmp_path):
    teacher_dir, init_dir = folders(tmp_path)
    for extra, message in (
        (["--dmd_timestep_range", "0.5", "0.2"], "--dmd_timestep_range must satisfy 0 <= LO < HI <= 1"),
        (["--fake_updates_per_generator_update", "-1"], "fake_updates_per_generator_update"),
        (["--regression_teacher", str(tmp_path)], "is not a saved pipeline folder"),
    ):
        with pytest.raises(ValueError, match=message):
            run([*dmd_argv(teacher_dir, init_dir, "--output_dir", str(tmp_path / "bad")), *extra])
    argv = [a for a in dmd_argv(teacher_dir, init_dir, "--output_dir", str(tmp_path / "x"))]
    i = argv.index("--student_init")
    with pytest.raises(ValueError, match="--student_init is required"):
        run(argv[:i] + argv[i + 2 :])
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").glob("checkpoint-*"))
