"""Latent diffusion training (issue 9): the VAE's loss, scaling factor and reconstruction measures, the VAE task
and the latent text-to-image task end to end on tiny models, and a short latent training run whose loss falls."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TEXT_WIDTH

from condiff.latents import encode_posterior, measure_scaling_factor, psnr, sample_latents, vae_loss
from condiff.models import small_vae
from condiff.tasks.latent_cfg import CaptionTable
from condiff.train import run

TINY_VAE = ["--block_out_channels", "8", "16", "--norm_num_groups", "4", "--latent_channels", "2"]


def test_psnr_of_a_known_error():
    x = torch.zeros(2, 1, 4, 4)
    assert psnr(x, x + 0.2) == pytest.approx(10 * np.log10(4 / 0.04), rel=1e-5)  # peak-to-peak 2 in [-1, 1]


def test_the_scaling_factor_gives_unit_variance_latents():
    torch.manual_seed(0)
    vae = small_vae(1, (8, 16), 2, norm_num_groups=4, sample_size=8)
    images = torch.rand(64, 1, 8, 8) * 2 - 1
    scale = measure_scaling_factor(vae, images)
    mean, std = encode_posterior(vae, images)
    z = sample_latents(mean, std, scale, torch.Generator().manual_seed(0))
    assert float(z.std()) == pytest.approx(1.0, rel=1e-4) and scale != pytest.approx(1.0, abs=1e-3)
    again = sample_latents(mean, std, scale, torch.Generator().manual_seed(0))
    assert torch.equal(z, again)


def test_vae_loss_is_reconstruction_plus_kl_and_trains():
    torch.manual_seed(0)
    vae = small_vae(1, (8, 16), 2, norm_num_groups=4, sample_size=8)
    images = torch.rand(16, 1, 8, 8) * 2 - 1
    mse, kl = vae_loss(vae, images, torch.Generator().manual_seed(0))
    posterior = vae.encode(images).latent_dist
    assert kl.item() == pytest.approx(posterior.kl().mean().item(), rel=1e-5) and mse.item() > 0
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    first = mse.item()
    for i in range(60):
        mse, kl = vae_loss(vae, images, torch.Generator().manual_seed(i))
        opt.zero_grad()
        (mse + 1e-6 * kl).backward()
        opt.step()
    assert mse.item() < 0.5 * first


def test_vae_task_stores_the_measured_scaling_factor_and_reports_reconstruction(tmp_path):
    from diffusers import AutoencoderKL

    from condiff.data import load_mnist_arrays, uint8_to_model_tensor

    out = run(["vae", "--output_dir", str(tmp_path / "v"), *TINY_VAE, "--max_train_steps", "3",
               "--max_train_samples", "64", "--train_batch_size", "16", "--scaling_samples", "48",
               "--validation_images", "40", "--report_to", "none"])  # fmt: skip
    vae = AutoencoderKL.from_pretrained(out, use_safetensors=True)
    report = json.loads((out / "reconstruction.json").read_text())
    assert vae.config.scaling_factor == pytest.approx(report["scaling_factor"]) and report["scaling_samples"] == 48
    images = uint8_to_model_tensor(load_mnist_arrays("train")[0][:48])
    assert report["scaling_factor"] == pytest.approx(measure_scaling_factor(vae, images), rel=1e-5)
    assert report["num_images"] == 40 and report["split"] == "mnist-10k test split" and report["psnr"] > 0
    assert report["accuracy_real"] > 0.9 and 0 <= report["accuracy_reconstructed"] <= 1  # evaluator on 28x28
    card = (out / "README.md").read_text()
    assert "| PSNR (dB) |" in card and "evaluator accuracy, reconstructions" in card


def test_vae_task_refuses_a_resolution_the_vae_cannot_halve(tmp_path):
    with pytest.raises(ValueError, match="--resolution 27 must be divisible by the VAE's down-sampling factor 2"):
        run(["vae", "--output_dir", str(tmp_path / "v"), *TINY_VAE, "--resolution", "27"])


def test_caption_table_draws_candidates_or_the_empty_caption():
    table = CaptionTable.from_captions([["a", "b"], ["c"], ["a", ""]])
    assert table.texts == ["", "a", "b", "c"] and table.candidates.tolist() == [[1, 2], [3, 3], [1, 0]]
    table.embeddings = torch.arange(4.0)[:, None, None].expand(4, 2, 3)
    index = torch.tensor([0, 1, 2] * 50)
    drawn = table.draw(index, 0.0, torch.Generator().manual_seed(0))[:, 0, 0]
    assert set(drawn[index == 0].tolist()) == {1.0, 2.0} and set(drawn[index == 1].tolist()) == {3.0}
    assert table.draw(index, 1.0, torch.Generator().manual_seed(0)).abs().sum() == 0
    assert torch.equal(drawn, table.draw(index, 0.0, torch.Generator().manual_seed(0))[:, 0, 0])


def test_text_noise_perturbs_drawn_captions_but_never_the_empty_one():
    table = CaptionTable.from_captions([["a"], ["b"]])
    table.embeddings = torch.randn(3, 4, 64, generator=torch.Generator().manual_seed(1))
    table.embeddings[0] = 0.0  # the null caption
    index = torch.tensor([0, 1] * 200)
    clean = table.draw(index, 0.3, torch.Generator().manual_seed(0))
    noisy = table.draw(index, 0.3, torch.Generator().manual_seed(0), noise=0.5)
    empty = clean.flatten(1).abs().sum(1) == 0
    assert 40 < int(empty.sum()) < 200 and torch.equal(noisy[empty], clean[empty])
    added = (noisy - clean)[~empty]
    expected = 0.5 * float(table.embeddings.std())
    assert abs(float(added.std()) - expected) < 0.05 * expected and abs(float(added.mean())) < 0.05 * expected
    assert torch.equal(noisy, table.draw(index, 0.3, torch.Generator().manual_seed(0), noise=0.5))


@pytest.fixture(scope="module")
def mnist_vae(tmp_path_factory) -> str:
    """A tiny 28x28 VAE (random weights, scaling factor measured) saved as a folder."""
    from condiff.data import load_mnist_arrays, uint8_to_model_tensor

    torch.manual_seed(0)
    vae = small_vae(1, (8, 16, 16), 4, norm_num_groups=4, sample_size=28).eval()
    vae.register_to_config(
        scaling_factor=measure_scaling_factor(vae, uint8_to_model_tensor(load_mnist_arrays()[0][:256]))
    )
    folder = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(folder)
    return str(folder)


LATENT = ["--block_out_channels", "16", "32", "--norm_num_groups", "8", "--attention_head_dim", "2",
          "--max_text_length", "12", "--report_to", "none", "--validation_images_per_prompt", "1",
          "--validation_inference_steps", "2"]  # fmt: skip


def test_latent_task_exports_a_pipeline_with_its_caption_attributes(tmp_path, mnist_vae, encoder_folder):
    from condiff.pipelines import LatentCFGPipeline

    out = run(["latent_cfg", "--output_dir", str(tmp_path / "l"), "--vae", mnist_vae, "--text_encoder", encoder_folder,
               *LATENT, "--max_train_steps", "2", "--max_train_samples", "200", "--train_batch_size", "16",
               "--use_class_labels"])  # fmt: skip
    pipe = LatentCFGPipeline.from_pretrained(out)
    assert (
        pipe.config.text_encoder_name_or_path == encoder_folder and pipe.unet.config.cross_attention_dim == TEXT_WIDTH
    )
    assert pipe.num_classes == 10 and pipe.unet.config.sample_size == 7 and pipe.config.max_text_length == 12
    # latents are unbounded: the shipped sampler must not clip x0 to [-1, 1] as it does for pixels
    sampler = pipe.scheduler.config
    assert not sampler.thresholding and not sampler.clip_sample and sampler.prediction_type == "v_prediction"
    thresholds = json.loads((out / "caption_attributes.json").read_text())
    assert (
        set(thresholds) == {"thickness", "slant", "width"} and thresholds["thickness"][0] < thresholds["thickness"][1]
    )
    assert (
        (out / "pipeline.py").is_file() and (out / "text_encoding.py").is_file() and not (out / "text_encoder").exists()
    )
    pipe.set_progress_bar_config(disable=True)
    images = pipe(["a seven", "1"], class_labels=[7, 1], num_inference_steps=2, output_type="np").images
    assert images.shape == (2, 28, 28, 1) and np.isfinite(images).all()
    assert '"a thick seven"' in (out / "README.md").read_text()


def test_latent_task_refuses_bad_flags_before_any_work(tmp_path, mnist_vae):
    with pytest.raises(ValueError, match="--vae .* is not a saved AutoencoderKL folder"):
        run(["latent_cfg", "--output_dir", str(tmp_path / "a"), "--vae", str(tmp_path)])
    with pytest.raises(ValueError, match="--caption_column is required with --dataset_name"):
        run(["latent_cfg", "--output_dir", str(tmp_path / "b"), "--vae", mnist_vae, "--dataset_name", "x/y"])
    with pytest.raises(ValueError, match="text_noise"):
        run(["latent_cfg", "--output_dir", str(tmp_path / "c"), "--vae", mnist_vae, "--text_noise", "-0.5"])


def test_short_latent_training_reduces_the_denoising_loss(tmp_path, mnist_vae, encoder_folder):
    """A short real run on MNIST latents and captions: the held-out denoising loss must fall clearly."""
    from condiff.pipelines.text_encoding import encode_text, load_text_encoder
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from condiff.captions import attribute_words, fit_thresholds, make_captions, measure_attributes
    from condiff.data import load_mnist_arrays, uint8_to_model_tensor
    from condiff.diffusion import denoising_loss
    from condiff.latents import encode_posterior
    from condiff.models import latent_text_unet, training_scheduler

    out = run(["latent_cfg", "--output_dir", str(tmp_path / "l"), "--vae", mnist_vae, "--text_encoder", encoder_folder,
               *LATENT, "--max_train_steps", "150", "--max_train_samples", "1024", "--train_batch_size", "32",
               "--learning_rate", "2e-3", "--lr_warmup_steps", "10", "--validation_steps", "1000",
               "--checkpointing_steps", "1000", "--use_ema", "--ema_max_decay", "0.9",
               "--prediction_type", "epsilon"])  # fmt: skip
    images, labels = load_mnist_arrays("test")
    images, labels = images[:128], labels[:128]
    vae = AutoencoderKL.from_pretrained(mnist_vae)
    mean, _ = encode_posterior(vae, uint8_to_model_tensor(images))
    latents = mean * vae.config.scaling_factor
    words = attribute_words(measure_attributes(images), fit_thresholds(measure_attributes(images)))
    encoder, tokenizer = load_text_encoder(encoder_folder)
    text = encode_text(encoder, tokenizer, make_captions(labels, words, np.random.default_rng(0)), 12)
    scheduler = training_scheduler("squaredcos_cap_v2", "epsilon", 1000, clip_sample=False)

    def held_out_loss(unet) -> float:
        with torch.no_grad():
            return denoising_loss(
                unet, scheduler, latents, torch.Generator().manual_seed(0), encoder_hidden_states=text
            ).item()

    torch.manual_seed(0)
    untrained = latent_text_unet(4, 7, TEXT_WIDTH, (16, 32), attention_head_dim=2, norm_num_groups=8).eval()
    trained = UNet2DConditionModel.from_pretrained(out / "unet").eval()
    before, after = held_out_loss(untrained), held_out_loss(trained)
    assert after < 0.6 * before, (before, after)


def test_latent_task_trains_on_a_captioned_datasets_folder_without_labels(tmp_path, mnist_vae, encoder_folder):
    from condiff.pipelines import LatentCFGPipeline
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    from condiff.data import load_mnist_arrays

    images, labels = load_mnist_arrays("train")
    captions = [f"a handwritten digit {d} in ink" for d in labels[:40]]
    features = Features({"picture": ImageFeature(), "text": Value("string")})
    folder = tmp_path / "captioned"
    folder.mkdir()
    Dataset.from_dict({"picture": list(images[:40]), "text": captions}, features=features).to_parquet(
        str(folder / "train.parquet")
    )
    common = ["latent_cfg", "--vae", mnist_vae, "--text_encoder", encoder_folder, *LATENT, "--dataset_name",
              str(folder), "--image_column", "picture", "--cache_dir", str(tmp_path / "cache")]  # fmt: skip
    with pytest.raises(ValueError, match="--caption_column 'caption' is not a column of the data set"):
        run([*common, "--output_dir", str(tmp_path / "bad"), "--caption_column", "caption"])
    out = run([*common, "--output_dir", str(tmp_path / "l"), "--caption_column", "text", "--max_train_steps", "2",
               "--train_batch_size", "8"])  # fmt: skip
    pipe = LatentCFGPipeline.from_pretrained(out)
    assert pipe.num_classes is None and not (out / "caption_attributes.json").exists()
    assert "the data set's `text` column" in (out / "README.md").read_text()


def test_latent_task_fine_tunes_from_a_folder_and_refuses_another_unet(tmp_path, mnist_vae, encoder_folder):
    from safetensors.torch import load_file

    common = ["latent_cfg", "--vae", mnist_vae, "--text_encoder", encoder_folder, *LATENT, "--max_train_samples", "64",
              "--train_batch_size", "16"]  # fmt: skip
    first = run([*common, "--output_dir", str(tmp_path / "a"), "--max_train_steps", "2"])
    fine = run([*common, "--output_dir", str(tmp_path / "b"), "--max_train_steps", "1", "--learning_rate", "1e-12",
                "--lr_warmup_steps", "0", "--init_unet", str(first), "--seed", "1"])  # fmt: skip
    weights = Path("unet") / "diffusion_pytorch_model.safetensors"
    old, new = load_file(first / weights), load_file(fine / weights)
    assert old.keys() == new.keys() and max((old[k] - new[k]).abs().max().item() for k in old) < 1e-6
    pixel = run(["unconditional", "--output_dir", str(tmp_path / "p"), "--resolution", "8", "--block_out_channels",
                 "8", "16", "--norm_num_groups", "4", "--max_train_steps", "1", "--max_train_samples", "16",
                 "--train_batch_size", "8", "--validation_images", "1", "--validation_inference_steps", "1",
                 "--report_to", "none"])  # fmt: skip
    with pytest.raises(ValueError, match="--init_unet .*holds a UNet2DModel, the run trains a UNet2DConditionModel"):
        run([*common, "--output_dir", str(tmp_path / "c"), "--max_train_steps", "1", "--init_unet", str(pixel)])
    assert not (tmp_path / "c" / "checkpoint-1").exists()
