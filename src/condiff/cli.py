"""The `condiff` command: generate images from the shipped (or any saved) model, evaluate a pipeline, sweep the
guidance scale, train a task (`condiff train cfg ...`), assemble a classifier-guided folder from two trained parts,
serve the demo page (`condiff demo`), bound the likelihood in bits/dim (`condiff nll`).

Arguments are parsed and checked before torch, diffusers or PIL is imported: output paths, the pipeline kind that
`--model`'s model_index.json names, `--label` against the folder's classes, optional modules; so `--help` and bad
arguments are answered at once. `train` and `assemble-classifier-guided` parse their own arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from condiff import __version__
from condiff.argtypes import check_output_file, existing_file, int_in
from condiff.cli_arguments import add_corrector_arguments, add_model_arguments, corrector_kwargs
from condiff.cli_inputs import check_labels, check_spatial_arguments, parse_label, read_condition_image
from condiff.demo.command import add_demo_parser, write_steps_strip
from condiff.demo.previews import image_grid
from condiff.evaluation.cli_args import add_sweep_arguments
from condiff.evaluation.likelihood_cli import add_nll_parser
from condiff.loading import folder_pipeline, label_space
from condiff.options import (
    EXTRAS,
    FAST_MODEL,
    IMAGE_SUFFIXES,
    PIPELINE_MODULES,
    SPATIAL_PIPELINES,
    missing_module_message,
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to each option's help, unless the help already states it or there is none (None/False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


@contextlib.contextmanager
def quiet_libraries(quiet: bool) -> Iterator[None]:
    """With `quiet`: no diffusers / huggingface_hub progress bars ("Loading pipeline components...") and only
    their errors logged; the previous settings are restored afterwards."""
    if not quiet:
        yield
        return
    import huggingface_hub.utils as hub_utils
    from diffusers.utils import logging as diffusers_logging

    bar, level, hub_bars_off = (
        diffusers_logging.is_progress_bar_enabled(),
        diffusers_logging.get_verbosity(),
        hub_utils.are_progress_bars_disabled(),
    )
    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    hub_utils.disable_progress_bars()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)
        if bar:
            diffusers_logging.enable_progress_bar()
        if not hub_bars_off:
            hub_utils.enable_progress_bars()


def resolve_pipeline(args: argparse.Namespace) -> str:
    """--pipeline, or "latent" when --prompt is given without it; text options need the latent pipeline, --label
    the others (checked before any model work)."""
    prompt, negative = getattr(args, "prompt", None), getattr(args, "negative_prompt", None)
    pipeline = args.pipeline or ("latent" if prompt else "class-conditional")
    if pipeline == "latent":
        if getattr(args, "label", None) is not None:
            raise ValueError("--label does not apply to --pipeline latent (a text-to-image model): use --prompt")
        if not prompt and args.command == "generate":
            raise ValueError('a text-to-image model (--pipeline latent) needs --prompt, e.g. --prompt "a thick seven"')
    elif prompt or negative:
        raise ValueError(f"--prompt and --negative-prompt need --pipeline latent, not {pipeline}")
    check_spatial_arguments(args, pipeline)
    args.pipeline = pipeline
    return pipeline


def guidance_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline's guidance arguments from the command line; options of the other pipeline kind are refused."""
    resolve_pipeline(args)
    if args.pipeline != "classifier-guided":
        given = [flag for flag, value in CG_ONLY.items() if getattr(args, value) is not None]
        if given:
            raise ValueError(f"{given[0]} needs --pipeline classifier-guided")
        kwargs = {} if args.guidance_scale is None else {"guidance_scale": args.guidance_scale}
        kwargs |= {} if args.guidance_interval is None else {"guidance_interval": tuple(args.guidance_interval)}
        return kwargs | ({} if args.guidance is None else {"guidance": args.guidance})
    kwargs = {"guidance_scale": args.guidance_scale, "guidance_method": args.guidance_method}
    kwargs |= {} if args.guidance_interval is None else {"guidance_interval": tuple(args.guidance_interval)}
    kwargs |= {} if args.guidance is None else {"guidance": args.guidance}
    return kwargs | ({} if args.classifier_scale is None else {"classifier_scale": args.classifier_scale})


CG_ONLY = {"--classifier-scale": "classifier_scale", "--guidance-method": "guidance_method"}


def use_fast_model(args: argparse.Namespace, prompt: str | None) -> None:
    """--fast: the shipped one-step generator as --model; refused beside another model or pipeline kind."""
    from condiff import shipped_model_path

    if args.model is not None:
        raise ValueError(f"--fast picks the shipped one-step model; drop it or --model {args.model!r}")
    if prompt is not None or args.pipeline not in (None, "class-conditional"):
        given = "--prompt" if prompt is not None else f"--pipeline {args.pipeline}"
        raise ValueError(f"--fast is a class-conditional model; it does not go with {given}")
    args.model = str(shipped_model_path(FAST_MODEL))


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Every check that needs no model, in one place before loading: the pipeline kind (--model's model_index.json,
    --pipeline, --prompt; contradictions refused), options of other kinds, --label against the folder's classes,
    optional modules (a missing one named with its extra). Returns the pipeline's guidance arguments."""
    prompt = getattr(args, "prompt", None)
    if args.fast:
        use_fast_model(args, prompt)
    requested = args.pipeline or ("latent" if prompt else None)
    source = f"--pipeline {args.pipeline}" if args.pipeline else "--prompt (a text-to-image model)"
    args.pipeline = folder_pipeline(args.model, requested, source)
    guidance = guidance_kwargs(args)
    label = parse_label(getattr(args, "label", None))
    if label is not None and not (label == "auto" and args.pipeline == "super-resolution"):
        check_labels(label, label_space(args.model, args.pipeline))
    if getattr(args, "attributes", 0) and args.pipeline != "latent":
        raise ValueError(f"--attributes needs a text-to-image model (--pipeline latent), not {args.pipeline}")
    for module in PIPELINE_MODULES.get(args.pipeline, ()):
        if importlib.util.find_spec(module) is None:
            raise ValueError(missing_module_message(module, f"--pipeline {args.pipeline}"))
    return guidance


def generate(args: argparse.Namespace) -> Path:
    """`condiff generate`: --num-images per label; one grid row per label when several are given."""
    out = check_output_file(args.out, "--out", IMAGE_SUFFIXES, args.overwrite)
    strip_out = None
    if args.steps_strip:
        strip_out = check_output_file(args.steps_strip, "--steps-strip", IMAGE_SUFFIXES, args.overwrite)
    if strip_out and strip_out == out:
        raise ValueError("--steps-strip and --out name the same file")
    guidance = prepare(args) | corrector_kwargs(args)
    import io

    import torch
    from PIL import Image

    from condiff.demo.previews import StepRecorder
    from condiff.files import atomic_write_bytes
    from condiff.loading import load_pipeline

    pipe = load_pipeline(args.model, args.scheduler, pipeline=args.pipeline)
    pipe.set_progress_bar_config(disable=args.quiet)
    kwargs = {} if args.steps is None else {"num_inference_steps": args.steps}
    recorder = StepRecorder() if strip_out else None
    kwargs |= recorder.call_kwargs() if recorder else {}
    generator = torch.Generator().manual_seed(args.seed)
    if args.pipeline in SPATIAL_PIPELINES:
        label, num_labels = parse_label(args.label), 1
        kwargs |= {} if args.noise_level is None else {"noise_level": args.noise_level}
        kwargs |= {"image": read_condition_image(args.image, args.pipeline), "label": label}
        images = pipe(num_images_per_prompt=args.num_images, generator=generator, **guidance, **kwargs).images
    elif args.pipeline == "latent":
        label, num_labels = args.prompt, len(args.prompt)
        kwargs |= {"prompt": args.prompt, "negative_prompt": args.negative_prompt}
        images = pipe(num_images_per_prompt=args.num_images, generator=generator, **guidance, **kwargs).images
    else:
        label = parse_label(args.label)
        num_labels = len(label) if isinstance(label, list) else 1
        images = pipe(
            label=label, num_images_per_label=args.num_images, generator=generator, **guidance, **kwargs
        ).images
    cols = args.num_images if num_labels > 1 else math.ceil(math.sqrt(len(images)))
    data = io.BytesIO()
    image_grid(images, cols, args.upscale).save(data, format=Image.registered_extensions()[out.suffix.lower()])
    atomic_write_bytes(out, data.getvalue())
    settings = "".join(f", {k}={v}" for k, v in guidance.items() if v is not None)
    counts = f"{len(images)} images: {args.num_images} per label x {num_labels} label(s)"
    print(f"wrote {out} ({counts}, label={label}{settings})")
    if recorder is not None:
        write_steps_strip(recorder, strip_out, args.upscale)
    return out


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """`condiff evaluate`: accuracy and Frechet distance of generated samples, as JSON
    (`condiff.evaluation.evaluate_command`)."""
    if args.out:
        check_output_file(args.out, "--out", (".json",), args.overwrite)
    guidance = prepare(args)
    from condiff.evaluation.evaluate_command import run_from_args

    return run_from_args(args, guidance)


def sweep(args: argparse.Namespace) -> None:
    """`condiff sweep`: the guidance sweep (`condiff.evaluation.sweep`); matplotlib is checked first."""
    if importlib.util.find_spec("matplotlib") is None:  # before any model work, not after the whole sweep
        raise ValueError(missing_module_message("matplotlib", "condiff sweep (its plot)"))
    from condiff.evaluation.sweep import run_from_args

    run_from_args(args)


def train(argv: list[str]) -> int:
    """`condiff train <task> ...` = `python -m condiff.train <task> ...` (which parses its own flags)."""
    from condiff.train import main as train_main

    train_main(argv)
    return 0


def assemble_classifier_guided(argv: list[str]) -> int:
    """`condiff assemble-classifier-guided ...` (`condiff.assemble`, which parses its own flags)."""
    from condiff.assemble import main as assemble_main

    assemble_main(argv, prog="condiff assemble-classifier-guided")
    return 0


# Commands that parse their own arguments: main() hands them everything after the command name.
FORWARDED: dict[str, Callable[[list[str]], int]] = {
    "train": train,
    "assemble-classifier-guided": assemble_classifier_guided,
}


def build_parser() -> argparse.ArgumentParser:
    """The `condiff` parser (light: no torch)."""
    p = argparse.ArgumentParser(
        prog="condiff", description="Conditional diffusion models on diffusers.", formatter_class=HelpFormatter
    )
    p.add_argument("--version", action="version", version=f"condiff {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    g = sub.add_parser("generate", help="write a grid of generated images", formatter_class=HelpFormatter)
    add_model_arguments(g)
    add_corrector_arguments(g)
    g.add_argument(
        "--label",
        default=None,
        help='class id or name, a comma-separated list (one grid row per label), or "none" '
        '(default: none, i.e. unconditional); super-resolution: "auto", the class its classifier sees in --image',
    )
    g.add_argument(
        "--prompt",
        nargs="+",
        default=None,
        help='text prompt(s) for --pipeline latent, one grid row per prompt: --prompt "a thick seven" "a thin 1"',
    )
    g.add_argument("--negative-prompt", default=None, help="negative prompt (--pipeline latent)")
    g.add_argument(
        "--image",
        type=existing_file,
        default=None,
        help="--pipeline super-resolution: the low-resolution image; --pipeline layout: the layout map (a grayscale "
        "PNG or .npy array of category ids, background = the number of classes)",
    )
    g.add_argument(
        "--noise-level",
        type=int_in(0, 999),
        default=None,
        help="--pipeline super-resolution: augmentation level of the input (default: the model's own, 0)",
    )
    g.add_argument(
        "--num-images",
        type=int_in(1, 16384),  # condiff.pipelines.checks.MAX_IMAGES_PER_CALL
        default=16,
        help="images PER LABEL: --label 0,1 --num-images 3 writes 6 images, 2 rows of 3",
    )
    g.add_argument("--out", required=True, help="image file to write (.png, .jpg, ...)")
    g.add_argument("--upscale", type=int_in(1, 64), default=2, help="nearest-neighbour zoom of the grid")
    g.add_argument(
        "--steps-strip",
        default=None,
        metavar="FILE",
        help="also write the denoising strip here: one row per image, one column per step, each tile the step's "
        "denoised estimate x0",
    )
    g.set_defaults(func=generate)
    e = sub.add_parser(
        "evaluate",
        help="conditional accuracy and Frechet distance of generated samples (10-class 28x28 1-channel models)",
        formatter_class=HelpFormatter,
    )
    add_model_arguments(e)
    e.add_argument("--num-per-class", type=int_in(1, 65536), default=100, help="images generated per class")
    e.add_argument("--out", default=None, help="also write the metrics as JSON here")
    e.add_argument(
        "--attributes",
        type=int_in(0, 65536),
        default=0,
        help="text models: also measure attribute control (thick vs thin, slant, negative prompts) with this many "
        "images per digit and word (default: 0, off)",
    )
    e.set_defaults(func=evaluate)
    w = sub.add_parser(
        "sweep",
        help="guidance sweep: accuracy, Frechet distance, diversity, NFE and speed per scale (needs condiff[plots])",
        description="Guidance sweep: accuracy, Frechet distance, diversity, NFE and speed per guidance scale; the "
        'plot needs matplotlib (pip install "condiff[plots]").',
        formatter_class=HelpFormatter,
    )
    add_sweep_arguments(w)
    w.set_defaults(func=sweep, quiet=False)
    add_demo_parser(sub, HelpFormatter)
    add_nll_parser(sub, HelpFormatter)
    sub.add_parser("train", add_help=False, help="train a task: condiff train cfg --output_dir DIR (flags: --help)")
    sub.add_parser(
        "assemble-classifier-guided",
        add_help=False,
        help="a classifier-guided pipeline folder from a trained diffusion model and one or more noise-aware "
        "classifiers (flags: --help)",
    )
    return p


def check_single_values(parser: argparse.ArgumentParser, args: argparse.Namespace, command: str | None) -> None:
    """argparse takes `--flag=--` as "--" followed by no value and stores [] for a one-value flag: refuse it the way
    argparse refuses a missing value (exit 2, naming the flag)."""
    sub = next((a.choices.get(command) for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    for action in (sub or parser)._actions:
        if action.nargs is None and action.type is not None and isinstance(getattr(args, action.dest, None), list):
            (sub or parser).error(f"argument {'/'.join(action.option_strings)}: expected one value")


def main(argv: list[str] | None = None) -> int:
    """Run the `condiff` command; return its exit status (2: bad arguments or input, with a one-line message)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv else None
    try:
        if command in FORWARDED:
            return FORWARDED[command](argv[1:])
        parser = build_parser()
        args = parser.parse_args(argv)
        check_single_values(parser, args, command)
        with quiet_libraries(args.quiet):
            args.func(args)
    except (ValueError, TypeError, OSError) as err:  # OSError: a model folder that is missing or not safetensors
        print(f"condiff {command}: error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:  # an optional dependency that a check above did not foresee
        module = (err.name or "").split(".")[0]
        if module not in EXTRAS:
            raise
        print(f"condiff {command}: error: {missing_module_message(module, f'condiff {command}')}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
