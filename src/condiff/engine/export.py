"""The end of a run: the task's export under the averaged weights, summary, arguments and model card, written
atomically into the output folder; validation logging; the Hub push."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from condiff.engine.checkpoints import TMP_PIPELINE_PREFIX
from condiff.engine.output_dir import OUTPUT_FILES_KEY
from condiff.files import atomic_write_text, describe_write_error, replace_files

SECRET_ARGS = ("hub_token",)


class OutputWriteError(RuntimeError):
    """The trained result or its files could not be written; files already in the output folder are intact."""


def save_outputs(trainer, summary: dict) -> None:
    """Export, summary, arguments and card (main process only).

    Everything is written to a temporary folder inside the output folder first and then moved into place one file
    at a time (an atomic rename each): a failed save (disk full, folder no longer writable) leaves the files of a
    previous run and the checkpoints as they were.
    """
    from condiff.hub import write_model_card

    args, output_dir = trainer.args, trainer.output_dir
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PIPELINE_PREFIX, dir=output_dir))
    try:
        export = trainer.task.export(trainer.averaged_modules(), tmp)
        public = {k: v for k, v in vars(args).items() if k not in SECRET_ARGS}
        atomic_write_text(tmp / "training_args.json", json.dumps(public, indent=2, default=str))
        # The card names where the model will be found: the Hub id when pushing, else the real output folder
        # (never the temporary folder it is staged in).
        repo_id = args.hub_model_id if args.push_to_hub else str(output_dir)
        common = {
            "repo_id": repo_id,
            "model_name": repo_id.rstrip("/").split("/")[-1],
            "dataset": trainer.task.data_description(),
            "training_summary": "\n".join(f"- {k}: {v}" for k, v in summary.items()),
            "command": trainer.command or "(not recorded)",
        }
        write_model_card(tmp, export, common, datasets=getattr(args, "dataset_name", None))
        # What reproduces this run (for tools downstream) and every file this save writes (--overwrite_output_dir
        # removes exactly those); written last, so it lists itself too.
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        record = summary | {"command": trainer.command or None, OUTPUT_FILES_KEY: [*files, "training_summary.json"]}
        atomic_write_text(tmp / "training_summary.json", json.dumps(record, indent=2))
        replace_files(tmp, output_dir)
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputWriteError(
            describe_write_error(err, f"the trained result to {output_dir}", output_dir)
            + ". Files already there and the checkpoints are untouched."
        ) from err
    trainer.accelerator.print(f"Saved to {output_dir} ({json.dumps(summary)})")


def log_validation(trainer, result: dict) -> None:
    """Send a task's validation scalars to the trackers and its images to TensorBoard."""
    import numpy as np
    from PIL import Image

    scalars = {f"validation/{k}": v for k, v in result.items() if isinstance(v, (int, float))}
    if scalars:
        trainer.accelerator.log(scalars, step=trainer.global_step)
    for tracker in trainer.accelerator.trackers:
        if tracker.name != "tensorboard":
            continue
        for name, image in result.items():
            if isinstance(image, Image.Image):
                array = np.asarray(image.convert("RGB"))
                tracker.writer.add_image(name, array, trainer.global_step, dataformats="HWC")
    for module in trainer.modules.trained.values():
        module.train()


def push_outputs(output_dir: Path, args) -> None:
    from condiff.hub import push_folder

    push_folder(output_dir, args.hub_model_id, token=args.hub_token, private=args.hub_private_repo)
