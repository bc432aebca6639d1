"""`condiff generate/evaluate --model FOLDER` reads the pipeline kind and the classes from the folder's JSON files
(issue 19 items 6 and 10), refuses what argparse could refuse before any model loads, and names the extra of a
missing optional module (item 1)."""

import json
import subprocess
import sys

import pytest

from condiff import shipped_model_path
from condiff.cli import main

CFG, CG, TEXT = (str(shipped_model_path(kind)) for kind in ("class-conditional", "classifier-guided", "latent"))


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if any model is loaded."""
    monkeypatch.setattr("condiff.loading.load_pipeline", lambda *a, **k: pytest.fail("a model was loaded"))


@pytest.fixture
def loads(monkeypatch):
    """Record the pipeline kind and class of every model the CLI loads (and let it load)."""
    import condiff.loading

    real, seen = condiff.loading.load_pipeline, []

    def spy(*args, **kwargs):
        pipe = real(*args, **kwargs)
        seen.append((kwargs.get("pipeline"), type(pipe).__name__))
        return pipe

    monkeypatch.setattr(condiff.loading, "load_pipeline", spy)
    return seen


# --- item 6: the folder's model_index.json decides the pipeline ------------------------------------------------


def test_classifier_guided_folder_runs_classifier_guidance_without_pipeline(loads, tmp_path, capsys):
    argv = ["generate", "--model", CG, "--label", "3", "--num-images", "1", "--steps", "1", "--quiet"]
    code, _, err = run([*argv, "--out", str(tmp_path / "g.png")], capsys)
    assert code == 0, err  # was: an unrelated UNet message
    assert loads == [("classifier-guided", "ClassifierGuidedPipeline")]


def test_text_folder_is_a_text_model_without_pipeline(loads, tmp_path, capsys):
    argv = ["generate", "--model", TEXT, "--prompt", "a thick seven", "--num-images", "1", "--steps", "1", "--quiet"]
    code, _, err = run([*argv, "--out", str(tmp_path / "t.png")], capsys)
    assert code == 0, err
    assert loads == [("latent", "LatentCFGPipeline")]


@pytest.mark.parametrize(
    "argv, names",
    [
        (["--pipeline", "classifier-guided", "--model", CFG, "--label", "3"],
         ["--pipeline classifier-guided does not match", "ClassConditionalDDPMPipeline", "(--pipeline class-con"]),
        (["--pipeline", "class-conditional", "--model", CG, "--label", "3"],
         ["--pipeline class-conditional does not match", "ClassifierGuidedPipeline"]),
        (["--model", CFG, "--prompt", "a seven"],
         ["--prompt (a text-to-image model) does not match", "ClassConditionalDDPMPipeline", "drop --prompt"]),
        (["--model", TEXT, "--label", "3"], ["--label does not apply to --pipeline latent"]),
        (["--model", TEXT], ["a text-to-image model (--pipeline latent) needs --prompt"]),
        (["--model", CFG, "--classifier-scale", "2"], ["--classifier-scale needs --pipeline classifier-guided"]),
    ],
)  # fmt: skip
def test_contradictions_with_the_folder_are_refused_before_loading(argv, names, no_loading, tmp_path, capsys):
    code, _, err = run(["generate", *argv, "--out", str(tmp_path / "x.png")], capsys)
    assert code == 2 and all(name in err for name in names), err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x.png").exists()


def test_evaluate_reads_the_folder_too(no_loading, capsys):
    code, _, err = run(["evaluate", "--pipeline", "latent", "--model", CFG], capsys)
    assert code == 2 and "--pipeline latent does not match" in err and "ClassConditionalDDPMPipeline" in err


def test_a_pipeline_class_condiff_does_not_run_is_named(no_loading, tmp_path, capsys):
    (tmp_path / "ddpm").mkdir()
    (tmp_path / "ddpm" / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    code, _, err = run(["generate", "--model", str(tmp_path / "ddpm"), "--out", str(tmp_path / "x.png")], capsys)
    assert (
        code == 2 and "holds a DDPMPipeline" in err and "ClassifierGuidedPipeline (--pipeline classifier-guided)" in err
    )


def test_a_cached_hub_id_is_read_from_the_cache(no_loading, tmp_path, capsys, monkeypatch):
    import huggingface_hub

    def cache(repo_id, filename, **kwargs):
        assert repo_id == "someone/cg"
        path = shipped_model_path("classifier-guided") / filename
        return str(path) if path.is_file() else None

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", cache)
    argv = ["generate", "--model", "someone/cg", "--pipeline", "class-conditional", "--out", str(tmp_path / "x.png")]
    code, _, err = run(argv, capsys)
    assert code == 2 and "ClassifierGuidedPipeline" in err
    code, _, err = run(["generate", "--model", "someone/cg", "--label", "10", "--out", str(tmp_path / "x.png")], capsys)
    assert code == 2 and "label must be in 0..9, got 10" in err  # the classifier's config, from the cache


# --- item 10: labels checked against the folder's JSON files, before loading; nothing created ------------------


@pytest.mark.parametrize(
    "model, label, message",
    [
        (None, "12", "--label: label must be in 0..9, got 12"),
        (CFG, "3,-1", "--label: label must be in 0..9, got -1"),
        (CG, "10", "--label: label must be in 0..9, got 10"),
        (CFG, "twelve", "--label: label 'twelve' is not a class name; allowed names: 'zero', 'one', 'two'"),
    ],
)
def test_a_label_out_of_range_is_refused_before_loading(model, label, message, no_loading, tmp_path, capsys):
    argv = ["generate", "--label", label, "--out", str(tmp_path / "x.png")] + (["--model", model] if model else [])
    code, _, err = run(argv, capsys)
    assert code == 2 and message in err
    assert list(tmp_path.iterdir()) == []


def test_valid_names_and_ids_pass_the_check(loads, tmp_path, capsys):
    argv = ["generate", "--label", "Seven,0", "--num-images", "1", "--steps", "1", "--quiet"]
    code, _, err = run([*argv, "--out", str(tmp_path / "x.png")], capsys)
    assert code == 0, err


def test_refusals_come_at_once_without_torch(tmp_path):
    """In a fresh process: each refusal within a few seconds and without importing torch (the model loads took
    5-15 s before); no output folder appears."""
    out = tmp_path / "new" / "x.png"
    cases = [
        ["generate", "--label", "12", "--out", str(tmp_path / "x.png")],
        ["generate", "--pipeline", "classifier-guided", "--model", CFG, "--out", str(tmp_path / "x.png")],
        ["generate", "--label", "3", "--out", str(out)],
        ["evaluate", "--model", CG, "--pipeline", "latent"],
    ]
    code = f"""
import sys, time
start = time.perf_counter()
from condiff.cli import main
codes = [main(argv) for argv in {cases!r}]
assert codes == [2, 2, 2, 2], codes
assert "torch" not in sys.modules
print("seconds", time.perf_counter() - start)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split("seconds")[-1]) < 4.0
    assert not out.parent.exists() and list(tmp_path.iterdir()) == []


# --- item 1: a missing optional module is one line naming its extra --------------------------------------------


def test_missing_transformers_names_the_text_extra_before_loading(no_loading, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a)
    )
    code, _, err = run(["generate", "--prompt", "a thick seven", "--out", str(tmp_path / "x.png")], capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        "condiff generate: error: --pipeline latent needs transformers, which is not installed: "
        'pip install "condiff[text]"'
    ]
    code, _, err = run(["evaluate", "--pipeline", "latent"], capsys)
    assert code == 2 and 'pip install "condiff[text]"' in err


def test_an_unforeseen_missing_module_is_one_line_too(tmp_path, capsys, monkeypatch):
    def missing(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'transformers'", name="transformers")

    monkeypatch.setattr("condiff.loading.load_pipeline", missing)
    code, _, err = run(["generate", "--label", "3", "--out", str(tmp_path / "x.png")], capsys)
    assert code == 2 and "Traceback" not in err
    assert 'condiff generate needs transformers, which is not installed: pip install "condiff[text]"' in err

    def other(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'nothing_like_it'", name="nothing_like_it")

    monkeypatch.setattr("condiff.loading.load_pipeline", other)
    with pytest.raises(ModuleNotFoundError):  # not an optional dependency: a real bug, shown as one
        main(["generate", "--label", "3", "--out", str(tmp_path / "y.png")])


def test_generate_loads_a_folder_saved_with_pickled_weights(tmp_path, capsys):
    """`save_pretrained(safe_serialization=False)` folders load in the CLI too (weights-only unpickler)."""
    from conftest import tiny_pipeline

    tiny_pipeline().save_pretrained(tmp_path / "model", safe_serialization=False)
    assert not list((tmp_path / "model").rglob("*.safetensors"))
    out = tmp_path / "grid.png"
    code, _, err = run(
        [
            "generate",
            "--model",
            str(tmp_path / "model"),
            "--label",
            "1",
            "--num-images",
            "2",
            "--steps",
            "2",
            "--out",
            str(out),
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    assert out.stat().st_size > 0
