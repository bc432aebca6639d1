"""Assembling a `ClassifierGuidedPipeline` folder from separately trained parts: an unconditional (or
class-conditional) diffusion model saved by `scripts/train_unconditional.py` (or `train_cfg.py`) and a noise-aware
classifier saved by `scripts/train_classifier.py`. The two trainings are independent tasks on the engine; this step
only checks that they fit, copies their weights into one pipeline folder with the Hub-loadable code, and writes the
model card that links both trainings. `condiff assemble-classifier-guided` is the command line
(`scripts/assemble_classifier_guided.py` a wrapper).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from condiff.argtypes import float_in, int_in
from condiff.options import SAMPLERS


def training_record(folder: Path) -> dict[str, Any]:
    """The command and summary a condiff training wrote next to its export (empty when absent)."""
    path = Path(folder) / "training_summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def training_command(folder: Path) -> str:
    """The command that trained a part: from its training_summary.json, else from the "Command:" block of the
    model card condiff wrote next to it (exports made before the summary recorded it)."""
    command = training_record(folder).get("command")
    card = Path(folder) / "README.md"
    if not command and card.is_file():
        found = re.search(r"^Command:\s*```bash\n(.+?)\n```", card.read_text(), re.S | re.M)
        command = found.group(1).strip() if found else None
    return command or "(not recorded)"


def build_pipeline(diffusion_model: str | Path, classifiers: list, sampler: str | None, **config: Any):
    """A `ClassifierGuidedPipeline` from a saved diffusion pipeline folder and one or more saved classifier folders
    (more than one: their `NoiseAwareClassifierEnsemble`)."""
    from diffusers import DiffusionPipeline

    from condiff.data import MNIST_LABEL_NAMES
    from condiff.models import scheduler_for
    from condiff.pipelines import ClassifierGuidedPipeline
    from condiff.pipelines.noise_aware_classifier import NoiseAwareClassifier, NoiseAwareClassifierEnsemble

    base = DiffusionPipeline.from_pretrained(str(diffusion_model), use_safetensors=True)
    members = [NoiseAwareClassifier.from_pretrained(str(c), use_safetensors=True) for c in classifiers]
    clf = members[0] if len(members) == 1 else NoiseAwareClassifierEnsemble.from_members(members)
    scheduler = scheduler_for(sampler, base.scheduler.config) if sampler else base.scheduler
    id2label = getattr(base, "id2label", None)
    if id2label is None and clf.config.num_classes == len(MNIST_LABEL_NAMES):
        id2label = dict(enumerate(MNIST_LABEL_NAMES))
    return ClassifierGuidedPipeline(unet=base.unet, scheduler=scheduler, classifier=clf, id2label=id2label, **config)


def assemble(args: argparse.Namespace) -> Path:
    """Write the pipeline folder `args.output_dir` (replacing it only when `--overwrite` is given and the new folder
    is complete), with the pipeline code, both parts' training records and the model card."""
    from condiff.engine.task import Export
    from condiff.files import replace_files
    from condiff.hub import stage_pipeline_code, write_model_card

    check_args(args)
    out = Path(args.output_dir)
    config = {
        "default_classifier_scale": args.classifier_scale,
        "default_num_inference_steps": args.num_inference_steps,
    }
    pipe = build_pipeline(args.diffusion_model, args.classifier, args.sampler, **config)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".assemble-", ignore_cleanup_errors=True) as tmp_name:
        tmp = Path(tmp_name)
        pipe.save_pretrained(tmp, safe_serialization=True)
        stage_pipeline_code(tmp, "classifier_guided.py")
        copy_records(args.diffusion_model, tmp / "unet", TRAINING_RECORDS)
        for source, part in zip(args.classifier, classifier_parts(args.classifier)):
            copy_records(source, tmp / part, TRAINING_RECORDS + ACCURACY_RECORDS)
        export = Export("classifier_guided.md", card_fields(pipe, args), ["classifier-guidance"])
        write_model_card(tmp, export, {"repo_id": str(out), "model_name": out.name, "dataset": "MNIST"})
        replace_files(tmp, out)
    return out


TRAINING_RECORDS = ("training_summary.json", "training_args.json")
ACCURACY_RECORDS = ("accuracy_by_timestep.json", "accuracy_by_timestep.png")


def classifier_parts(classifiers: list) -> list[str]:
    """Where each classifier's training records go in the folder: `classifier/`, or `classifier/member_<i>/` for
    the members of an ensemble."""
    return ["classifier"] if len(classifiers) == 1 else [f"classifier/member_{i}" for i in range(len(classifiers))]


def copy_records(source: str | Path, target: Path, names: tuple[str, ...]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (Path(source) / name).is_file():
            shutil.copyfile(Path(source) / name, target / name)


def classifier_markdown(folder: Path, indent: str) -> str:
    """A trained classifier's command, summary and accuracy-by-timestep table, as the model card lists them."""
    record = training_record(folder)
    accuracy = folder / "accuracy_by_timestep.json"
    rows = json.loads(accuracy.read_text())["rows"] if accuracy.is_file() else []
    table = ["| t | accuracy |", "|---:|---:|"] + [f"| {r['timestep']} | {r['accuracy']:.3f} |" for r in rows]
    summary = json.dumps({k: v for k, v in record.items() if k != "command"})
    return (
        f"Trained with:\n\n{indent}```bash\n{indent}{training_command(folder)}\n{indent}```\n\n{indent}Summary: "
        f"`{summary}`. Accuracy on noisy test images by timestep:\n\n"
        + ("\n".join(indent + line for line in table) if rows else f"{indent}(no accuracy table found)")
    )


def classifier_part(pipe: Any, classifiers: list) -> str:
    """The model card's item for `classifier/`: one classifier, or an ensemble and each of its members."""

    def params(module: Any) -> str:
        return f"{sum(p.numel() for p in module.parameters()) / 1e3:.0f}k"

    head = f"- `classifier/`: `{type(pipe.classifier).__name__}`, {params(pipe.classifier)} parameters"
    code = "its code in `classifier/noise_aware_classifier.py`"
    if len(classifiers) == 1:
        return f"{head}, {code}. {classifier_markdown(Path(classifiers[0]), '  ')}"
    lines = [
        f"{head} in all, {code}: a product of {len(classifiers)} noise-aware classifiers (guidance follows the mean "
        "of their log-probabilities). Their records are in `classifier/member_<i>/`."
    ]
    for i, (folder, member) in enumerate(zip(classifiers, pipe.classifier.members)):
        channels = list(member.config.block_out_channels)
        lines.append(f"  - member {i}, {params(member)} parameters, channels {channels}. ")
        lines[-1] += classifier_markdown(Path(folder), "    ")
    return "\n\n".join(lines)


def card_fields(pipe: Any, args: argparse.Namespace) -> dict[str, Any]:
    unet_record = training_record(Path(args.diffusion_model))
    return {
        "sampler": type(pipe.scheduler).__name__,
        "guidance_method": pipe.default_guidance_method(),
        "classifier_scale": args.classifier_scale,
        "inference_steps": args.num_inference_steps,
        "unet_parameters": f"{sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.2f}M",
        "unet_command": training_command(Path(args.diffusion_model)),
        "unet_summary": json.dumps({k: v for k, v in unet_record.items() if k != "command"}),
        "classifier_part": classifier_part(pipe, args.classifier),
        "assemble_command": args.command,
        "results": Path(args.results).read_text() if args.results else "Not evaluated yet.",
    }


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The assembler's flags (argparse and the standard library only: `--help` answers at once)."""
    p = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--diffusion_model", required=True, help="saved diffusion pipeline folder (DDPMPipeline or CFG)")
    p.add_argument(
        "--classifier",
        required=True,
        nargs="+",
        help="saved NoiseAwareClassifier folder; several: guide with their product (a NoiseAwareClassifierEnsemble)",
    )
    p.add_argument("--output_dir", required=True)
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default=None, help="default: the diffusion model's own")
    p.add_argument("--classifier_scale", type=float_in(0.0), default=1.0, help="the pipeline's default scale")
    p.add_argument("--num_inference_steps", type=int_in(1, 1000), default=50, help="the pipeline's default steps")
    p.add_argument("--results", default=None, help="a Markdown file of measured results for the model card")
    p.add_argument("--overwrite", action="store_true", help="replace the files of a non-empty --output_dir")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Everything that needs no model: both parts are folders, --output_dir is not a non-empty folder (without
    --overwrite), --results is a file; nothing is created here."""
    for flag, folder in [("diffusion_model", args.diffusion_model)] + [("classifier", c) for c in args.classifier]:
        if not Path(folder).is_dir():
            raise ValueError(f"--{flag} {folder!r} is not a folder")
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output_dir {out} is a file, not a folder")
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise ValueError(f"--output_dir {out} exists and is not empty; pass --overwrite to replace its files")
    if args.results and not Path(args.results).is_file():
        raise ValueError(f"--results {args.results!r} is not a file")


def main(argv: list[str] | None = None, prog: str = "condiff assemble-classifier-guided") -> Path:
    """Parse `argv` (default: sys.argv), check it, assemble, print and return the folder; bad input: ValueError."""
    import shlex
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(prog).parse_args(argv)
    args.command = f"{prog} {shlex.join(argv)}"
    out = assemble(args)
    print(f"wrote {out}")
    return out
