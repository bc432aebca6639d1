"""The latent text-to-image task: a `UNet2DConditionModel` trained on the latents of a frozen VAE, conditioned on a
frozen text encoder's hidden states (and optionally class labels), with caption dropout to "" for CFG.

Everything the frozen networks compute is computed once, before training: the VAE posterior of every
image (each step samples z = mean + std * noise from it) and the embedding of every distinct caption. MNIST captions
are written from the label and attributes measured on each image (`condiff.captions`), several per image; any data
set with a caption column works with `--caption_column`. Exported as a `LatentCFGPipeline`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from condiff.engine.args import require_int, require_real
from condiff.engine.task import Export, Modules
from condiff.tasks.denoiser import (
    add_diffusion_arguments,
    add_grid_size_argument,
    add_init_unet_argument,
    check_channels,
    check_diffusion_args,
    check_init_unet,
    load_init_unet,
    plan_grid_size,
    save_grid,
)
from condiff.tasks.image_data import ImageDataTask

# = condiff.pipelines.text_encoding.DEFAULT_TEXT_ENCODER (a test checks), not imported: that module imports torch and
# transformers, which `--help` must not wait for.
DEFAULT_TEXT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
FULL_GRID_PER_PROMPT = 8
DEFAULT_VALIDATION_PROMPTS = ["a thick seven", "a thin seven", "a right-slanted one", "a left-slanted one", "0"]


class LatentCFGTask(ImageDataTask):
    name = "latent_cfg"
    description = "Train a text-conditional latent diffusion model (UNet2DConditionModel on VAE latents) for CFG."
    defaults = {"prediction_type": "v_prediction"}  # x0 from v needs no division by sqrt(abar_t), ~0 at t = T

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        super().add_arguments(p)
        g = p.add_argument_group("text and latents")
        g.add_argument("--vae", required=True, help="folder of a trained AutoencoderKL (scripts/train_vae.py)")
        g.add_argument("--text_encoder", default=DEFAULT_TEXT_ENCODER, help="folder or Hub id of a text encoder")
        g.add_argument("--max_text_length", type=int, default=16, help="tokens per prompt (padded / truncated)")
        g.add_argument(
            "--pooled_text_token",
            action="store_true",
            help="one more cross-attention token: the mean of the encoder's hidden states over the caption (the "
            "sentence embedding of sentence-transformers models), for prompts phrased unlike the captions",
        )
        g.add_argument(
            "--text_noise",
            type=float,
            default=0.0,
            help="conditioning augmentation: Gaussian noise added to a caption's hidden states in training, in units "
            "of their standard deviation over the captions (the null caption is kept exact)",
        )
        g.add_argument("--caption_column", default=None, help="captions from the data set (default: MNIST captions)")
        g.add_argument("--captions_per_image", type=int, default=4, help="MNIST captions written per image")
        g.add_argument("--p_uncond", type=float, default=0.1, help="probability of training on the empty caption")
        g.add_argument("--use_class_labels", action="store_true", help="also condition on the class (class embedding)")
        g = p.add_argument_group("model")
        g.add_argument("--block_out_channels", type=int, nargs="+", default=[48, 96])
        g.add_argument("--layers_per_block", type=int, default=1)
        g.add_argument("--attention_head_dim", type=int, default=8, help="diffusers' name: the number of heads")
        g.add_argument("--norm_num_groups", type=int, default=16)
        add_init_unet_argument(g)
        add_diffusion_arguments(p)
        g = p.add_argument_group("validation")
        g.add_argument("--validation_prompts", nargs="+", default=DEFAULT_VALIDATION_PROMPTS)
        add_grid_size_argument(g, "validation_images_per_prompt", FULL_GRID_PER_PROMPT, per="prompt")
        g.add_argument("--validation_guidance_scale", type=float, default=5.0)

    def check_args(self) -> None:
        a = self.args
        super().check_args()
        for name in ("max_text_length", "captions_per_image", "layers_per_block", "attention_head_dim"):
            require_int(name, getattr(a, name))
        require_int("validation_images_per_prompt", a.validation_images_per_prompt, 1, 256, allow_none=True)
        require_real("p_uncond", a.p_uncond, 0.0, 1.0)
        require_real("text_noise", a.text_noise, 0.0)
        require_real("validation_guidance_scale", a.validation_guidance_scale, 0.0)
        check_channels(a.block_out_channels, a.norm_num_groups)
        check_diffusion_args(a)
        check_init_unet(a, "UNet2DConditionModel")
        if not (Path(a.vae) / "config.json").is_file():
            raise ValueError(f"--vae {a.vae!r} is not a saved AutoencoderKL folder (no config.json)")
        if a.caption_column is None and (a.dataset_name or a.train_data_dir):
            raise ValueError(
                "--caption_column is required with --dataset_name / --train_data_dir (MNIST captions "
                "are written only for the default data)"
            )

    def build(self) -> Modules:
        from diffusers import AutoencoderKL

        from condiff.latents import encode_posterior, vae_scale_factor
        from condiff.models import latent_text_unet, training_scheduler
        from condiff.pipelines.text_encoding import load_text_encoder, text_width

        a = self.args
        vae = AutoencoderKL.from_pretrained(a.vae, use_safetensors=True).eval().requires_grad_(False)
        if a.resolution % vae_scale_factor(vae.config):
            raise ValueError(
                f"--resolution {a.resolution} is not divisible by the VAE factor {vae_scale_factor(vae.config)}"
            )
        encoder, tokenizer = load_text_encoder(a.text_encoder)
        images = self.collate_images(range(len(self.data.dataset)))
        self.posterior = encode_posterior(vae, images)  # (mean, std), once
        self.scaling_factor = float(vae.config.scaling_factor)
        self.captions = self.caption_table(encoder, tokenizer)
        self.noise_scheduler = training_scheduler(
            a.noise_schedule, a.prediction_type, a.num_train_timesteps, clip_sample=False
        )
        unet = latent_text_unet(
            vae.config.latent_channels,
            a.resolution // vae_scale_factor(vae.config),
            text_width(encoder),
            tuple(a.block_out_channels),
            a.layers_per_block,
            a.attention_head_dim,
            a.norm_num_groups,
            self.data.num_classes if a.use_class_labels else None,
        )
        self.tokenizer = tokenizer  # not a module: the engine moves and casts only modules
        return Modules(trained={"unet": load_init_unet(unet, a)}, frozen={"vae": vae, "text_encoder": encoder})

    def collate_images(self, indices):
        return self.data.collate([self.data.dataset[i] for i in indices])["images"]

    def caption_table(self, encoder, tokenizer) -> CaptionTable:
        from condiff.pipelines.text_encoding import encode_text

        a = self.args
        if a.caption_column:
            per_image = [[str(c)] for c in self.data.dataset[a.caption_column]]
            self.caption_words = None
        else:
            per_image = self.mnist_captions()
        table = CaptionTable.from_captions(per_image)
        table.embeddings = (
            encode_text(encoder, tokenizer, table.texts, a.max_text_length, pooled_token=a.pooled_text_token)
            .float()
            .cpu()
        )
        return table

    def mnist_captions(self) -> list[list[str]]:
        """`--captions_per_image` captions per image from its label and measured attributes (terciles of this set)."""
        import numpy as np

        from condiff.captions import attribute_words, fit_thresholds, make_captions, measure_attributes

        images = ((self.collate_images(range(len(self.data.dataset)))[:, 0].numpy() + 1) * 127.5).astype(np.uint8)
        labels = self.data.dataset[self.args.label_column]
        attributes = measure_attributes(images)
        self.thresholds = fit_thresholds(attributes)
        words = attribute_words(attributes, self.thresholds)
        rng = np.random.default_rng(self.args.seed)
        columns = [make_captions(labels, words, rng) for _ in range(self.args.captions_per_image)]
        return [list(c) for c in zip(*columns)]

    def collate(self, rows: list[tuple[int, int]]) -> dict:
        """Indices and labels only: latents and captions are looked up in the tables built once in `build`."""
        import torch

        index, labels = zip(*rows)
        return {"index": torch.tensor(index), "labels": torch.tensor(labels)}

    def dataset(self):
        """Rows (index, label): the images themselves are encoded once, in `build`. A data set with captions needs
        no labels unless `--use_class_labels` (then the label is -1)."""
        from condiff.tasks.image_data import LabelledImageData

        a = self.args
        self.data = LabelledImageData(a, labelled=a.use_class_labels or a.caption_column is None)
        if a.caption_column and a.caption_column not in self.data.dataset.column_names:
            columns = self.data.dataset.column_names
            raise ValueError(
                f"--caption_column {a.caption_column!r} is not a column of the data set; its columns are {columns}"
            )
        labels = self.data.dataset[a.label_column] if self.data.label_column else [-1] * len(self.data.dataset)
        return [(i, int(label)) for i, label in enumerate(labels)]

    def loss(self, modules: Modules, batch: dict, generator):
        from condiff.diffusion import denoising_loss, drop_labels
        from condiff.latents import sample_latents

        index, device = batch["index"].cpu(), batch["index"].device
        mean, std = (t[index].to(device) for t in self.posterior)
        latents = sample_latents(mean, std, self.scaling_factor, generator)
        text = self.captions.draw(index, self.args.p_uncond, generator, self.args.text_noise).to(device)
        kwargs = {"encoder_hidden_states": text}
        if self.args.use_class_labels:
            kwargs["class_labels"] = drop_labels(batch["labels"], self.data.num_classes, self.args.p_uncond, generator)
        return denoising_loss(modules.unet, self.noise_scheduler, latents, generator, **kwargs), {}

    def pipeline(self, modules: Modules):
        from condiff.models import default_sampling_scheduler
        from condiff.pipelines.latent_cfg import LatentCFGPipeline

        a = self.args
        return LatentCFGPipeline(
            vae=modules.vae,
            unet=modules.unet,
            scheduler=default_sampling_scheduler(self.noise_scheduler),
            text_encoder=modules.text_encoder,
            tokenizer=self.tokenizer,
            text_encoder_name_or_path=a.text_encoder,
            max_text_length=a.max_text_length,
            pooled_text_token=a.pooled_text_token,
            id2label=dict(enumerate(self.data.label_names)) if a.use_class_labels else None,
            default_num_inference_steps=a.validation_inference_steps,
            default_guidance_scale=a.validation_guidance_scale,
        )

    def sample_grid(self, modules: Modules, path: Path):
        """`--validation_images_per_prompt` images of each validation prompt (rows = prompts), fixed seed."""
        import torch

        a = self.args
        pipe = self.pipeline(modules)
        pipe.set_progress_bar_config(disable=True)
        images = pipe(
            a.validation_prompts,
            num_images_per_prompt=a.validation_images_per_prompt or FULL_GRID_PER_PROMPT,
            generator=torch.Generator(device="cpu").manual_seed(0),
        ).images
        return save_grid(images, len(a.validation_prompts), path)

    def plan(self, total_steps: int) -> None:
        plan_grid_size(self.args, "validation_images_per_prompt", total_steps, FULL_GRID_PER_PROMPT)

    def validate(self, modules: Modules, step: int, output_dir: Path) -> dict:
        return {"validation": self.sample_grid(modules, Path(output_dir) / "samples" / f"step-{step:07d}.png")}

    def export(self, modules: Modules, folder: Path) -> Export:
        from condiff.hub import count_unet_parameters, stage_pipeline_code

        a = self.args
        self.pipeline(modules).save_pretrained(folder, safe_serialization=True)
        stage_pipeline_code(folder, "latent_cfg.py")
        if getattr(self, "thresholds", None) is not None:
            (folder / "caption_attributes.json").write_text(json.dumps(self.thresholds.to_dict(), indent=2) + "\n")
        self.sample_grid(modules, folder / "samples" / "final.png")
        fields = {
            "sample_grid": "samples/final.png",
            "validation_prompts": ", ".join(f'"{p}"' for p in a.validation_prompts),
            "guidance_scale": a.validation_guidance_scale,
            "inference_steps": a.validation_inference_steps,
            "num_parameters": f"{count_unet_parameters(folder) / 1e6:.2f}M",
            "text_encoder": a.text_encoder,
            "vae": a.vae,
            "captions": f"the data set's `{a.caption_column}` column" if a.caption_column else MNIST_CAPTIONS,
            "num_captions": len(self.captions.texts),
            "prediction_type": a.prediction_type,
            "noise_schedule": a.noise_schedule,
            "evaluation": "Not evaluated yet: run `python benchmarks/latent_cfg.py --model <this folder>`.",
        }
        return Export(
            "latent_cfg.md",
            fields,
            ["text-to-image", "latent-diffusion", "classifier-free-guidance"],
            pipeline_tag="text-to-image",
        )


MNIST_CAPTIONS = (
    "captions written by condiff from each digit's label and its measured stroke thickness, slant and width "
    "(terciles of the training set), in several phrasings"
)


class CaptionTable:
    """The distinct captions of a data set (row 0 is "" for caption dropout), their embeddings, and each image's
    candidate caption ids (one is drawn per step)."""

    def __init__(self, texts: list[str], candidates):
        self.texts, self.candidates, self.embeddings = texts, candidates, None
        self.embeddings_std: float | None = None  # `--text_noise`'s unit, computed at the first noisy draw

    @classmethod
    def from_captions(cls, per_image: list[list[str]]) -> CaptionTable:
        import torch

        texts = [""] + sorted({c for captions in per_image for c in captions} - {""})
        ids = {t: i for i, t in enumerate(texts)}
        width = max(len(c) for c in per_image)
        rows = [[ids[c] for c in captions] + [ids[captions[-1]]] * (width - len(captions)) for captions in per_image]
        return cls(texts, torch.tensor(rows, dtype=torch.long))

    def draw(self, index, p_empty: float, generator, noise: float = 0.0):
        """Embeddings (N, tokens, width) of one candidate caption per image, "" with probability `p_empty`; with
        `noise`, Gaussian noise of `noise` x the embeddings' standard deviation added to the non-empty ones."""
        import torch

        n, k = len(index), self.candidates.shape[1]
        pick = torch.randint(0, k, (n,), generator=generator, device=generator.device).cpu()
        empty = (torch.rand(n, generator=generator, device=generator.device) < p_empty).cpu()
        ids = torch.where(empty, torch.zeros_like(pick), self.candidates[index, pick])
        text = self.embeddings[ids]
        if noise > 0:
            z = torch.randn(text.shape, generator=generator, device=generator.device).cpu()
            if self.embeddings_std is None:
                self.embeddings_std = float(self.embeddings.std())
            text = text + (noise * self.embeddings_std) * z * (~empty).view(-1, 1, 1)
        return text
