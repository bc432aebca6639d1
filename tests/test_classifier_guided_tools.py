"""Around the ClassifierGuidedPipeline: assembling a pipeline folder from two trained parts, the CLI's
`--pipeline classifier-guided`, and the guidance-method comparison behind the benchmark (tiny 28x28 models)."""

from __future__ import annotations

import json

import pytest
import torch
from condiff.pipelines import ClassifierGuidedPipeline
from condiff.pipelines.noise_aware_classifier import NoiseAwareClassifier, NoiseAwareClassifierEnsemble
from diffusers import DDPMPipeline, DDPMScheduler

from condiff.assemble import main as assemble_main
from condiff.cli import main as cli_main
from condiff.evaluation.guidance_methods import Setting, memory_by_step, run_settings, settings_markdown
from condiff.models import class_conditional_unet


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A saved tiny unconditional DDPMPipeline (28x28) and a saved tiny noise-aware classifier, with the training
    records condiff's engine writes next to an export."""
    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    unet = class_conditional_unet(None, sample_size=28, channels=1, block_out_channels=(8, 16), norm_num_groups=4)
    scheduler = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(root / "unet-model")
    (root / "unet-model" / "training_summary.json").write_text(json.dumps({"command": "train_unconditional.py --x"}))
    clf = NoiseAwareClassifier(block_out_channels=(8, 16), norm_num_groups=4, num_train_timesteps=100)
    clf.save_pretrained(root / "classifier")
    (root / "classifier" / "accuracy_by_timestep.json").write_text(
        json.dumps({"rows": [{"timestep": 0, "accuracy": 0.5}, {"timestep": 99, "accuracy": 0.1}]})
    )
    return root


def assemble(parts, out, *extra):
    argv = ["--diffusion_model", str(parts / "unet-model"), "--classifier", str(parts / "classifier")]
    return assemble_main([*argv, "--output_dir", str(out), "--num_inference_steps", "4", *extra])


def test_assembled_folder_loads_and_carries_the_records(parts, tmp_path):
    out = assemble(parts, tmp_path / "cg", "--classifier_scale", "2.5", "--sampler", "ddim")
    pipe = ClassifierGuidedPipeline.from_pretrained(out)
    assert pipe.config.default_classifier_scale == 2.5 and pipe.config.default_num_inference_steps == 4
    assert type(pipe.scheduler).__name__ == "DDIMScheduler" and pipe.default_guidance_method() == "score"
    assert pipe.id2label[7] == "seven" and pipe.num_classes == 10
    card = (out / "README.md").read_text()
    assert "train_unconditional.py --x" in card and "| 99 | 0.100 |" in card and "--classifier_scale 2.5" in card
    assert (out / "pipeline.py").is_file() and (out / "classifier" / "noise_aware_classifier.py").is_file()
    pipe.set_progress_bar_config(disable=True)
    images = pipe(label=[3, 4], generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert images.shape == (2, 1, 28, 28)


def second_classifier(folder, **config):
    torch.manual_seed(1)
    config = {"block_out_channels": (8, 8, 16), "norm_num_groups": 4, "num_train_timesteps": 100} | config
    NoiseAwareClassifier(**config).save_pretrained(folder)
    (folder / "training_summary.json").write_text(json.dumps({"command": "train_classifier.py --second"}))
    return folder


def test_assembling_two_classifiers_guides_with_their_product(parts, tmp_path):
    second = second_classifier(tmp_path / "second")
    out = assemble(parts, tmp_path / "cg", "--classifier", str(parts / "classifier"), str(second))
    pipe = ClassifierGuidedPipeline.from_pretrained(out)
    assert type(pipe.classifier) is NoiseAwareClassifierEnsemble
    members = [NoiseAwareClassifier.from_pretrained(folder) for folder in (parts / "classifier", second)]
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([0, 40, 99])
    product = torch.stack([m(x, t).log_softmax(-1) for m in members]).mean(0)
    torch.testing.assert_close(pipe.classifier(x, t), product)
    torch.testing.assert_close(pipe.classifier(x, t).log_softmax(-1), product - product.logsumexp(-1, keepdim=True))
    card = (out / "README.md").read_text()
    assert "`NoiseAwareClassifierEnsemble`" in card and "member 1" in card and "train_classifier.py --second" in card
    assert "| 99 | 0.100 |" in card and (out / "classifier" / "member_0" / "accuracy_by_timestep.json").is_file()
    assert (out / "classifier" / "member_1" / "training_summary.json").is_file()
    pipe.set_progress_bar_config(disable=True)
    images = pipe(label=[3, 4], generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert images.shape == (2, 1, 28, 28)


def test_an_ensemble_refuses_members_that_disagree(parts, tmp_path):
    one = NoiseAwareClassifier.from_pretrained(parts / "classifier")
    with pytest.raises(ValueError, match="classifiers must be at least two"):
        NoiseAwareClassifierEnsemble.from_members([one])
    other = NoiseAwareClassifier.from_pretrained(second_classifier(tmp_path / "other", num_train_timesteps=50))
    with pytest.raises(ValueError, match=r"member_configs\[1\] has \{'num_train_timesteps': 50\}"):
        NoiseAwareClassifierEnsemble.from_members([one, other])
    with pytest.raises(ValueError, match="--classifier .*missing.* is not a folder"):
        assemble(parts, tmp_path / "cg", "--classifier", str(parts / "classifier"), str(tmp_path / "missing"))
    assert not (tmp_path / "cg").exists()


def test_assembly_refuses_a_non_empty_folder_and_a_misfit_classifier(parts, tmp_path):
    out = tmp_path / "cg"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="--output_dir .* exists and is not empty; pass --overwrite"):
        assemble(parts, out)
    small = tmp_path / "small-classifier"
    NoiseAwareClassifier(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4).save_pretrained(small)
    argv = ["--diffusion_model", str(parts / "unet-model"), "--classifier", str(small), "--output_dir", str(out)]
    with pytest.raises(ValueError, match="classifier takes 8x8 images"):
        assemble_main([*argv, "--overwrite"])
    assert [p.name for p in out.iterdir()] == ["keep.txt"]  # nothing written, nothing lost


def test_cli_generates_and_refuses_options_of_the_other_pipeline(parts, tmp_path, capsys):
    model = assemble(parts, tmp_path / "cg")
    image = tmp_path / "grid.png"
    argv = ["generate", "--pipeline", "classifier-guided", "--model", str(model), "--label", "1,2", "--quiet"]
    assert cli_main([*argv, "--num-images", "2", "--classifier-scale", "3", "--out", str(image)]) == 0
    assert image.is_file() and "classifier_scale=3.0" in capsys.readouterr().out
    assert cli_main(["generate", "--classifier-scale", "3", "--out", str(tmp_path / "x.png")]) == 2
    assert "--classifier-scale needs --pipeline classifier-guided" in capsys.readouterr().err
    report = tmp_path / "metrics.json"
    evaluate = ["evaluate", "--pipeline", "classifier-guided", "--model", str(model), "--num-per-class", "1"]
    assert cli_main([*evaluate, "--steps", "2", "--classifier-scale", "2", "--out", str(report)]) == 0
    metrics = json.loads(report.read_text())
    assert metrics["pipeline"] == "classifier-guided" and metrics["num_samples"] == 10
    assert metrics["guidance_scale"] is None and 0 <= metrics["accuracy"] <= 1


def test_evaluate_records_the_method_and_scales_that_ran(parts, tmp_path, capsys):
    """Issue 19 item 2: the report names the guidance method and classifier scale actually used, the pipeline's
    defaults resolved (DDPM: the mean shift; the folder's default_classifier_scale), and the scheduler and steps."""
    model = assemble(parts, tmp_path / "cg", "--classifier_scale", "2.5")
    evaluate = ["evaluate", "--model", str(model), "--num-per-class", "1", "--steps", "2", "--overwrite"]
    keys = ("guidance_method", "classifier_scale", "guidance_scale", "scheduler", "num_inference_steps")
    expected = [
        ([], ("mean_shift", 2.5, None, "DDPMScheduler", 2)),
        (["--guidance-method", "score", "--classifier-scale", "4"], ("score", 4.0, None, "DDPMScheduler", 2)),
        (["--scheduler", "ddim"], ("score", 2.5, None, "DDIMScheduler", 2)),
    ]
    for extra, values in expected:
        assert cli_main([*evaluate, *extra, "--out", str(tmp_path / "m.json")]) == 0, capsys.readouterr().err
        report = json.loads((tmp_path / "m.json").read_text())
        assert tuple(report[k] for k in keys) == values, extra
        assert report["pipeline"] == "classifier-guided"  # read from the folder: no --pipeline given


def test_assembling_is_an_installed_command(parts, tmp_path, capsys, monkeypatch):
    """Issue 19 item 9: `condiff assemble-classifier-guided`; bad arguments refused before any model loads, and no
    output folder created."""
    argv = ["assemble-classifier-guided", "--diffusion_model", str(parts / "unet-model")]
    argv += ["--classifier", str(parts / "classifier"), "--num_inference_steps", "3"]
    with monkeypatch.context() as m:
        m.setattr("condiff.assemble.build_pipeline", lambda *a, **k: pytest.fail("a model was loaded"))
        assert cli_main([*argv[:2], str(tmp_path / "none"), *argv[3:], "--output_dir", str(tmp_path / "a/b")]) == 2
        assert "--diffusion_model" in capsys.readouterr().err and not (tmp_path / "a").exists()
        (tmp_path / "full").mkdir()
        (tmp_path / "full" / "keep.txt").write_text("mine")
        assert cli_main([*argv, "--output_dir", str(tmp_path / "full")]) == 2
        assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert cli_main([*argv, "--output_dir", str(tmp_path / "cg")]) == 0
    assert ClassifierGuidedPipeline.from_pretrained(tmp_path / "cg").config.default_num_inference_steps == 3
    assert "condiff assemble-classifier-guided --diffusion_model" in (tmp_path / "cg" / "README.md").read_text()
    with pytest.raises(SystemExit):
        cli_main(["assemble-classifier-guided", "--help"])
    assert "--classifier_scale" in capsys.readouterr().out


def test_run_settings_scores_every_setting_and_restores_schedulers(parts, tmp_path):
    pipe = ClassifierGuidedPipeline.from_pretrained(assemble(parts, tmp_path / "cg"))
    pipe.set_progress_bar_config(disable=True)
    original = pipe.scheduler
    settings = [
        Setting("unguided", "DDPM", "cg", None, 2, {"classifier_scale": 0.0}),
        Setting("guided", "DDIM", "cg", "ddim", 2, {"classifier_scale": 2.0}),
    ]
    report = run_settings({"cg": pipe}, settings, num_per_class=1, batch_size=10, log=lambda line: None)
    assert pipe.scheduler is original
    rows = report["rows"]
    assert [r["sampler"] for r in rows] == ["DDPMScheduler", "DDIMScheduler"]
    assert all(r["num_images"] == 10 and 0 <= r["accuracy"] <= 1 and r["frechet_distance"] > 0 for r in rows)
    assert rows[1]["scale"] == "c=2" and rows[1]["nfe_per_image"] == 2
    assert "| guided | c=2 | DDIMScheduler | 2 |" in settings_markdown(report, "t")
    with pytest.raises(ValueError, match=r"settings name pipelines \['cfg'\]"):
        run_settings({"cg": pipe}, [Setting("x", "x", "cfg", None, 2)], num_per_class=1)


def test_memory_by_step_reads_once_per_step(parts, tmp_path):
    pipe = ClassifierGuidedPipeline.from_pretrained(assemble(parts, tmp_path / "cg"))
    pipe.set_progress_bar_config(disable=True)
    readings = memory_by_step(pipe, label=[1, 2], classifier_scale=2.0, num_inference_steps=3)
    assert len(readings) == 3 and all(r > 0 for r in readings)
