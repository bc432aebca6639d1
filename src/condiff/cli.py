"""The `condiff` command: generate digits from the shipped (or any saved) model, evaluate a pipeline, sweep the
guidance scale."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from PIL import Image

from condiff.argtypes import float_in, int_in
from condiff.models import SAMPLERS

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def check_output_path(path: str | Path, flag: str, suffixes: set[str] | None = None) -> Path:
    """Refuse an output path that cannot be written, before any model work."""
    path = Path(path)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise ValueError(f"{flag} {str(path)!r} must end in one of {', '.join(sorted(suffixes))}")
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ValueError(f"{flag} {str(path)!r} is a folder; give a file name")
    if not parent.is_dir():
        raise ValueError(f"{flag} {str(path)!r}: folder {str(parent)!r} does not exist")
    import os

    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"{flag} {str(path)!r} cannot be written (permission denied)")
    return path


def load_pipeline(model: str | None, scheduler: str | None):
    from condiff import ClassConditionalDDPMPipeline, shipped_model_path
    from condiff.models import scheduler_for

    pipe = ClassConditionalDDPMPipeline.from_pretrained(model or shipped_model_path(), use_safetensors=True)
    if scheduler:
        pipe.scheduler = scheduler_for(scheduler, pipe.scheduler.config)
    return pipe


def parse_label(text: str | None):
    if text is None or text.lower() in ("none", "uncond", "unconditional"):
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    values = [int(p) if p.lstrip("-").isdigit() else p for p in parts]
    return values[0] if len(values) == 1 else values


def generate(args: argparse.Namespace) -> Path:
    import torch
    from diffusers.utils import make_image_grid

    out = check_output_path(args.out, "--out", IMAGE_SUFFIXES)
    if args.num_images < 1:
        raise ValueError(f"--num-images must be >= 1, got {args.num_images}")
    pipe = load_pipeline(args.model, args.scheduler)
    label = parse_label(args.label)
    ids = pipe.get_label_ids(label)  # validates before sampling
    per_label = max(1, args.num_images // (len(ids) if ids else 1))
    pipe.set_progress_bar_config(disable=args.quiet)
    kwargs = {} if args.steps is None else {"num_inference_steps": args.steps}
    images = pipe(
        label=label,
        num_images_per_label=per_label,
        guidance_scale=args.guidance_scale,
        generator=torch.Generator().manual_seed(args.seed),
        **kwargs,
    ).images
    cols = per_label if ids and len(ids) > 1 else math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    images += [Image.new(images[0].mode, images[0].size)] * (rows * cols - len(images))
    grid = make_image_grid(images, rows=rows, cols=cols)
    grid = grid.resize((grid.width * args.upscale, grid.height * args.upscale), Image.NEAREST)
    grid.save(out)
    print(f"wrote {out} ({len(ids or [None]) * per_label} images, label={label}, guidance_scale={args.guidance_scale})")
    return out


def evaluate(args: argparse.Namespace) -> dict:
    from condiff.metrics import evaluate_pipeline

    if args.out:
        check_output_path(args.out, "--out", {".json"})
    pipe = load_pipeline(args.model, args.scheduler)
    pipe.set_progress_bar_config(disable=True)
    result = evaluate_pipeline(
        pipe,
        guidance_scale=args.guidance_scale,
        num_per_class=args.num_per_class,
        num_inference_steps=args.steps,
        seed=args.seed,
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return result


def sweep(args: argparse.Namespace) -> dict:
    from condiff.sweep import run_from_args

    return run_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="condiff", description="Conditional diffusion models on diffusers.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(s: argparse.ArgumentParser) -> None:
        s.add_argument(
            "--model", default=None, help="saved pipeline folder or Hub id (default: the shipped MNIST model)"
        )
        s.add_argument("--scheduler", choices=sorted(SAMPLERS), default=None, help="default: the model's own")
        s.add_argument(
            "--steps", type=int_in(1, 10_000), default=None, help="inference steps (default: the pipeline's)"
        )
        s.add_argument("--guidance-scale", type=float_in(0.0), default=3.0)
        s.add_argument("--seed", type=int_in(0, 2**64 - 1), default=0)

    g = sub.add_parser("generate", help="write a grid of generated images")
    common(g)
    g.add_argument("--label", default=None, help='class id or name, comma-separated list, or "none"')
    g.add_argument("--num-images", type=int_in(1, 65536), default=16)
    g.add_argument("--out", required=True, help="image file to write (.png, .jpg, ...)")
    g.add_argument("--upscale", type=int_in(1, 64), default=2, help="nearest-neighbour zoom of the grid")
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(func=generate)

    e = sub.add_parser("evaluate", help="conditional accuracy and Frechet distance of generated samples")
    common(e)
    e.add_argument("--num-per-class", type=int_in(1, 65536), default=100)
    e.add_argument("--out", default=None, help="write the metrics as JSON here")
    e.set_defaults(func=evaluate)

    from condiff.sweep import add_sweep_arguments

    w = sub.add_parser("sweep", help="guidance sweep: accuracy, Frechet distance, diversity, NFE and speed per scale")
    add_sweep_arguments(w)
    w.set_defaults(func=sweep)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, TypeError, OSError) as err:  # OSError: a model folder that is missing or not safetensors
        print(f"condiff {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
