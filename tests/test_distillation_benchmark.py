"""The issue-10 benchmarks on tiny 28 x 28 models (smoke runs of the real code paths): the distillation report's rows,
NFE per image and ratios; the micro-batching report's identical images; `condiff generate` on a student folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from condiff.pipelines import ClassConditionalDDPMPipeline
from diffusers import DDIMScheduler, DDPMScheduler, LCMScheduler
from PIL import Image

from condiff.distillation import guidance_embedded_student
from condiff.models import class_conditional_condition_unet, default_sampling_scheduler

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # what `python benchmarks/<script>.py` puts first on the path

from lib.distillation_benchmark import main as distillation_main  # noqa: E402
from lib.distillation_benchmark import teacher_configs  # noqa: E402


@pytest.fixture(scope="module")
def tiny_family(tmp_path_factory):
    """Folders of a tiny 28 x 28 teacher, its guidance-distilled, consistency and progressive students (random
    weights)."""
    root = tmp_path_factory.mktemp("family")
    torch.manual_seed(0)
    teacher = class_conditional_condition_unet(10, 28, 1, (8, 16), 1, 4)
    train = DDPMScheduler(num_train_timesteps=30, beta_schedule="squaredcos_cap_v2", clip_sample=True)
    ClassConditionalDDPMPipeline(
        unet=teacher, scheduler=default_sampling_scheduler(train), default_num_inference_steps=5,
        default_guidance_interval=(0.3, 0.6),
    ).save_pretrained(root / "teacher")  # fmt: skip
    student = guidance_embedded_student(teacher, 16)
    ClassConditionalDDPMPipeline(  # the teacher's defaults, as the guidance-distillation task exports them
        unet=student, scheduler=default_sampling_scheduler(train), default_num_inference_steps=5,
        default_guidance_interval=(0.3, 0.6),
    ).save_pretrained(root / "guided")  # fmt: skip
    lcm = LCMScheduler.from_config(train.config, original_inference_steps=10)
    lcm_pipe = ClassConditionalDDPMPipeline(unet=student, scheduler=lcm, default_num_inference_steps=2)
    lcm_pipe.save_pretrained(root / "lcm")
    ddim = DDIMScheduler.from_config(train.config, timestep_spacing="trailing", set_alpha_to_one=True)
    ClassConditionalDDPMPipeline(unet=student, scheduler=ddim, default_num_inference_steps=3).save_pretrained(
        root / "pd3"
    )
    ClassConditionalDDPMPipeline(
        unet=student, scheduler=ddim, default_num_inference_steps=1, default_guidance_scale=1.25,
        guidance_scale_range=(1.0, 2.0),
    ).save_pretrained(root / "one-step")  # fmt: skip
    return root


def test_teacher_configs_cover_the_curve_with_plain_cfg_and_the_default_path():
    class Pipe:
        config = type("C", (), {"default_num_inference_steps": 10})()

    configs = teacher_configs(Pipe(), (1, 2, 4, 8, 14), 1.5)
    assert [n for n, _ in configs] == [1, 2, 4, 8, None]
    assert configs[0][1] == {"num_inference_steps": 1, "guidance_scale": 1.0}
    assert configs[2][1] == {"num_inference_steps": 2, "guidance_interval": (0.0, 1.0), "guidance_scale": 1.5}
    assert configs[-1][1] == {"num_inference_steps": 10}  # the default path: the pipeline's interval, the main scale


def test_distillation_benchmark_end_to_end(tiny_family, tmp_path):
    out = tmp_path / "res"
    argv = ["--teacher", str(tiny_family / "teacher"), "--guided", str(tiny_family / "guided"),
            "--lcm", str(tiny_family / "lcm"), "--progressive", str(tiny_family / "pd3"), "--device", "cpu",
            "--one-step", str(tiny_family / "one-step"),
            "--out-dir", str(out), "--quick", "--few-step-guidance-scale", "1.5"]  # fmt: skip
    assert distillation_main(argv) == 0
    report = json.loads((out / "distillation.json").read_text())
    rows = report["rows"]
    assert [r["model"] for r in rows] == [
        "teacher, textbook sampler", "teacher", "teacher", "teacher, default path", "guidance-distilled, default path",
        "guidance-distilled", "guidance-distilled", "consistency-distilled", "consistency-distilled",
        "progressive-distilled", "progressive-distilled", "progressive-distilled", "one-step (one-step)",
    ]  # fmt: skip
    # teacher default: 5 steps, 2 guided; the guided student's: 5 steps, one branch; the progressive stage: its curve
    # (1, 2) and its own 3 steps
    assert [r["nfe_per_image"] for r in rows] == [60.0, 1.0, 2.0, 7.0, 5.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 3.0, 1.0]
    assert rows[7]["sampler"] == "LCMScheduler" and rows[5]["sampler"] == "DPMSolverMultistepScheduler"
    assert {r["sampler"] for r in rows[9:]} == {"DDIMScheduler"}  # the last stage: the curve and its own 3 steps
    # rows guided at every step use the few-step scale; the default paths and the textbook sampler the main one; the
    # one-step generator its own default
    assert [r["guidance_scale"] for r in rows[1:]] == [1.0, 1.5, 3.0, 3.0, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.25]
    assert rows[0]["speedup_vs_textbook"] == pytest.approx(1.0) and rows[3]["speedup_vs_default"] == pytest.approx(1.0)
    for r in rows[1:]:
        assert r["num_scored"] == 20 and 0 <= r["accuracy"] <= 1 and r["speedup_vs_textbook"] > 1
    assert "fastest_meeting_targets" in report["headline"]  # random weights: None is the honest answer
    assert "fastest_meeting_targets" in report["one_nfe_headline"]
    assert "Textbook sampler" in (out / "distillation.md").read_text()
    assert Image.open(out / "distillation.png").size[0] > 100


def test_micro_batching_benchmark_reports_identical_images(tiny_family, tmp_path):
    from condiff.evaluation.micro_batching import main as micro_main

    out = tmp_path / "res"
    argv = ["--model", str(tiny_family / "teacher"), "--device", "cpu", "--out-dir", str(out), "--quick"]
    assert micro_main(argv) == 0
    report = json.loads((out / "micro_batching.json").read_text())
    assert [r["micro_batch_size"] for r in report["rows"]] == [None, 8, 16]
    assert report["num_images"] == 40 and report["fastest"] in (None, 8, 16)
    for r in report["rows"]:  # BLAS may pick other kernels per batch size: float rounding, far below a grey level
        assert r["max_abs_diff"] <= 1e-3 and r["nfe_per_image"] == 7 and r["images_per_second"] > 0
    assert ClassConditionalDDPMPipeline.from_pretrained(tiny_family / "teacher").config.micro_batch_size is None


def test_condiff_generate_runs_a_consistency_student_folder(tiny_family, tmp_path):
    from condiff.cli import main

    out = tmp_path / "g.png"
    assert main(["generate", "--model", str(tiny_family / "lcm"), "--label", "3", "--out", str(out), "--quiet"]) == 0
    assert Image.open(out).size[0] >= 28


def test_the_one_evaluation_headline_takes_only_one_nfe_rows_meeting_issue_23s_targets():
    from lib.distillation_benchmark import headline

    rows = [{"model": "textbook"}] + [
        {"model": m, "sampler": "S", "num_inference_steps": n, "nfe_per_image": float(n), "accuracy": a,
         "fd_ratio_matched": fd, "images_per_second": ips, "speedup_vs_textbook": ips, "speedup_vs_default": 1.0}
        for m, n, a, fd, ips in (("two", 2, 0.999, 1.2, 150.0), ("one-blurry", 1, 0.999, 1.7, 300.0),
                                 ("one-good", 1, 0.996, 1.45, 290.0), ("one-wrong", 1, 0.99, 1.1, 310.0))
    ]  # fmt: skip
    assert headline(rows)["fastest_meeting_targets"] == "one-wrong, S 1 steps"  # issue 10's 0.99 / 2x
    assert headline(rows, 0.995, 1.5, 1)["fastest_meeting_targets"] == "one-good, S 1 steps"
    assert headline(rows, 0.9999, 1.5, 1) == {"fastest_meeting_targets": None}
