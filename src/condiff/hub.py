"""Model cards and Hub uploads for saved pipelines."""

from __future__ import annotations

import argparse
import json
import shutil
from importlib import resources
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData, create_repo, upload_folder

from condiff.checkpoints import atomic_write_text, safetensors_problem

# Files of the Hub-loadable pipeline code, copied next to the weights so that
# `DiffusionPipeline.from_pretrained(repo, custom_pipeline=repo, trust_remote_code=True)` works without condiff.
PIPELINE_CODE = {"pipeline.py": "class_conditional.py", "guidance.py": "guidance.py", "labels.py": "labels.py"}
UPLOAD_IGNORE = ["checkpoint-*", "checkpoint-*/**", "logs/**", ".write-test-*", "samples/step-*"]


class HubUploadError(RuntimeError):
    """The Hub could not be reached or refused the upload; the local folder is untouched."""


def model_card_template() -> Path:
    return Path(str(resources.files("condiff.model_cards") / "class_conditional.md"))


def write_model_card(
    folder: str | Path,
    args: argparse.Namespace,
    dataset: str,
    summary: dict,
    sample_grid: str | Path | None = None,
    evaluation: str | None = None,
    command: str | None = None,
) -> Path:
    """Render `model_cards/class_conditional.md` with the training arguments and results into folder/README.md."""
    from diffusers import DiffusionPipeline

    folder = Path(folder)
    pipe = DiffusionPipeline.load_config(folder)
    unet_config = (folder / "unet" / "config.json").read_text()
    unet_cfg = json.loads(unet_config)
    id2label = pipe.get("id2label") or {}
    num_params = _count_unet_parameters(folder)
    repo_id = args.hub_model_id or str(folder)
    card_data = ModelCardData(
        library_name="diffusers",
        license="apache-2.0",
        tags=["condiff", "diffusers", "class-conditional", "classifier-free-guidance"],
        datasets=[args.dataset_name] if args.dataset_name else None,
        pipeline_tag="unconditional-image-generation",
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(model_card_template()),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        dataset=dataset,
        class_names=", ".join(f"{k}={v}" for k, v in id2label.items()),
        sample_grid=Path(sample_grid).relative_to(folder).as_posix() if sample_grid else "",
        guidance_scale=args.validation_guidance_scale,
        inference_steps=args.validation_inference_steps,
        num_parameters=f"{num_params / 1e6:.2f}M",
        num_classes=unet_cfg["num_class_embeds"] - 1,
        prediction_type=args.prediction_type,
        noise_schedule=args.noise_schedule,
        num_train_timesteps=args.num_train_timesteps,
        sampler=pipe["scheduler"][1],
        training_summary="\n".join(f"- {k}: {v}" for k, v in summary.items()),
        command=command or "(not recorded)",
        evaluation=evaluation or "Not evaluated yet: run `condiff evaluate --model <this folder>`.",
    )
    path = folder / "README.md"
    atomic_write_text(path, str(card))  # what ModelCard.save writes, but never a half-written README in place
    return path


def _count_unet_parameters(folder: Path) -> int:
    """Parameters in the saved UNet, from the safetensors header only (no tensor is read)."""
    import math

    from safetensors import safe_open

    file = folder / "unet" / "diffusion_pytorch_model.safetensors"
    problem = safetensors_problem(file)
    if problem:
        raise ValueError(problem)
    with safe_open(str(file), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def stage_pipeline_code(folder: str | Path) -> list[Path]:
    """Copy the Hub-loadable pipeline code into `folder` (generated from the package: one source of truth)."""
    src = resources.files("condiff.pipelines")
    written = []
    for target, source in PIPELINE_CODE.items():
        dest = Path(folder) / target
        with resources.as_file(src / source) as path:
            shutil.copyfile(path, dest)
        written.append(dest)
    return written


def push_pipeline_folder(folder: str | Path, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Upload a saved pipeline folder (weights, model card, pipeline code) to the Hub; return the commit URL.

    Raises `HubUploadError` with a clear message when the Hub cannot be reached; nothing local is changed
    apart from the staged pipeline code.
    """
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"{folder} is not a saved pipeline folder (no model_index.json)")
    stage_pipeline_code(folder)
    try:
        create_repo(repo_id, token=token, private=private, exist_ok=True)
        info = upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            token=token,
            ignore_patterns=UPLOAD_IGNORE,
            commit_message="Upload condiff pipeline",
        )
    except Exception as err:  # network errors come as several exception types (httpx, OSError, HfHubHTTPError)
        raise HubUploadError(
            f"could not push {folder} to the Hub as {repo_id!r}: {type(err).__name__}: {err}. "
            f"Everything is saved locally in {folder}; push it later with "
            f"`huggingface-cli upload {repo_id} {folder}`."
        ) from err
    return str(info)
