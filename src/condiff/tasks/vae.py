"""The VAE task: a small `AutoencoderKL` for latent diffusion (Rombach et al. 2022), trained with a reconstruction
loss and a light KL penalty.

On export it measures `scaling_factor` (1 / std of sampled latents over the training set, so that diffusion sees
unit-variance latents) and stores it in the VAE config, and reports reconstruction quality on held-out images: PSNR,
and the evaluator's accuracy on reconstructions next to its accuracy on the real images.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from condiff.engine.args import require_int, require_real
from condiff.engine.task import Export, Modules
from condiff.tasks.denoiser import check_channels, save_grid
from condiff.tasks.image_data import ImageDataTask


class VAETask(ImageDataTask):
    name = "vae"
    description = "Train a small AutoencoderKL (the latent space of latent diffusion) and measure its scaling factor."
    defaults = {"train_batch_size": 64, "use_ema": False}

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        super().add_arguments(p)
        g = p.add_argument_group("autoencoder")
        g.add_argument("--block_out_channels", type=int, nargs="+", default=[16, 32, 64])
        g.add_argument("--latent_channels", type=int, default=4)
        g.add_argument("--layers_per_block", type=int, default=1)
        g.add_argument("--norm_num_groups", type=int, default=8)
        g.add_argument("--kl_weight", type=float, default=1e-6, help="weight of the KL term (summed over latents)")
        g.add_argument("--scaling_samples", type=int, default=5000, help="training images used to measure the scale")
        g.add_argument("--validation_images", type=int, default=1000, help="held-out images for PSNR and accuracy")

    def check_args(self) -> None:
        a = self.args
        super().check_args()
        for name in ("latent_channels", "layers_per_block", "norm_num_groups", "scaling_samples", "validation_images"):
            require_int(name, getattr(a, name))
        require_real("kl_weight", a.kl_weight, 0.0)
        check_channels(a.block_out_channels, a.norm_num_groups)
        factor = 2 ** (len(a.block_out_channels) - 1)
        if a.resolution % factor:
            raise ValueError(
                f"--resolution {a.resolution} must be divisible by the VAE's down-sampling factor {factor} "
                f"(2 ** (len(--block_out_channels) - 1))"
            )

    def build(self) -> Modules:
        from condiff.models import small_vae

        a = self.args
        vae = small_vae(
            self.data.channels,
            tuple(a.block_out_channels),
            a.latent_channels,
            a.layers_per_block,
            a.norm_num_groups,
            a.resolution,
        )
        return Modules(trained={"vae": vae})

    def loss(self, modules: Modules, batch: dict, generator):
        from condiff.latents import vae_loss

        mse, kl = vae_loss(modules.vae, batch["images"], generator)
        return mse + self.args.kl_weight * kl, {"mse": float(mse.detach()), "kl": float(kl.detach())}

    def quality(self, modules: Modules) -> dict:
        from condiff.latents import reconstruction_report

        images, labels, split = self.held_out(self.args.validation_images)
        evaluate = self.data.channels == 1 and self.args.resolution == 28  # what the MNIST evaluator takes
        report = reconstruction_report(modules.vae, images, labels, evaluate=evaluate)
        return {"split": split, **report}

    def validate(self, modules: Modules, step: int, output_dir: Path) -> dict:
        report = self.quality(modules)
        self.reconstruction_grid(modules, Path(output_dir) / "samples" / f"step-{step:07d}.png")
        return {k: v for k, v in report.items() if isinstance(v, float)}

    def reconstruction_grid(self, modules: Modules, path: Path):
        """Eight held-out images (top row) over their reconstructions (bottom row)."""
        from condiff.latents import reconstruct
        from condiff.pipelines.outputs import to_output_type

        images = self.held_out(8)[0]
        pairs = to_output_type(images, "pil") + to_output_type(reconstruct(modules.vae, images), "pil")
        return save_grid(pairs, 2, path)

    def export(self, modules: Modules, folder: Path) -> Export:
        from condiff.latents import measure_scaling_factor

        a, vae = self.args, modules.vae
        rows = [self.data.dataset[i] for i in range(min(a.scaling_samples, len(self.data.dataset)))]
        scale = measure_scaling_factor(vae, self.collate(rows)["images"])
        vae.register_to_config(scaling_factor=scale)
        vae.save_pretrained(str(folder), safe_serialization=True)
        report = self.quality(modules) | {"scaling_factor": scale, "scaling_samples": len(rows)}
        (folder / "reconstruction.json").write_text(json.dumps(report, indent=2) + "\n")
        self.reconstruction_grid(modules, folder / "samples" / "reconstructions.png")
        factor = 2 ** (len(a.block_out_channels) - 1)
        fields = {
            "reconstruction_table": reconstruction_markdown(report),
            "sample_grid": "samples/reconstructions.png",
            "num_parameters": f"{sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M",
            "latent_shape": f"{a.latent_channels} x {a.resolution // factor} x {a.resolution // factor}",
            "scaling_factor": f"{scale:.4f}",
            "kl_weight": a.kl_weight,
        }
        return Export("vae.md", fields, ["autoencoder", "latent-diffusion"])


def reconstruction_markdown(report: dict) -> str:
    """The card's table: PSNR and, for gray images, the evaluator's accuracy on real and reconstructed images."""
    lines = ["| measure | value |", "|---|---:|", f"| PSNR (dB) | {report['psnr']:.2f} |"]
    if "accuracy_real" in report:
        lines += [
            f"| evaluator accuracy, real images | {report['accuracy_real']:.4f} |",
            f"| evaluator accuracy, reconstructions | {report['accuracy_reconstructed']:.4f} |",
        ]
    lines.append(
        f"| scaling factor (from {report['scaling_samples']} training images) | {report['scaling_factor']:.4f} |"
    )
    return "\n".join(lines) + f"\n\n*{report['num_images']} images of the {report['split']}.*"
