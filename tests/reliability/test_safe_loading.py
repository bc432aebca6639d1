"""Safe loading: condiff's own loaders take weights only from safetensors, the pipelines load as diffusers does (a
`.bin` only through the weights-only unpickler), `torch.load` only with weights_only=True (also inside Accelerate's
resume), corrupt / truncated safetensors give errors naming the file, and no remote code runs without
trust_remote_code=True."""

from __future__ import annotations

import ast
import json
import subprocess
from pathlib import Path

import pytest
import torch
from _tiny import REPO, tiny_args, train
from conftest import tiny_pipeline

from condiff import ClassConditionalDDPMPipeline
from condiff.engine.checkpoints import CheckpointError, checkpoint_problem, load_ema

CODE_DIRS = ("src", "pipelines", "scripts", "benchmarks")
# condiff's own loaders (CLI, training, evaluation) take safetensors only; the pipelines in pipelines/ load as
# diffusers does (a .bin only through torch's weights-only unpickler: tests/test_loading_weights.py)
WEIGHT_LOADING_DIRS = ("src", "scripts")


def tracked_python_files(dirs) -> list[Path]:
    git = ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *dirs]
    listed = subprocess.run(git, cwd=REPO, capture_output=True, text=True).stdout
    files = [REPO / f for f in listed.split() if f.endswith(".py") and (REPO / f).is_file()]
    return files or [p for d in dirs for p in (REPO / d).rglob("*.py")]


def calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = ast.unparse(func.value) if isinstance(func, ast.Attribute) else ""
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords if k.arg}
            yield node.lineno, owner, name, keywords


def test_no_pickle_loading_paths_in_the_code():
    problems = []
    for path in tracked_python_files(CODE_DIRS):
        rel = path.relative_to(REPO)
        for line, owner, name, kw in calls(path):
            where = f"{rel}:{line}"
            if name == "load" and owner == "torch" and kw.get("weights_only") != "True":
                problems.append(f"{where}: torch.load without weights_only=True")
            if owner in ("pickle", "dill", "cloudpickle", "joblib") and name in ("load", "loads"):
                problems.append(f"{where}: {owner}.{name}")
            if name == "load" and owner in ("np", "numpy") and kw.get("allow_pickle") not in (None, "False"):
                problems.append(f"{where}: np.load with allow_pickle")
            if kw.get("trust_remote_code") == "True":
                problems.append(f"{where}: trust_remote_code=True in library code")
    assert not problems, "\n".join(problems)


def test_library_weight_loading_refuses_non_safetensors():
    problems = []
    for path in tracked_python_files(WEIGHT_LOADING_DIRS):
        if "assets" in path.relative_to(REPO).parts:  # staged copies of pipelines/ (checked below)
            continue
        for line, owner, name, kw in calls(path):
            if owner.endswith(("Tokenizer", "Config")):  # tokenizers and configs hold no weights
                continue
            if owner == "pipeline_class":  # condiff's pipelines: a .bin only weights-only (test_loading_weights.py)
                continue
            if name == "from_pretrained" and kw.get("use_safetensors") != "True":
                problems.append(f"{path.relative_to(REPO)}:{line}: from_pretrained without use_safetensors=True")
    assert not problems, "\n".join(problems)


def test_pipelines_never_ask_for_unsafe_unpickling():
    problems = []
    for path in tracked_python_files(("pipelines",)):
        for line, _, name, kw in calls(path):
            unsafe = {k: v for k, v in kw.items() if (k, v) in {("use_safetensors", "False"), ("allow_pickle", "True")}}
            if unsafe or kw.get("weights_only") == "False":
                problems.append(f"{path.relative_to(REPO)}:{line}: {name} with {unsafe or kw}")
    assert not problems, "\n".join(problems)


def test_resume_uses_torch_load_with_weights_only_only(tmp_path, monkeypatch):
    """Accelerate loads optimizer, scheduler and RNG states with torch.load: every call must be weights_only=True
    (Accelerate 1.x defaults to it; only its custom-object path forces False, and condiff registers none)."""
    out = tmp_path / "run"
    train(tiny_args(out, "--max_train_steps", "2", "--checkpointing_steps", "2"))
    seen = []
    real = torch.load

    def spy(*a, **kw):
        seen.append(kw.get("weights_only"))
        return real(*a, **kw)

    monkeypatch.setattr(torch, "load", spy)
    done = train(tiny_args(out, "--max_train_steps", "3", "--resume_from_checkpoint", "latest"))
    assert json.loads((done / "training_summary.json").read_text())["resumed_from"] == "checkpoint-2"
    assert seen and all(w is True for w in seen), seen
    assert not list(out.rglob("custom_checkpoint_*.pkl")), "a pickled custom object would need weights_only=False"


def truncate(path: Path, keep: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if keep is None else keep])


@pytest.mark.parametrize("keep", [None, 5, 0])
def test_truncated_safetensors_errors_name_the_file(tmp_path, keep):
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "model")
    weights = tmp_path / "model" / "unet" / "diffusion_pytorch_model.safetensors"
    truncate(weights, keep)
    with pytest.raises(OSError, match="diffusion_pytorch_model.safetensors"):
        ClassConditionalDDPMPipeline.from_pretrained(tmp_path / "model", use_safetensors=True)
    from condiff.cli import main

    assert main(["generate", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "g.png")]) == 2
    from condiff.hub import count_unet_parameters

    with pytest.raises(ValueError, match=f"{weights} is not a valid safetensors file"):
        count_unet_parameters(tmp_path / "model")


def test_truncated_checkpoint_files_are_named(tmp_path):
    out = train(tiny_args(tmp_path / "run", "--max_train_steps", "2", "--checkpointing_steps", "2"))
    ckpt = out / "checkpoint-2"
    ema = ckpt / "ema.safetensors"
    truncate(ema)
    assert str(ema) in checkpoint_problem(ckpt)
    from diffusers.training_utils import EMAModel

    from condiff.models import class_conditional_unet

    unet = class_conditional_unet(10, 8, 1, (8, 16), 1, False, 4)
    with pytest.raises(CheckpointError, match=str(ema)):
        load_ema(ema, EMAModel(unet.parameters()))
    with pytest.raises(ValueError, match=f"{ema} is"):
        train(tiny_args(tmp_path / "run", "--max_train_steps", "4", "--resume_from_checkpoint", str(ckpt)))


REMOTE_CODE = "import pathlib\npathlib.Path({marker!r}).write_text('remote code ran')\n"


def test_remote_code_is_never_run_without_trust_remote_code(tmp_path):
    from diffusers import DiffusionPipeline

    marker = tmp_path / "REMOTE_CODE_RAN"
    model = tmp_path / "model"
    tiny_pipeline().save_pretrained(model)
    # 1. pipeline code next to the weights (what the Hub upload stages), with a side effect on import
    (model / "pipeline.py").write_text(REMOTE_CODE.format(marker=str(marker)))
    ClassConditionalDDPMPipeline.from_pretrained(model, use_safetensors=True)
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(model, custom_pipeline=str(model))
    # 2. a component whose class is defined by code in its folder
    index = json.loads((model / "model_index.json").read_text())
    index["unet"] = ["evil", "EvilUNet"]
    (model / "model_index.json").write_text(json.dumps(index))
    (model / "unet" / "evil.py").write_text(
        REMOTE_CODE.format(marker=str(marker)) + "from diffusers import UNet2DModel\nclass EvilUNet(UNet2DModel):\n"
        "    pass\n"
    )
    with pytest.raises(ValueError, match="trust_remote_code"):
        ClassConditionalDDPMPipeline.from_pretrained(model, use_safetensors=True)
    assert not marker.exists(), "remote code ran without trust_remote_code=True"
