"""Distribution matching distillation (issue 23): the one-step generator's image is what the exported 1-step DDIM
pipeline samples, the regression target is the few-step student's own DDIM path, the generator loss's gradient is
DMD's normalised score difference (zero where the fake score equals the teacher's), updates alternate between the
fake score and the generator (each touching only its own weights), and the task resumes exactly and exports a 1-NFE
pipeline."""

from __future__ import annotations

import json
import math
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
    loss, images, logs = dm.generator_loss(generator_net, teacher, teacher, ddim(), noise, labels, w, NUM_CLASSES,
                                           (0.02, 0.98), g)  # fmt: skip
    loss.backward()
    assert images.shape == noise.shape and loss.item() == 0.0
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in generator_net.parameters())
    other = tiny_student(seed=2)
    loss, _, _ = dm.generator_loss(generator_net, other, teacher, ddim(), noise, labels, w, NUM_CLASSES, (0.02, 0.98),
                                   torch.Generator().manual_seed(0))  # fmt: skip
    assert loss.item() > 0


def test_the_fake_score_learns_the_generators_images_by_denoising():
    fake, images = tiny_student().train(), torch.rand(4, 1, 8, 8) * 2 - 1
    labels, w, scheduler = torch.tensor([0, 1, 2, 3]), torch.full((4,), 1.2), DDPMScheduler.from_config(ddim().config)
    loss, _ = dm.fake_score_loss(fake, scheduler, images, labels, w, torch.Generator().manual_seed(5))
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


def dmd_argv(teacher_dir, init_dir, *extra: str, regression_teacher: bool = True) -> list[str]:
    regression = ["--regression_teacher", str(init_dir)] if regression_teacher else []
    return ["distribution_matching", "--teacher", str(teacher_dir), "--student_init", str(init_dir), *regression,
            "--resolution", "8", "--max_train_samples", "16",
            "--train_batch_size", "8", "--guidance_embedding_dim", "16", "--validation_images_per_class", "1",
            "--report_to", "none", "--fake_updates_per_generator_update", "1", "--learning_rate", "1e-3",
            *extra]  # fmt: skip


@pytest.mark.parametrize("gan", [False, True])
def test_updates_alternate_and_each_moves_only_its_network(tmp_path, gan):
    """Step 1 trains the fake score (and the GAN head), step 2 the generator alone: the GAN term reaches the
    generator without moving the fake score or the head."""
    teacher_dir, init_dir = folders(tmp_path)
    flags = ["--gan_generator_weight", "0.5", "--gan_discriminator_weight", "1"] if gan else []
    argv = dmd_argv(teacher_dir, init_dir, "--checkpointing_steps", "1", "--max_train_steps", "2", "--no-use_ema")
    out = run([*argv, *flags, "--output_dir", str(tmp_path / "a")])
    names = ("model", "model_1", "model_2") if gan else ("model", "model_1")
    states = [[load_file(str(out / f"checkpoint-{k}" / f"{n}.safetensors")) for n in names] for k in (1, 2)]
    start = tiny_student(seed=1).state_dict()
    assert all(torch.equal(states[0][0][k], start[k]) for k in start)  # step 1 trained the fake score only
    assert any(not torch.equal(states[1][0][k], start[k]) for k in start)  # step 2 the generator only
    for other in range(1, len(names)):  # the fake score and the head: unchanged by the generator's step
        assert all(torch.equal(states[0][other][k], states[1][other][k]) for k in states[0][other])
    pipe = ClassConditionalDDPMPipeline.from_pretrained(out)
    result = pipe(label=[3, 7], output_type="pt")
    assert result.nfe_per_image == 1 and isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.config.guidance_scale_range == [1.0, 2.0] and pipe.config.default_guidance_scale == 1.25
    card = " ".join((out / "README.md").read_text().split())
    assert "one network evaluation per image" in card and "regression (MSE, weight 0.25) onto the few-step" in card
    assert ("DMD2's GAN term on the fake score's bottleneck (weight 0.5)" in card) == gan


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


def test_the_gan_term_reaches_the_generator_images_only_through_x_t():
    """The surrogate's gradient with respect to the generated images is sqrt(abar_t) dL/dx_t of the non-saturating
    loss L = softplus(-D(x_t)); the fake score and the head get none."""
    fake, head = tiny_student(), dm.DiscriminatorHead(16, 4)
    images = torch.randn(3, 1, 8, 8, requires_grad=True)
    t, noise = torch.tensor([100, 500, 900]), torch.randn(3, 1, 8, 8)
    labels, w, scheduler = torch.tensor([1, 2, 3]), torch.full((3,), 1.5), ddim()
    noisy = scheduler.add_noise(images, noise, t)
    surrogate, value = dm.generator_gan_surrogate(fake, head, noisy, t, labels, w)
    surrogate.backward()
    leaf = noisy.detach().requires_grad_(True)
    _, features = dm.prediction_and_features(fake, leaf, t, labels, w)
    loss = torch.nn.functional.softplus(-head(features)).mean()
    (expected,) = torch.autograd.grad(loss, leaf)
    abar = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(images.grad, abar.sqrt() * expected)
    assert value.item() == pytest.approx(loss.item()) and images.grad.abs().max() > 0
    assert all(p.grad is None for p in [*fake.parameters(), *head.parameters()])


def test_the_fake_score_update_adds_the_classifiers_logistic_loss():
    fake, head = tiny_student().train(), dm.DiscriminatorHead(16, 4)
    images, real = torch.rand(4, 1, 8, 8) * 2 - 1, torch.rand(4, 1, 8, 8) * 2 - 1
    labels, w, scheduler = torch.tensor([0, 1, 2, 3]), torch.full((4,), 1.2), DDPMScheduler.from_config(ddim().config)
    plain, _ = dm.fake_score_loss(fake, scheduler, images, labels, w, torch.Generator().manual_seed(5))
    loss, logs = dm.fake_score_loss(fake, scheduler, images, labels, w, torch.Generator().manual_seed(5), head, real, 2)
    assert logs["denoising_loss"] == pytest.approx(plain.item())
    assert loss.item() == pytest.approx(plain.item() + 2 * logs["discriminator_loss"], rel=1e-6)
    assert logs["discriminator_loss"] == pytest.approx(2 * math.log(2), abs=0.3)  # an untrained head: near chance
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in head.parameters())


def test_teacher_ode_pairs_are_the_teachers_deterministic_images_from_their_noise(tmp_path):
    teacher_dir, _ = folders(tmp_path)
    pipe = ClassConditionalDDPMPipeline.from_pretrained(teacher_dir)
    pipe.set_progress_bar_config(disable=True)
    pairs = dm.teacher_ode_pairs(pipe, 7, (1.0, 2.0), 3, seed=0, batch_size=4)
    assert pairs["noise"].shape == pairs["images"].shape == (7, 1, 8, 8)
    assert pairs["labels"].tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert pairs["w"][0] == pairs["w"][3] != pairs["w"][4] and ((1 <= pairs["w"]) & (pairs["w"] <= 2)).all()
    again = pipe(label=[4, 5, 6], latents=pairs["noise"][4:].clone(), guidance_scale=float(pairs["w"][4]),
                 guidance_interval=(0.0, 1.0), num_inference_steps=3, output_type="pt").images  # fmt: skip
    torch.testing.assert_close(pairs["images"][4:], again * 2 - 1)


def test_regression_only_on_teacher_pairs_trains_the_generator_every_step(tmp_path):
    """--dmd_weight 0 with --regression_pairs: no fake score is built, every update moves the generator, and the
    loss is the MSE of its one-step images against the drawn pairs."""
    from safetensors.torch import save_file

    teacher_dir, init_dir = folders(tmp_path)
    pipe = ClassConditionalDDPMPipeline.from_pretrained(teacher_dir)
    pipe.set_progress_bar_config(disable=True)
    save_file(dm.teacher_ode_pairs(pipe, 12, (1.0, 2.0), 2, batch_size=6), str(tmp_path / "pairs.safetensors"))
    argv = dmd_argv(teacher_dir, init_dir, regression_teacher=False)
    out = run([*argv, "--regression_pairs", str(tmp_path / "pairs.safetensors"), "--dmd_weight", "0",
               "--regression_weight", "1", "--max_train_steps", "2", "--checkpointing_steps", "1", "--no-use_ema",
               "--output_dir", str(tmp_path / "r")])  # fmt: skip
    assert not (out / "checkpoint-1" / "model_1.safetensors").exists()  # the generator is the only trained network
    card = " ".join((out / "README.md").read_text().split())
    assert "Objective: regression (MSE, weight 1) onto the teacher's deterministic ODE samples" in card
    weights = [load_file(str(out / f"checkpoint-{k}" / "model.safetensors")) for k in (1, 2)]
    start = tiny_student(seed=1).state_dict()
    assert any(not torch.equal(weights[0][k], start[k]) for k in start)
    assert any(not torch.equal(weights[1][k], weights[0][k]) for k in start)
    with pytest.raises(ValueError, match="--dmd_weight 0 leaves nothing to train"):
        run([*argv, "--dmd_weight", "0", "--output_dir", str(tmp_path / "bad")])
