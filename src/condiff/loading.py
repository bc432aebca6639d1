"""Loading a saved pipeline by folder or Hub id, with a clear message when the Hub cannot serve it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from condiff.options import PIPELINE_CLASSES, PIPELINES

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
    pipe = pipeline_class.from_pretrained(model or shipped_model_path(pipeline), use_safetensors=True)
    if scheduler:
        pipe.scheduler = scheduler_for(scheduler, pipe.scheduler.config)
    return pipe.to(device) if device is not None else pipe
