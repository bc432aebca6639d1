"""Model cards and Hub uploads for saved pipelines."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData, create_repo, upload_folder

from condiff.files import atomic_write_text, safetensors_problem

# Files of the Hub-loadable pipeline code, copied next to the weights so that
# `DiffusionPipeline.from_pretrained(repo, custom_pipeline=repo, trust_remote_code=True)` works without condiff.
HELPER_CODE = ("checks.py", "guidance.py", "labels.py", "locking.py", "outputs.py", "sampling.py")
# helpers only one pipeline imports
OWN_CODE = {"classifier_guided.py": ("noise_aware_classifier.py",), "latent_cfg.py": ("text_encoding.py",)}


def pipeline_code(pipeline_file: str) -> dict[str, str]:
    """Target name -> file in `pipelines/`: the pipeline's file as `pipeline.py`, with the helpers it imports."""
    helpers = HELPER_CODE + OWN_CODE.get(pipeline_file, ())
    return {"pipeline.py": pipeline_file} | {name: name for name in helpers}


PIPELINE_CODE = pipeline_code("class_conditional.py")
UPLOAD_IGNORE = ["checkpoint-*", "checkpoint-*/**", "logs/**", ".write-test-*", "samples/step-*"]


class HubUploadError(RuntimeError):
    """The Hub could not be reached or refused the upload; the local folder is untouched."""


def model_card_template(name: str) -> Path:
    """A template of `model_cards/` by file name (an absolute path is taken as it is)."""
    if Path(name).is_absolute():
        return Path(name)
    return Path(str(resources.files("condiff.model_cards") / name))


def write_model_card(folder: str | Path, export, common: dict, datasets: str | None = None) -> Path:
    """Render the task's template (`export.card_template` in `model_cards/`) into folder/README.md.

    `common` holds the fields every card has (repo_id, model_name, dataset, training_summary, command);
    `export.fields` the task's own.
    """
    card_data = ModelCardData(
        library_name="diffusers",
        license="apache-2.0",
        tags=["condiff", "diffusers", *export.tags],
        datasets=[datasets] if datasets else None,
        pipeline_tag=export.pipeline_tag,
    )
    template = str(model_card_template(export.card_template))
    card = ModelCard.from_template(card_data, template_path=template, **common, **export.fields)
    path = Path(folder) / "README.md"
    atomic_write_text(path, str(card))  # what ModelCard.save writes, but never a half-written README in place
    return path


def count_unet_parameters(folder: Path) -> int:
    """Parameters in the saved UNet, from the safetensors header only (no tensor is read)."""
    import math

    from safetensors import safe_open

    file = folder / "unet" / "diffusion_pytorch_model.safetensors"
    problem = safetensors_problem(file)
    if problem:
        raise ValueError(problem)
    with safe_open(str(file), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def stage_pipeline_code(folder: str | Path, pipeline_file: str = "class_conditional.py") -> list[Path]:
    """Copy the Hub-loadable code of `pipeline_file` into `folder` (generated from the package: one source of truth)."""
    src = resources.files("condiff.pipelines")
    written = []
    for target, source in pipeline_code(pipeline_file).items():
        dest = Path(folder) / target
        with resources.as_file(src / source) as path:
            shutil.copyfile(path, dest)
        written.append(dest)
    return written


def push_folder(folder: str | Path, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Upload a saved pipeline folder (weights, model card, pipeline code) to the Hub; return the commit URL.

    Raises `HubUploadError` with a clear message when the Hub cannot be reached; nothing local is changed
    apart from the staged pipeline code.
    """
    folder = Path(folder)
    if not any((folder / name).is_file() for name in ("model_index.json", "config.json")):
        raise ValueError(f"{folder} is not a saved pipeline or model folder (no model_index.json or config.json)")
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
            f"Everything is saved locally in {folder}; push it later from Python with "
            f"`from condiff.hub import push_folder; push_folder({str(folder)!r}, {repo_id!r})` "
            f"or with `hf upload {repo_id} {folder} --exclude 'checkpoint-*' --exclude 'logs/*'`."
        ) from err
    return str(info)
