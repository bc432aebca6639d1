"""Gated CFG (`GatedClassifierFreeGuidance`): the gate's math, per-image selection between the CFG and the
conditional prediction, the curve fitted from unguided paths, the config round trip and refusals."""

import math

import pytest
import torch
from condiff.pipelines.guidance import gate_curve_at, x0_difference_rms
from condiff.pipelines.guiders import ClassifierFreeGuidance, GateCurveRecorder, GatedClassifierFreeGuidance, Step
from conftest import tiny_pipeline
from diffusers import DDIMScheduler

from condiff import ClassConditionalDDPMPipeline
from condiff.evaluation import fit_gate_curve

CURVE = ((900.0, 0.4), (100.0, 0.004))


def test_gate_curve_is_log_interpolated_and_flat_outside():
    assert gate_curve_at(CURVE, 900) == pytest.approx(0.4)
    assert gate_curve_at(CURVE, 500) == pytest.approx(0.04)  # halfway in log: sqrt(0.4 * 0.004)
    assert gate_curve_at(CURVE, 999) == pytest.approx(0.4) and gate_curve_at(CURVE, 0) == pytest.approx(0.004)


@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction", "sample"])
def test_x0_difference_rms_is_the_rms_of_the_denoised_estimates_difference(ptype):
    x, cond, uncond = torch.randn(3, 2, 1, 4, 4)
    abar = torch.tensor(0.3)
    a, b = math.sqrt(0.3), math.sqrt(0.7)
    factor = {"epsilon": b / a, "v_prediction": b, "sample": 1.0}[ptype]
    expected = factor * (cond - uncond).flatten(1).pow(2).mean(1).sqrt()
    assert torch.allclose(x0_difference_rms(x, cond, uncond, abar, ptype), expected, atol=1e-6)


def test_the_gate_guides_exactly_the_images_whose_difference_exceeds_threshold_times_the_curve():
    scheduler = DDIMScheduler(num_train_timesteps=1000, prediction_type="sample")
    x = torch.zeros(3, 1, 4, 4)
    step = Step(0, torch.tensor(500), 10, x, x, scheduler, guidance_scale=3.0)
    cond = torch.zeros(3, 1, 4, 4)
    uncond = torch.stack([torch.full((1, 4, 4), v) for v in (0.01, 0.05, 0.2)])  # rms 0.01, 0.05, 0.2; m(500) = 0.04
    gated = GatedClassifierFreeGuidance((0.0, 1.0), CURVE, threshold=1.2)
    out = gated.combine(step, {"cond": cond, "uncond": uncond})
    cfg = ClassifierFreeGuidance().combine(step, {"cond": cond, "uncond": uncond})
    assert torch.equal(out[0], cond[0]) and torch.equal(out[1:], cfg[1:])  # 0.01 and 0.05 vs 1.2 * 0.04 = 0.048


def run(pipe, **kwargs):
    kwargs = {"output_type": "latent", "num_inference_steps": 4, "label": [0, 1, 2, 0], **kwargs}
    out = pipe(generator=[torch.Generator().manual_seed(i) for i in range(4)], **kwargs)
    return out.images, out.nfe_per_image


@pytest.fixture(scope="module")
def gated_pipe():
    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    pipe.register_to_config(gated_cfg_curve=fit_gate_curve(pipe, num_images=12, num_inference_steps=4))
    return pipe


def test_gated_cfg_at_the_extremes_is_cfg_or_the_conditional_model(gated_pipe):
    cfg, nfe_cfg = run(gated_pipe, guidance_scale=3.0)
    everyone = GatedClassifierFreeGuidance((0.0, 1.0), tuple(map(tuple, gated_pipe.config.gated_cfg_curve)), 0.0)
    nobody = GatedClassifierFreeGuidance((0.0, 1.0), everyone.curve, 1e9)
    guided_all, nfe_all = run(gated_pipe, guidance=everyone, guidance_scale=3.0)
    guided_none, nfe_none = run(gated_pipe, guidance=nobody, guidance_scale=3.0)
    conditional, _ = run(gated_pipe, guidance_scale=1.0)
    assert torch.equal(guided_all, cfg) and torch.equal(guided_none, conditional)
    assert nfe_cfg == nfe_all == nfe_none == 8  # both branches run on every guided step, gated or not


def test_gated_cfg_mixes_per_image_and_each_image_is_independent_of_its_batch(gated_pipe):
    cfg, _ = run(gated_pipe, guidance_scale=3.0)
    conditional, _ = run(gated_pipe, guidance_scale=1.0)
    gated, nfe = run(gated_pipe, guidance="gated_cfg", guidance_scale=3.0, guidance_interval=(0.0, 1.0))
    assert nfe == 8 and not torch.equal(gated, cfg) and not torch.equal(gated, conditional)
    for i, label in enumerate([0, 1, 2, 0]):
        alone = gated_pipe(label=label, generator=torch.Generator().manual_seed(i), guidance="gated_cfg",
                           guidance_scale=3.0, num_inference_steps=4, output_type="latent").images  # fmt: skip
        assert torch.allclose(alone[0], gated[i], atol=1e-5)


def test_the_fitted_curve_is_the_median_of_the_unguided_paths(gated_pipe):
    curve = gated_pipe.config.gated_cfg_curve
    assert [t for t, _ in curve] == sorted((t for t, _ in curve), reverse=True) and len(curve) == 4
    recorder = GateCurveRecorder()  # the same 12 paths again: half the images lie above the median at every step
    from condiff.evaluation.sampling import balanced_labels

    labels = [int(v) for v in balanced_labels(gated_pipe.num_classes, 4)[:12]]
    gated_pipe(label=labels, guidance=recorder, num_inference_steps=4, generator=torch.Generator().manual_seed(1000))
    for t, median in curve:
        rms = torch.cat(recorder.records[t])
        assert float(rms.median()) == pytest.approx(median) and int((rms > median).sum()) in (5, 6)


def test_the_curve_travels_with_the_saved_pipeline(gated_pipe, tmp_path):
    gated_pipe.save_pretrained(tmp_path)
    loaded = ClassConditionalDDPMPipeline.from_pretrained(tmp_path)
    assert loaded.config.gated_cfg_curve == gated_pipe.config.gated_cfg_curve
    loaded.set_progress_bar_config(disable=True)
    assert torch.allclose(run(loaded, guidance="gated_cfg")[0], run(gated_pipe, guidance="gated_cfg")[0], atol=1e-5)


def test_gated_cfg_without_a_curve_or_with_a_bad_one_is_refused():
    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match="gated_cfg_curve"):
        pipe(label=1, guidance="gated_cfg", num_inference_steps=2)
    with pytest.raises(ValueError, match="gated_cfg_curve"):
        ClassConditionalDDPMPipeline(pipe.unet, pipe.scheduler, gated_cfg_curve=[[500, -1.0], [100, 0.1]])
    with pytest.raises(ValueError, match="default_guidance must be one of"):
        ClassConditionalDDPMPipeline(pipe.unet, pipe.scheduler, default_guidance="gated")


def test_measure_on_seeds_resumes_and_averages(tmp_path):
    from condiff.evaluation.gating import measure_on_seeds, seeds_markdown

    calls = []

    def evaluate(pipe, num_per_class, seed, **kwargs):
        calls.append((seed, kwargs["w"]))
        return {"accuracy": 0.99, "fd_ratio_matched": kwargs["w"] + seed / 10, "nfe_per_image": 14.0}

    points = tmp_path / "points.jsonl"
    settings = {"a": {"w": 1.0}, "b": {"w": 2.0}}
    measure_on_seeds("P", {"a": settings["a"]}, [0, 4], points, evaluate)
    rows = measure_on_seeds("P", settings, [0, 4], points, evaluate)
    assert calls == [(0, 1.0), (4, 1.0), (0, 2.0), (4, 2.0)]  # "a" was read back, not re-measured
    text = seeds_markdown(rows, "# t")
    assert "| a | 2 | 0.990 | 1.200 | 14.0 |" in text and "| b | 2 | 0.990 | 2.200 | 14.0 |" in text
