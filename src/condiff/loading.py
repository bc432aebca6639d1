"""Loading a saved pipeline by folder or Hub id, with a clear message when the Hub cannot serve it; reading what a
folder holds (its pipeline class, classes and label names) from its JSON files, without loading any weights."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from condiff.options import PIPELINE_CLASSES, PIPELINE_KINDS, PIPELINES

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # "name" or "owner/name"
LOCAL_FOLDER_HINT = (
    "a local pipeline folder works offline: --model path/to/folder (written by save_pretrained or `condiff train`)"
)


def hub_load_error(model: str, err: BaseException) -> str:
    """Why `model`, not a local folder, could not be loaded as a Hub id (diffusers' own message points at a
    stacktrace that the CLI does not show)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import RepositoryNotFoundError

    causes = [err, err.__cause__, err.__context__]
    if any(isinstance(c, RepositoryNotFoundError) for c in causes):
        why = "the Hugging Face Hub has no model by that name (or it is private or gated: log in with `hf auth login`)"
    elif constants.is_offline_mode() or any(
        isinstance(c, ConnectionError) or "Connect" in type(c).__name__ or "Network" in type(c).__name__ for c in causes
    ):
        offline = " (offline mode: HF_HUB_OFFLINE is set)" if constants.is_offline_mode() else ""
        why = f"the Hugging Face Hub cannot be reached{offline} and the model is not in the local cache"
    else:
        why = str(err).replace(" Please check out the root cause in the stacktrace above.", "").splitlines()[0]
    return f"--model {model!r} is not a local folder, so it was looked up on the Hub: {why}; {LOCAL_FOLDER_HINT}"


def load_pipeline(
    model: str | None = None,
    scheduler: str | None = None,
    device: str | None = None,
    pipeline: str = "class-conditional",
) -> Any:
    """A saved pipeline of kind `pipeline` ("class-conditional": `ClassConditionalDDPMPipeline`, "classifier-guided":
    `ClassifierGuidedPipeline`) from a folder or Hub id (default: the shipped model of that kind), with the scheduler
    named by `scheduler` (a key of `condiff.options.SAMPLERS`; default: the model's own), moved to `device` when
    given. A `model` that is neither a folder nor a loadable Hub id gives a ValueError that says why."""
    if pipeline not in PIPELINES:
        raise ValueError(f"--pipeline must be one of {PIPELINES}, got {pipeline!r}")
    local = model is None or Path(model).exists()
    if not local and not HUB_ID.match(model):
        raise ValueError(f"--model {model!r}: no such folder (and not a Hub id of the form owner/name)")
    try:
        return _load(model, scheduler, device, pipeline)
    except OSError as err:
        if local:
            raise
        raise ValueError(hub_load_error(model, err)) from None


def _load(model: str | None, scheduler: str | None, device: str | None, pipeline: str) -> Any:
    import condiff.pipelines
    from condiff import shipped_model_path
    from condiff.models import scheduler_for

    pipeline_class = getattr(condiff.pipelines, PIPELINE_CLASSES[pipeline])
    # the pipelines load as diffusers does: safetensors first, a .bin only through torch's weights-only unpickler
    pipe = pipeline_class.from_pretrained(model or shipped_model_path(pipeline))
    if scheduler:
        pipe.scheduler = scheduler_for(scheduler, pipe.scheduler.config)
    return pipe.to(device) if device is not None else pipe


def read_folder_json(model: str | None, name: str, pipeline: str = "class-conditional") -> dict[str, Any] | None:
    """The JSON file `name` ("model_index.json", "unet/config.json") of a pipeline folder, without loading weights:
    from the folder (default: the shipped one of kind `pipeline`) or, for a Hub id, from the local Hub cache. None
    when it is not there (a Hub id not downloaded yet)."""
    from condiff import shipped_model_path

    if model is None or Path(model).exists():
        path = (shipped_model_path(pipeline) if model is None else Path(model)) / name
        return json.loads(path.read_text()) if path.is_file() else None
    if not HUB_ID.match(model):
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, name)
    return json.loads(Path(cached).read_text()) if isinstance(cached, str) else None


def folder_pipeline(model: str | None, requested: str | None, source: str = "--pipeline") -> str | None:
    """The pipeline kind a folder holds (its model_index.json's `_class_name`), or `requested` when that cannot be
    read (no model, or a Hub id not in the cache). A `requested` kind (given by `source`) that contradicts the folder,
    or a class condiff does not run, is a ValueError naming both."""
    index = None if model is None else read_folder_json(model, "model_index.json")
    if index is None:
        return requested
    class_name = index.get("_class_name")
    kind = PIPELINE_KINDS.get(class_name)
    if kind is None:
        runs = ", ".join(f"{name} (--pipeline {k})" for name, k in PIPELINE_KINDS.items())
        raise ValueError(f"--model {model!r} holds a {class_name} (its model_index.json); condiff runs {runs}")
    if requested is not None and requested != kind:
        raise ValueError(
            f"{source} does not match --model {model!r}: its model_index.json names {class_name} "
            f"(--pipeline {kind}); drop {source.split()[0]} or pick another model"
        )
    return kind


def label_space(model: str | None, pipeline: str) -> tuple[int | None, dict[int, str]] | None:
    """(number of classes or None, id2label) of a pipeline folder from its JSON files (the classifier's classes for a
    classifier-guided folder, else the UNet's class embeddings less the null class); None when unreadable."""
    index = read_folder_json(model, "model_index.json", pipeline)
    if index is None:
        return None
    id2label = {int(k): str(v) for k, v in (index.get("id2label") or {}).items()}
    classifier = (
        read_folder_json(model, "classifier/config.json", pipeline) if pipeline == "classifier-guided" else None
    )
    if classifier and classifier.get("num_classes"):
        return int(classifier["num_classes"]), id2label
    embeds = (read_folder_json(model, "unet/config.json", pipeline) or {}).get("num_class_embeds")
    return (int(embeds) - 1 if embeds else None), id2label
