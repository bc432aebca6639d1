"""`condiff nll`: the negative log-likelihood bound in bits per dimension of a saved diffusion model on the first N
images of the MNIST test split (`condiff.likelihood.bits_per_dim`), and the folder reading it shares with
`benchmarks/likelihood.py`.

Light to import (the CLI builds its parser from it): torch and diffusers are imported inside the functions, after
every check on the flags and the folder's JSON files.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from condiff.argtypes import check_output_file, int_in

# model_index.json's `_class_name` -> the kind of folder whose UNet `condiff nll` evaluates
NLL_PIPELINES = {
    "ClassConditionalDDPMPipeline": "class-conditional",
    "ClassifierGuidedPipeline": "classifier-guided",
    "DDPMPipeline": "unconditional",
}
UNET_CLASSES = ("UNet2DModel", "UNet2DConditionModel")
DATA = {"name": "mnist-10k test split", "channels": 1, "size": (28, 28)}


@dataclass
class DenoiserFolder:
    """What a saved folder's JSON files say about its denoising UNet (read without loading any weights)."""

    folder: Path
    pipeline: str
    unet_config: dict[str, Any]
    scheduler_config: dict[str, Any]
    prediction_target: str | None

    @property
    def conditional(self) -> bool:
        return self.unet_config.get("num_class_embeds") is not None

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler_config.get("num_train_timesteps", 1000))


def _read_json(path: Path, flag: str, model: str) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"{flag} {model!r} has no {path.relative_to(model).as_posix()}: not a saved pipeline folder")
    return json.loads(path.read_text())


def _prediction_target(folder: Path, index: dict[str, Any]) -> str | None:
    """ "mean" or "score" when the pipeline's config (model_index.json) or, for folders saved without it, the
    training_args.json says its UNet predicts one of them."""
    if index.get("prediction_target") is not None:
        return index["prediction_target"]
    for path in (folder / "training_args.json", folder / "unet" / "training_args.json"):
        if path.is_file():
            kind = json.loads(path.read_text()).get("prediction_type")
            return kind if kind in ("mean", "score") else None
    return None


def inspect_model(model: str, pipeline: str | None = None, flag: str = "--model") -> DenoiserFolder:
    """Check, before any model work, that `model` is a local pipeline folder whose kind (model_index.json) is one
    `condiff nll` evaluates and matches `pipeline` when given, and whose UNet fits the MNIST test split."""
    folder = Path(model)
    if not folder.is_dir():
        raise ValueError(f"{flag} {model!r}: no such folder (a saved pipeline folder is needed)")
    index = _read_json(folder / "model_index.json", flag, model)
    class_name = index.get("_class_name")
    kind = NLL_PIPELINES.get(class_name)
    if kind is None:
        raise ValueError(f"{flag} {model!r} holds a {class_name}; bits/dim needs one of {', '.join(NLL_PIPELINES)}")
    if pipeline is not None and pipeline != kind:
        raise ValueError(f"--pipeline {pipeline} does not match {flag} {model!r}, which holds a {class_name} ({kind})")
    unet = _read_json(folder / "unet" / "config.json", flag, model)
    scheduler = _read_json(folder / "scheduler" / "scheduler_config.json", flag, model)
    size = unet.get("sample_size")
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    channels = unet.get("in_channels")
    if unet.get("_class_name") not in UNET_CLASSES or channels != DATA["channels"] or size != DATA["size"]:
        raise ValueError(
            f"{flag} {model!r}: its UNet ({unet.get('_class_name')}) takes {channels}-channel {size[0]}x{size[1]} "
            f"images; the {DATA['name']} is 1-channel 28x28 (a {'/'.join(UNET_CLASSES)} is needed)"
        )
    if unet.get("out_channels") not in (channels, 2 * channels):
        raise ValueError(f"{flag} {model!r}: its UNet outputs {unet.get('out_channels')} channels for {channels}")
    return DenoiserFolder(folder, kind, unet, scheduler, _prediction_target(folder, index))


def load_denoiser(info: DenoiserFolder, device: str | None = None) -> tuple[Any, Any]:
    """(UNet in eval mode on `device`, scheduler) of an inspected folder, each with the class its config names."""
    import diffusers

    unet_class = getattr(diffusers, info.unet_config["_class_name"])
    unet = unet_class.from_pretrained(info.folder, subfolder="unet", use_safetensors=True)
    scheduler_class = getattr(diffusers, info.scheduler_config.get("_class_name", "DDPMScheduler"))
    scheduler = scheduler_class.from_config(scheduler_class.load_config(info.folder, subfolder="scheduler"))
    return unet.eval().to(device or default_device()), scheduler


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def mnist_test_images(num_images: int, flag: str = "--num-images") -> tuple[Any, Any]:
    """(images in [-1, 1] [N, 1, 28, 28], labels [N]) of the first `num_images` of the MNIST test split."""
    import torch

    from condiff.data import load_mnist_arrays, uint8_to_model_tensor

    images, labels = load_mnist_arrays("test")
    if num_images > len(images):
        raise ValueError(f"{flag} must be at most {len(images)} (the size of the {DATA['name']}), got {num_images}")
    return uint8_to_model_tensor(images[:num_images]), torch.from_numpy(labels[:num_images])


def evaluate_folder(
    info: DenoiserFolder, images: Any, labels: Any, batch_size: int, stride: int, seed: int, device: str | None = None
) -> dict[str, Any]:
    """`bits_per_dim` of an inspected folder's UNet (true labels for a class-conditional one), timed, as a dict."""
    import torch

    from condiff.evaluation.sampling import synchronize
    from condiff.likelihood import bits_per_dim

    unet, scheduler = load_denoiser(info, device)
    device = next(unet.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    result = bits_per_dim(
        unet, scheduler, images, labels if info.conditional else None, batch_size, stride, generator,
        prediction_target=info.prediction_target,
    )  # fmt: skip
    synchronize(device)
    seconds = time.perf_counter() - start
    return result.as_dict() | {
        "model": str(info.folder),
        "pipeline": info.pipeline,
        "unet_class": info.unet_config["_class_name"],
        "parameters": sum(p.numel() for p in unet.parameters()),
        "stride": stride,
        "seed": seed,
        "batch_size": batch_size,
        "device": str(device),
        "seconds": seconds,
        "seconds_per_image": seconds / len(images),
    }


def describe(report: dict[str, Any]) -> str:
    """Two lines: bits/dim +- s.e. and what it was computed with."""
    se = report["standard_error"]
    given = "conditional on their true classes" if report["conditional"] else "unconditional"
    n, total = report["num_timesteps_evaluated"], report["num_train_timesteps"]
    terms = (
        f"all {total} timesteps"
        if report["exact"]
        else f"{n} of {total} timesteps (stride {report['stride']}: an ESTIMATE, each KL term weighted "
        f"{report['kl_weight']:.3g})"
    )
    return (
        f"bits/dim: {report['bits_per_dim']:.4f} +- {'-' if se is None else f'{se:.4f}'} (standard error over "
        f"{report['num_images']} images of the {DATA['name']}, {given})\n"
        f"variance: {report['variance']}; prediction: {report['prediction_type']}; terms: {terms}; decoder "
        f"{report['decoder_bits_per_dim']:.4f}, prior {report['prior_bits_per_dim']:.2e} bits/dim"
    )


def add_nll_parser(sub: Any, formatter_class: type) -> None:
    """The `nll` subcommand on the CLI's subparsers."""
    p = sub.add_parser(
        "nll",
        help="negative log-likelihood bound in bits/dim on the MNIST test split (about T UNet passes per image)",
        description="The variational bound on -log2 p(x) per dimension, summed over all training timesteps (one "
        "UNet pass per image and timestep), on the first --num-images images of the MNIST test split; a "
        "class-conditional model gets their true classes (log p(x | y)).",
        formatter_class=formatter_class,
    )
    p.add_argument("--model", required=True, help="saved pipeline folder")
    p.add_argument("--pipeline", choices=tuple(NLL_PIPELINES.values()), default=None, help="default: the folder's own")
    p.add_argument("--num-images", type=int_in(1), default=100, help="the first N images of the test split")
    p.add_argument("--batch-size", type=int_in(1), default=64, help="UNet rows per forward pass")
    p.add_argument(
        "--stride", type=int_in(1), default=1, help="evaluate every k-th KL term only (an estimate: smoke runs)"
    )
    p.add_argument("--seed", type=int_in(0, 2**63 - 1), default=0, help="seed of the x_t draws")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the result as JSON here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.set_defaults(func=nll, quiet=True)


def nll(args: argparse.Namespace) -> dict[str, Any]:
    """`condiff nll`: every check first (--json, --model, --pipeline, --num-images, --stride), then the bound."""
    out = check_output_file(args.json, "--json", (".json",), args.overwrite) if args.json else None
    info = inspect_model(args.model, args.pipeline)
    if args.stride >= max(info.num_train_timesteps, 2):
        raise ValueError(f"--stride must be below the model's {info.num_train_timesteps} timesteps, got {args.stride}")
    images, labels = mnist_test_images(args.num_images)
    report = evaluate_folder(info, images, labels, args.batch_size, args.stride, args.seed, args.device)
    print(describe(report))
    if out is not None:
        from condiff.files import atomic_write_text

        atomic_write_text(out, json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
    return report
