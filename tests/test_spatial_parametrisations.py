"""The spatial pipelines with a UNet that learns its variance or predicts the mean or the score, and the spatial
task training them: the same shared loop as the class-conditional pipeline, with the image's channels explicit."""

import json

import pytest
import torch
from condiff.pipelines.spatial_conditions import drop_condition
from condiff.pipelines.variance import target_from_epsilon
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from condiff import SemanticLayoutPipeline, SuperResolutionPipeline
from condiff.diffusion import denoising_loss
from condiff.models import class_conditional_condition_unet
from condiff.train import parse, run

K, T = 3, 50


def sr_unet(out_channels: int = 1, seed: int = 0):
    torch.manual_seed(seed)
    return class_conditional_condition_unet(
        K, 8, 1, (8, 16), 1, 4, 16, condition_channels=1, out_channels=out_channels
    ).eval()


def ddpm(variance_type: str = "learned_range") -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", variance_type=variance_type)


def sr(unet, scheduler, **config) -> SuperResolutionPipeline:
    pipe = SuperResolutionPipeline(unet, scheduler, max_noise_level=20, default_num_inference_steps=3, **config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def upscale(pipe, **kwargs) -> torch.Tensor:
    low = torch.linspace(0, 1, 16).view(1, 1, 4, 4).repeat(2, 1, 1, 1)
    kwargs = {"image": low, "label": [0, 2], "guidance_scale": 2.0, "output_type": "latent"} | kwargs
    return pipe(generator=torch.Generator().manual_seed(0), **kwargs).images


def prediction_only(unet2):
    """The fixed-variance UNet of a learned-variance one: its weights, conv_out cut to the prediction's channel."""
    unet1 = sr_unet(out_channels=1)
    state = unet2.state_dict()
    state["conv_out.weight"], state["conv_out.bias"] = state["conv_out.weight"][:1], state["conv_out.bias"][:1]
    unet1.load_state_dict(state)
    return unet1


def test_a_learned_variance_unet_samples_its_prediction_with_ddim_and_its_sigma_with_ddpm():
    unet2 = sr_unet(out_channels=2)
    pipe = sr(unet2, DDIMScheduler.from_config(ddpm().config), image_channels=1)
    assert pipe.condition_channels == 1 and pipe.image_channels == 1
    learned = upscale(pipe)
    assert learned.shape == (2, 1, 8, 8)
    fixed = upscale(sr(prediction_only(unet2), DDIMScheduler.from_config(ddpm("fixed_small").config)))
    torch.testing.assert_close(learned, fixed)  # DDIM gets the prediction alone, the variance split off
    ancestral = upscale(sr(unet2, ddpm(), image_channels=1))
    ancestral_fixed = upscale(sr(prediction_only(unet2), ddpm("fixed_small")))
    assert (ancestral - ancestral_fixed).abs().max() > 1e-3  # DDPM samples with the learned Sigma


def test_the_layout_pipeline_takes_a_learned_variance_unet_too():
    torch.manual_seed(0)
    unet = class_conditional_condition_unet(None, 8, 1, (8, 16), 1, 4, condition_channels=K + 1, out_channels=2)
    pipe = SemanticLayoutPipeline(unet.eval(), ddpm(), layout_cell=2, default_num_inference_steps=3, image_channels=1)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.background_id == K and pipe.condition_channels == K + 1
    out = pipe(image=torch.full((1, 4, 4), K), output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 1, 8, 8) and torch.isfinite(out).all()


@pytest.mark.parametrize("config, match", [
    ({}, r"in_channels \(2\) = 2 x the image's 2 \(`image_channels`"),  # 2 outputs read as a 2-channel image
    ({"image_channels": 0}, "image_channels"),
    ({"image_channels": 3}, "image_channels"),
])  # fmt: skip
def test_a_learned_variance_unet_needs_the_image_channels(config, match):
    with pytest.raises(ValueError, match=match):
        sr(sr_unet(out_channels=2), ddpm(), **config)


def test_a_learned_ddpm_with_a_fixed_variance_unet_is_refused_when_built_and_when_swapped_in():
    with pytest.raises(ValueError, match="variance_type='learned_range'"):
        sr(sr_unet(), ddpm())
    pipe = sr(sr_unet(), ddpm("fixed_small"))
    pipe.scheduler = ddpm()
    with pytest.raises(ValueError, match="variance_type='learned_range'"):
        upscale(pipe)


@pytest.mark.parametrize("kind", ["mean", "score"])
def test_a_mean_or_score_unet_upscales_as_the_epsilon_unet_it_stands_for(kind):
    scheduler = DDIMScheduler.from_config(ddpm("fixed_small").config)
    reference = upscale(sr(sr_unet(), scheduler))
    network, abar = sr_unet(), scheduler.alphas_cumprod
    real = network.forward

    def forward(x, t, *args, **kwargs):
        eps = real(x, t, *args, **kwargs).sample
        return UNet2DConditionOutput(sample=target_from_epsilon(kind, abar, eps, x[:, :1], t))

    network.forward = forward
    pipe = sr(network, DDIMScheduler.from_config(ddpm("fixed_small").config), prediction_target=kind)
    torch.testing.assert_close(upscale(pipe), reference, atol=1e-4, rtol=1e-4)
    pipe.scheduler = DDIMScheduler.from_config(scheduler.config, prediction_type="v_prediction")
    with pytest.raises(ValueError, match=f"prediction_target='{kind}' needs"):
        upscale(pipe)


def test_image_channels_and_target_survive_save_and_load(tmp_path):
    sr(sr_unet(out_channels=2), ddpm(), image_channels=1, prediction_target="mean").save_pretrained(tmp_path)
    loaded = SuperResolutionPipeline.from_pretrained(tmp_path)
    assert (loaded.config.image_channels, loaded.config.prediction_target) == (1, "mean")
    assert loaded.condition_channels == 1


TINY = [
    "--resolution", "8", "--block_out_channels", "8", "16", "--norm_num_groups", "4", "--train_batch_size", "8",
    "--max_train_samples", "32", "--validation_inference_steps", "2", "--report_to", "none",
    "--architecture", "UNet2DConditionModel", "--low_resolutions", "2", "4", "--layout_cell", "2",
]  # fmt: skip


def test_the_spatial_task_trains_learned_variance_with_the_hybrid_loss_and_exports_it(tmp_path):
    flags = ["spatial", "--output_dir", str(tmp_path / "run"), *TINY, "--variance_type", "learned_range"]
    cls, args, _ = parse([*flags, "--prediction_type", "mean"])
    task = cls(args)
    task.check_args()
    dataset = task.dataset()
    modules = task.build()
    assert modules.unet.config.out_channels == 2 and modules.unet.config.in_channels == 2
    assert task.noise_scheduler.config.variance_type == "learned_range"
    batch = task.collate([dataset[i] for i in range(8)])
    loss = task.loss(modules, batch, torch.Generator().manual_seed(3))[0]

    def by_hand(vlb_weight):
        generator = torch.Generator().manual_seed(3)
        cond, inputs = task.condition(batch["images"], batch["labels"], generator)
        cond = drop_condition(cond, args.p_uncond, generator)
        return denoising_loss(modules.unet, task.noise_scheduler, batch["images"], generator, concat=cond,
                              target="mean", vlb_weight=vlb_weight, encoder_hidden_states=None, **inputs)  # fmt: skip

    assert args.vlb_weight == 0.001 and loss.item() == pytest.approx(by_hand(0.001).item(), rel=1e-6)
    assert loss.item() > by_hand(0.0).item()  # the same draws: lambda T L_vlb > 0 on top of L_simple
    out = run([*flags, "--condition", "layout", "--max_train_steps", "2", "--checkpointing_steps", "2"])
    index = json.loads((out / "model_index.json").read_text())
    assert (index["image_channels"], index["prediction_target"]) == (1, None)
    pipe = SemanticLayoutPipeline.from_pretrained(out)
    assert pipe.unet.config.out_channels == 2 and pipe.condition_channels == 11
    assert "learned variance" in (out / "README.md").read_text()
