"""What a training task supplies to the engine (and nothing else: the engine never indexes a batch)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Modules:
    """A task's networks by name: `trained` ones are optimised, EMA-averaged and checkpointed; `frozen` ones are
    moved to the device and used, never optimised, averaged or saved; `tracked` ones are state the task updates
    itself (`Task.after_update`, e.g. a consistency model's target network): moved to the device, saved in every
    checkpoint (safetensors) and restored on resume, never optimised. `modules.unet` finds any kind."""

    trained: dict[str, Any]
    frozen: dict[str, Any] = field(default_factory=dict)
    tracked: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        for group in ("trained", "frozen", "tracked"):
            found = self.__dict__.get(group, {})
            if name in found:
                return found[name]
        raise AttributeError(
            f"no module named {name!r} (trained: {list(self.trained)}, frozen: {list(self.frozen)}, "
            f"tracked: {list(self.tracked)})"
        )


@dataclass
class Export:
    """What a task wrote into the export folder, for the model card (`fields` fill the task's template)."""

    card_template: str  # a file name in condiff's model_cards/
    fields: dict[str, Any]
    tags: list[str] = field(default_factory=list)
    pipeline_tag: str | None = None


class Task:
    """One training task (one script): its flags, modules, data, loss, validation and export.

    Subclasses set `name` (the script is `scripts/train_<name>.py`), `description`, and optionally `defaults`
    (engine flag defaults for this task), and implement the methods below. All randomness of `loss` must come from
    the generator it is handed: the engine derives it from (seed, process, epoch, batch), which makes resume exact.
    """

    name: str = ""
    description: str = ""
    defaults: dict[str, Any] = {}
    global_step: int = 0  # optimizer updates done before the current one (the trainer keeps it current)

    def __init__(self, args: argparse.Namespace):
        self.args = args

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add the task's own flags."""

    def check_args(self) -> None:
        """Raise ValueError naming the flag for a bad task flag (called before any data or model work)."""

    def plan(self, total_steps: int) -> None:
        """Called once the run's length (optimizer steps, resumed ones included) is known, before training: settle
        settings that depend on it (e.g. a validation grid sized to the run)."""

    def dataset(self) -> Any:
        """The training data: anything a torch DataLoader takes (len and indexing)."""
        raise NotImplementedError

    def collate(self, rows: list) -> Any:
        """Turn a list of dataset rows into one batch (whatever `loss` expects)."""
        raise NotImplementedError

    def build(self) -> Modules:
        """Create the modules (after `dataset`, so data properties such as channels can size them)."""
        raise NotImplementedError

    def loss(self, modules: Modules, batch: Any, generator) -> tuple[Any, dict[str, float]]:
        """The scalar loss tensor of one micro-batch and extra scalars to log; all noise from `generator`."""
        raise NotImplementedError

    def after_update(self, modules: Modules) -> None:
        """Called after every optimizer update (and the EMA step), e.g. to move a `tracked` target network."""

    def validate(self, modules: Modules, step: int, output_dir: Path) -> dict[str, Any]:
        """Validation on the averaged weights: scalars and PIL images to log (images also saved by the task).

        Called every `--validation_steps` steps except the last: `export` measures the final weights itself."""
        return {}

    def export(self, modules: Modules, folder: Path) -> Export:
        """Save the trained result (a pipeline or a component) into `folder`, under the averaged weights."""
        raise NotImplementedError

    def data_description(self) -> str:
        """What the card says the model was trained on."""
        return "the task's data"

    def summary_fields(self) -> dict[str, Any]:
        """Task-specific entries of `training_summary.json` (e.g. how many bad images were skipped)."""
        return {}
