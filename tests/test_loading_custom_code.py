"""Folders of different condiff pipelines load side by side in one process through diffusers' custom-pipeline
mechanism (`DiffusionPipeline.from_pretrained(folder, custom_pipeline=folder, trust_remote_code=True)`), each as its
own class, with condiff not importable and diffusers' module cache empty at the start (so a file that staging left out
cannot be found in a stale cache)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_pipeline
from test_classifier_guided_pipeline import make_pipe, noisy_classifier
from test_latent_cfg_pipeline import tiny_latent_pipeline

from condiff.hub import PIPELINE_CLASSES, entry_point, pipeline_code, stage_pipeline_code

LOAD_IN_ONE_PROCESS = """
import sys, torch
sys.modules["condiff"] = None  # make any import of condiff fail
from diffusers import DiffusionPipeline
out, *jobs = sys.argv[1:]
pipes = []
for job in jobs:
    folder, call = job.split("::")
    pipe = DiffusionPipeline.from_pretrained(folder, custom_pipeline=folder, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    pipes.append((pipe, eval(call)))
    print(type(pipe).__name__, type(pipe).__module__)
# every pipeline still samples with its own code after the others were loaded
images = [p(generator=torch.Generator().manual_seed(0), output_type="pt", **c).images for p, c in pipes]
torch.save(images, out)
"""

CALLS = {
    "class_conditional.py": {"label": [0, 2], "guidance_scale": 2.0, "num_inference_steps": 3},
    "classifier_guided.py": {"label": [0, 2], "classifier_scale": 3.0, "num_inference_steps": 3},
    "latent_cfg.py": {"prompt": "a seven", "num_inference_steps": 3},
}


def load_in_one_process(tmp_path: Path, jobs: list[tuple[Path, dict]]) -> tuple[list[torch.Tensor], list[str]]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    args = [sys.executable, "-c", LOAD_IN_ONE_PROCESS, str(tmp_path / "out.pt")]
    args += [f"{folder}::{call!r}" for folder, call in jobs]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(tmp_path / "out.pt", weights_only=True), result.stdout.strip().splitlines()


def expected(pipe, call: dict) -> torch.Tensor:
    return pipe(generator=torch.Generator().manual_seed(0), output_type="pt", **call).images


def test_three_pipeline_folders_load_in_one_process_each_as_its_own_class(tmp_path, encoder_folder):
    pipes = {
        "class_conditional.py": tiny_pipeline(),
        "classifier_guided.py": make_pipe(),
        "latent_cfg.py": tiny_latent_pipeline(encoder_folder),
    }
    jobs = []
    for file, pipe in pipes.items():
        folder = tmp_path / file[:-3]
        pipe.save_pretrained(folder)
        stage_pipeline_code(folder, file)
        jobs.append((folder, CALLS[file]))
    images, lines = load_in_one_process(tmp_path, jobs)
    assert [line.split()[0] for line in lines] == [type(p).__name__ for p in pipes.values()]
    assert [line.split()[1] for line in lines] == [f"diffusers_modules.local.{f[:-3]}" for f in pipes]
    for got, (file, pipe) in zip(images, pipes.items(), strict=True):
        torch.testing.assert_close(got, expected(pipe, CALLS[file]), atol=2e-6, rtol=0)


def test_a_classifier_ensemble_folder_loads_without_condiff(tmp_path):
    from condiff.pipelines.noise_aware_classifier import NoiseAwareClassifierEnsemble

    members = [noisy_classifier(), noisy_classifier(block_out_channels=(8, 8, 16))]
    pipe = make_pipe(classifier=NoiseAwareClassifierEnsemble.from_members(members))
    folder = tmp_path / "ensemble"
    pipe.save_pretrained(folder)
    stage_pipeline_code(folder, "classifier_guided.py")
    images, lines = load_in_one_process(tmp_path, [(folder, CALLS["classifier_guided.py"])])
    assert lines[0].split()[0] == "ClassifierGuidedPipeline"
    torch.testing.assert_close(images[0], expected(pipe, CALLS["classifier_guided.py"]), atol=2e-6, rtol=0)
    unguided = expected(pipe, CALLS["classifier_guided.py"] | {"classifier_scale": 0.0})
    assert (images[0] - unguided).abs().max() > 1e-3  # the ensemble steered the samples


def test_the_shipped_folders_load_in_one_process(tmp_path):
    from condiff import ClassConditionalDDPMPipeline, ClassifierGuidedPipeline, shipped_model_path

    cfg, guided = shipped_model_path(), shipped_model_path("classifier-guided")
    calls = [{"label": [3], "num_inference_steps": 2}, {"label": [7], "num_inference_steps": 2}]
    images, lines = load_in_one_process(tmp_path, [(cfg, calls[0]), (guided, calls[1])])
    assert [line.split()[0] for line in lines] == ["ClassConditionalDDPMPipeline", "ClassifierGuidedPipeline"]
    for got, cls, folder, call in zip(
        images, (ClassConditionalDDPMPipeline, ClassifierGuidedPipeline), (cfg, guided), calls
    ):
        pipe = cls.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        torch.testing.assert_close(got, expected(pipe, call), atol=1e-5, rtol=0)


SHIPPED = {
    "mnist-cfg": "class_conditional.py",
    "mnist-cfg-distilled": "class_conditional.py",
    "mnist-classifier-guided": "classifier_guided.py",
    "mnist-latent-text": "latent_cfg.py",
    "mnist-super-resolution": "super_resolution.py",
    "mnist-layout": "semantic_layout.py",
}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_folders_carry_the_staged_code_of_this_version(name):
    folder = Path(__file__).resolve().parents[1] / "src" / "condiff" / "assets" / name
    repo_pipelines = Path(__file__).resolve().parents[1] / "pipelines"
    assert (folder / "pipeline.py").read_text() == entry_point(SHIPPED[name])
    for target, source in pipeline_code(SHIPPED[name]).items():
        assert (folder / target).read_bytes() == (repo_pipelines / source).read_bytes(), target


def test_the_entry_point_imports_every_file_the_pipeline_needs():
    """diffusers copies only the files that pipeline.py imports relatively: all of them must be named there."""
    import re

    for file in CALLS:
        named = set(re.findall(r"^from \.(\w+) import", entry_point(file), flags=re.MULTILINE))
        assert {f"{m}.py" for m in named} == set(pipeline_code(file)), file
        assert "weights.py" in pipeline_code(file) and "checks.py" in pipeline_code(file)
    assert "noise_aware_classifier.py" in pipeline_code("classifier_guided.py")
    assert "text_encoding.py" in pipeline_code("latent_cfg.py")
    with pytest.raises(ValueError, match="pipeline_file must be one of"):
        entry_point("guidance.py")


def test_each_pipeline_file_imports_every_file_it_needs_itself():
    """`custom_pipeline="pipelines/<file>"` copies only the files that this one file imports relatively (not their
    own imports): each pipeline file names every file of its code, directly."""
    import re

    repo_pipelines = Path(__file__).resolve().parents[1] / "pipelines"
    for file in PIPELINE_CLASSES:
        named = set(re.findall(r"^from \.(\w+) import", (repo_pipelines / file).read_text(), flags=re.MULTILINE))
        missing = set(pipeline_code(file)) - {f"{m}.py" for m in named} - {file}
        assert not missing, f"{file} does not import {sorted(missing)}"


def test_staging_replaces_links_without_writing_through_them(tmp_path):
    target = tmp_path / "elsewhere.py"
    target.write_text("keep me")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "pipeline.py").symlink_to(target)
    (folder / "checks.py").symlink_to(target)
    stage_pipeline_code(folder)
    assert target.read_text() == "keep me"
    assert not (folder / "pipeline.py").is_symlink() and (folder / "pipeline.py").read_text() == entry_point(
        "class_conditional.py"
    )
    linked = tmp_path / "linked"
    linked.mkdir()
    stage_pipeline_code(linked, "latent_cfg.py", link=True)
    assert (linked / "latent_cfg.py").is_symlink() and not os.path.isabs(os.readlink(linked / "latent_cfg.py"))
    assert (linked / "latent_cfg.py").read_bytes() == (
        Path(__file__).resolve().parents[1] / "pipelines" / "latent_cfg.py"
    ).read_bytes()
