"""The variational bound and bits per dimension (`condiff.likelihood`): the KL and the discretised decoder against
independent formulas, the bound of a model that knows x0 against a closed form computed here, the variance and
prediction branches, the timestep stride, `condiff nll` and `benchmarks/likelihood.py` on tiny saved models."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from condiff.pipelines.variance import (
    learned_log_variance,
    posterior_log_variances,
    posterior_mean,
    target_from_epsilon,
)
from conftest import tiny_pipeline
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from PIL import Image
from test_sweep import tiny_mnist_pipeline

from condiff.cli import main as cli_main
from condiff.data import load_mnist_arrays, uint8_to_model_tensor
from condiff.evaluation.likelihood_cli import inspect_model
from condiff.likelihood import (
    NATS_TO_BITS,
    bits_per_dim,
    discretized_gaussian_log_likelihood,
    evaluation_timesteps,
    normal_kl,
    vlb_term,
)
from condiff.models import class_conditional_unet

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from lib.likelihood_benchmark import main as benchmark_main  # noqa: E402

T = 10


def scheduler(prediction_type: str = "epsilon", variance_type: str = "fixed_small", steps: int = T) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=steps, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type,
        variance_type=variance_type,
    )  # fmt: skip


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_mnist_arrays("test")
    return uint8_to_model_tensor(images[:3]), torch.from_numpy(labels[:3])


def seeded() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# --- the pieces of the bound ----------------------------------------------------------------------------------------


def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    m1, m2, lv1, lv2 = (torch.randn(50, generator=g, dtype=torch.float64) for _ in range(4))
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()), torch.distributions.Normal(m2, (0.5 * lv2).exp())
    )
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected)
    assert normal_kl(m1, lv1, m1, lv1).abs().max() < 1e-12


@pytest.mark.parametrize("mean", [-1.0, -0.37, 0.1, 0.5, 1.0, 1.6])
@pytest.mark.parametrize("log_scale", [-6.0, -3.0, -1.0, 0.5])
def test_decoder_probabilities_over_all_256_pixel_values_sum_to_one(mean, log_scale):
    pixels = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    log_p = discretized_gaussian_log_likelihood(
        pixels, torch.full_like(pixels, mean), torch.full_like(pixels, log_scale)
    )
    assert float(log_p.exp().sum()) == pytest.approx(1.0, abs=1e-6)
    if log_scale <= -3:  # narrow: the mode is the pixel nearest the mean (wide ones pile onto the open edge bins)
        assert int(log_p.argmax()) == round((min(max(mean, -1), 1) + 1) * 127.5)


def test_posterior_log_variances_and_learned_range_ends(digits):
    sched = scheduler()
    betas, abar = sched.betas.double(), sched.alphas_cumprod.double()
    t = torch.arange(T)
    log_beta, log_posterior = posterior_log_variances(sched.alphas_cumprod, t)
    posterior = betas[1:] * (1 - abar[:-1]) / (1 - abar[1:])  # beta~_t for t >= 1
    torch.testing.assert_close(log_beta.double(), betas.log(), rtol=0, atol=1e-5)
    torch.testing.assert_close(log_posterior[1:].double(), posterior.log(), rtol=0, atol=1e-5)
    assert float(log_posterior[0]) == pytest.approx(float(posterior[0].log()), abs=1e-5)  # clipped: beta~_1 at t = 0
    ones = torch.ones(T, 1, 2, 2)
    torch.testing.assert_close(
        learned_log_variance(ones, sched.alphas_cumprod, t), log_beta.view(-1, 1, 1, 1).expand_as(ones)
    )
    torch.testing.assert_close(
        learned_log_variance(-ones, sched.alphas_cumprod, t), log_posterior.view(-1, 1, 1, 1).expand_as(ones)
    )


def test_vlb_term_vanishes_for_the_true_posterior_and_is_the_decoder_at_zero(digits):
    x0 = digits[0][:1].repeat(T, 1, 1, 1)
    abar, t = scheduler().alphas_cumprod, torch.arange(T)
    a = abar.view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=seeded())
    true_mean = posterior_mean(abar, x0, x_t, t)
    log_var = posterior_log_variances(abar, t)[1].view(-1, 1, 1, 1).expand_as(x0)
    terms = vlb_term(abar, x0, x_t, t, true_mean, log_var)
    assert terms[1:].abs().max() < 1e-6
    decoder = -discretized_gaussian_log_likelihood(x0[:1], true_mean[:1], 0.5 * log_var[:1]).mean()
    assert float(terms[0]) == pytest.approx(float(decoder)) and float(terms[0]) > 0.1
    off = vlb_term(abar, x0, x_t, t, true_mean + 0.1, log_var)
    assert (off[1:] > 1e-3).all()  # a wrong mean costs


# --- bits per dimension with stand-in models --------------------------------------------------------------------------


class Oracle(torch.nn.Module):
    """Knows the one image x0: outputs the exact prediction of kind `kind` at (x_t, t) (+ variance values `v`)."""

    def __init__(self, x0: torch.Tensor, sched: DDPMScheduler, kind: str, v: float | None = None):
        super().__init__()
        self.x0, self.abar, self.kind, self.v = x0, sched.alphas_cumprod, kind, v

    def forward(self, x, t):
        a = self.abar[t].view(-1, 1, 1, 1)
        eps = (x - a.sqrt() * self.x0) / (1 - a).sqrt()
        if self.kind in ("mean", "score"):
            out = target_from_epsilon(self.kind, self.abar, eps, x, t)
        else:
            out = {"epsilon": eps, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * self.x0}.get(self.kind)
            out = self.x0.expand_as(x) if out is None else out
        return out if self.v is None else torch.cat([out, torch.full_like(out, self.v)], 1)


class Constant(torch.nn.Module):
    """Outputs `value` everywhere (+ variance values `v`): a zero epsilon, or x0 + delta for a "sample" model."""

    def __init__(self, value: float | torch.Tensor = 0.0, v: float | None = None):
        super().__init__()
        self.value, self.v = value, v

    def forward(self, x, t):
        out = torch.zeros_like(x) + self.value
        return out if self.v is None else torch.cat([out, torch.full_like(out, self.v)], 1)


def oracle_bits(x0: torch.Tensor, sched: DDPMScheduler) -> float:
    """The bound of a model that knows x0, by hand: every KL term is 0 (its mean is the posterior's, its variance
    beta~), the decoder puts N(x0, beta~_1) on x0's own bin, and L_T is the KL of two Gaussians."""
    betas, abar = sched.betas.double(), sched.alphas_cumprod.double()
    sigma = math.sqrt(betas[1] * (1 - abar[0]) / (1 - abar[1]))  # beta~ at t = 0, clipped to its t = 1 value

    def phi(u: float) -> float:
        return 0.5 * (1 + math.erf(u / math.sqrt(2)))

    x = x0.double().flatten()
    inner, edge = phi(1 / 255 / sigma) - phi(-1 / 255 / sigma), phi(1 / 255 / sigma)  # edge bins run to infinity
    decoder = -torch.where(x.abs() > 0.999, torch.tensor(edge).log(), torch.tensor(inner).log()).mean()
    a = abar[-1]
    prior = (0.5 * (-1 - torch.log(1 - a) + (1 - a) + a * x**2)).mean()
    return float(decoder + prior) / math.log(2)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample", "mean", "score"])
def test_a_model_that_knows_x0_scores_the_closed_form(kind, digits):
    x0 = digits[0][:1]
    sched = scheduler("epsilon" if kind in ("mean", "score") else kind)
    target = kind if kind in ("mean", "score") else None
    result = bits_per_dim(Oracle(x0, sched, kind), sched, x0, generator=seeded(), prediction_target=target)
    assert result.mean == pytest.approx(oracle_bits(x0, sched), rel=1e-4)
    assert result.terms[1:].abs().max() < 1e-4 and result.exact and result.timesteps == list(range(T))
    assert result.prediction_type == kind and result.variance == "fixed_small" and not result.conditional
    zero = bits_per_dim(Constant(), scheduler(), x0, generator=seeded())
    assert zero.mean > result.mean + 1.0  # a model that knows nothing pays for every step


def test_learned_variance_ends_select_the_fixed_variances(digits):
    images = digits[0][:2]
    small = bits_per_dim(Constant(), scheduler(), images, generator=seeded())
    large = bits_per_dim(Constant(), scheduler(variance_type="fixed_large"), images, generator=seeded())
    learned = scheduler(variance_type="learned_range")
    at_small = bits_per_dim(Constant(v=-1.0), learned, images, generator=seeded())
    at_large = bits_per_dim(Constant(v=1.0), learned, images, generator=seeded())
    torch.testing.assert_close(at_small.per_image, small.per_image)
    torch.testing.assert_close(at_large.per_image, large.per_image)
    assert (small.variance, large.variance, at_small.variance) == ("fixed_small", "fixed_large", "learned_range")
    assert (large.per_image - small.per_image).abs().min() > 1e-3
    with pytest.raises(ValueError, match="learned_range"):
        bits_per_dim(Constant(), learned, images)


def test_stride_weights_the_kl_terms_to_estimate_the_full_sum(digits):
    """An x0 + delta "sample" model (no clipping) has noise-free terms: KL_t = (c0_t delta)^2 / (2 beta~_t)."""
    x0, delta = digits[0][:1], 0.05
    sched = scheduler("sample")
    full = bits_per_dim(Constant(x0 + delta), sched, x0, generator=seeded(), clip_denoised=False)
    betas, abar = sched.betas.double(), sched.alphas_cumprod.double()
    c0 = abar[:-1].sqrt() * betas[1:] / (1 - abar[1:])
    posterior = betas[1:] * (1 - abar[:-1]) / (1 - abar[1:])
    torch.testing.assert_close(full.terms[1:], (c0 * delta) ** 2 / (2 * posterior) * NATS_TO_BITS, rtol=1e-3, atol=0)
    strided = bits_per_dim(Constant(x0 + delta), sched, x0, stride=3, generator=seeded(), clip_denoised=False)
    assert strided.timesteps == [0, 3, 6, 9] and strided.kl_weight == 3.0 and not strided.exact
    torch.testing.assert_close(strided.terms, full.terms[[0, 3, 6, 9]])
    expected = full.terms[0] + 3 * full.terms[[3, 6, 9]].sum() + full.prior
    assert strided.mean == pytest.approx(float(expected), rel=1e-6)
    assert evaluation_timesteps(1000, 100) == ([0, *range(100, 1000, 100)], 111.0)
    with pytest.raises(ValueError, match="stride"):
        evaluation_timesteps(T, T)


class Recorder(Constant):
    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, class_labels=None):
        self.calls.append((t.tolist(), class_labels.tolist()))
        return super().forward(x, t)


def test_batching_keeps_the_noise_and_gives_each_row_its_label_and_timestep(digits):
    images, labels = digits
    one, many = Recorder(), Recorder()
    a = bits_per_dim(one, scheduler(), images, labels, batch_size=3, generator=seeded())
    b = bits_per_dim(many, scheduler(), images, labels, batch_size=9, generator=seeded())
    torch.testing.assert_close(a.per_image, b.per_image)  # 1 vs 3 timesteps per pass: the same x_t draws
    assert len(one.calls) == T and len(many.calls) == 4 and a.conditional
    assert many.calls[0] == ([0, 0, 0, 1, 1, 1, 2, 2, 2], labels.tolist() * 3)
    assert many.calls[-1] == ([9, 9, 9], labels.tolist())
    se = float(a.per_image.std() / math.sqrt(3))
    assert a.standard_error == pytest.approx(se) and a.as_dict()["bits_per_dim"] == pytest.approx(a.mean)
    unet = tiny_pipeline().unet
    with pytest.raises(ValueError, match="needs labels"):
        bits_per_dim(unet, scheduler(), torch.zeros(1, 1, 8, 8))


# --- `condiff nll` and the benchmark on tiny saved models -----------------------------------------------------------


@pytest.fixture(scope="module")
def cfg_dir(tmp_path_factory) -> Path:
    """A random 28 x 28, 10-class pipeline with a 30-step training schedule (saved with DPM-Solver)."""
    path = tmp_path_factory.mktemp("tiny-cfg")
    tiny_mnist_pipeline().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def lv_dir(tmp_path_factory) -> Path:
    """diffusers' DDPMPipeline around an unconditional 28 x 28 UNet that learns its variance, 20 training steps."""
    path = tmp_path_factory.mktemp("tiny-lv")
    torch.manual_seed(0)
    unet = class_conditional_unet(None, 28, 1, (8, 16), norm_num_groups=4, out_channels=2)
    DDPMPipeline(unet=unet, scheduler=scheduler(variance_type="learned_range", steps=20)).save_pretrained(path)
    return path


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = cli_main(argv)
    except SystemExit as stop:  # argparse's own refusals
        code = stop.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_nll_command_prints_and_writes_what_the_library_computes(cfg_dir, digits, tmp_path, capsys):
    out = tmp_path / "nll.json"
    argv = ["nll", "--model", str(cfg_dir), "--num-images", "3", "--batch-size", "16", "--json", str(out)]
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    report = json.loads(out.read_text())
    assert f"bits/dim: {report['bits_per_dim']:.4f} +- {report['standard_error']:.4f}" in stdout
    assert "variance: fixed_small; prediction: epsilon; terms: all 30 timesteps" in stdout
    assert report["num_images"] == 3 and report["conditional"] and report["exact"] and report["seed"] == 0
    assert report["pipeline"] == "class-conditional" and len(report["terms_bits_per_dim"]) == 30
    unet = UNet2DModel.from_pretrained(cfg_dir, subfolder="unet").eval()
    sched = DDPMScheduler.from_pretrained(cfg_dir, subfolder="scheduler")
    images, labels = digits
    direct = bits_per_dim(unet, sched, images, labels, batch_size=16, generator=seeded())
    assert report["bits_per_dim"] == pytest.approx(direct.mean, rel=1e-6)
    assert report["per_image"] == pytest.approx(direct.per_image.tolist(), rel=1e-6)
    null = bits_per_dim(unet, sched, images, torch.full_like(labels, 10), batch_size=16, generator=seeded())
    assert null.mean != pytest.approx(direct.mean, rel=1e-9)  # the true classes were given, not the null class


def test_nll_command_on_a_learned_variance_unconditional_folder(lv_dir, tmp_path, capsys):
    out = tmp_path / "lv.json"
    code, stdout, err = run(["nll", "--model", str(lv_dir), "--num-images", "2", "--json", str(out)], capsys)
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["variance"] == "learned_range" and report["pipeline"] == "unconditional"
    assert not report["conditional"] and report["unet_class"] == "UNet2DModel" and report["num_train_timesteps"] == 20
    assert "variance: learned_range" in stdout and "unconditional" in stdout


@pytest.mark.parametrize(
    "flags, flag, why",
    [
        (["--model", "{tmp}/nope"], "--model", "no such folder"),
        (["--model", "{tmp}"], "--model", "model_index.json"),
        (["--model", "{small}"], "--model", "8x8"),
        (["--model", "{cfg}", "--num-images", "0"], "--num-images", "must be an integer >= 1"),
        (["--model", "{cfg}", "--num-images", "1001"], "--num-images", "at most 1000"),
        (["--model", "{cfg}", "--pipeline", "classifier-guided"], "--pipeline", "ClassConditionalDDPMPipeline"),
        (["--model", "{cfg}", "--json", "{tmp}/out.txt"], "--json", ".json"),
        (["--model", "{cfg}", "--stride", "30"], "--stride", "30 timesteps"),
    ],
)
def test_nll_command_refuses_bad_flags_before_any_model_work(flags, flag, why, cfg_dir, tmp_path, capsys, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("condiff.evaluation.likelihood_cli.load_denoiser", no_loading)
    small = tmp_path / "small"
    tiny_pipeline().save_pretrained(small)  # 8 x 8 images
    argv = ["nll", *(f.format(tmp=tmp_path, small=small, cfg=cfg_dir) for f in flags)]
    code, _, err = run(argv, capsys)
    assert code == 2 and flag in err and why in err, err


def test_likelihood_benchmark_end_to_end(cfg_dir, lv_dir, tmp_path, capsys):
    out = tmp_path / "res"
    argv = ["--models", f"{cfg_dir}:cfg", f"{lv_dir}:lv", "--device", "cpu", "--out-dir", str(out), "--quick"]
    assert benchmark_main(argv) == 0
    report = json.loads((out / "likelihood.json").read_text())
    rows = report["rows"]
    assert [(r["label"], r["pipeline"], r["variance"]) for r in rows] == [
        ("cfg", "class-conditional", "fixed_small"),
        ("lv", "unconditional", "learned_range"),
    ]
    assert [r["timesteps"] for r in rows] == [[0, 29], [0, 19]]  # --quick's stride 100, capped at T - 1
    assert [r["kl_weight"] for r in rows] == [29.0, 19.0] and not any(r["exact"] for r in rows)
    for r in rows:
        assert r["num_images"] == 4 and r["bits_per_dim"] > 0 and r["standard_error"] > 0 and r["parameters"] > 0
    assert report["settings"]["model"] == f"{cfg_dir}:cfg, {lv_dir}:lv" and report["settings"]["quick"]
    md = (out / "likelihood.md").read_text()
    assert "| cfg | class-conditional | true class |" in md and "**Estimates, not measurements:**" in md
    image = Image.open(out / "likelihood.png")
    assert image.width > 500 and image.height > 300
    capsys.readouterr()
    bad = ["--models", str(cfg_dir), str(lv_dir), "--pipelines", "auto", "--out-dir", str(tmp_path / "b")]
    assert benchmark_main(bad) == 2 and "--pipelines" in capsys.readouterr().err
    bad = ["--models", str(cfg_dir), "--pipelines", "unconditional", "--out-dir", str(tmp_path / "b")]
    assert benchmark_main(bad) == 2 and "--pipeline unconditional" in capsys.readouterr().err


def test_benchmark_script_is_a_thin_wrapper_with_help():
    script = REPO / "benchmarks" / "likelihood.py"
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--models" in result.stdout and "--quick" in result.stdout


def test_a_folder_trained_on_the_mean_or_score_is_read_as_such(cfg_dir, tmp_path):
    import shutil

    folder = tmp_path / "mean-model"
    shutil.copytree(cfg_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    assert inspect_model(str(folder)).prediction_target is None
    (folder / "training_args.json").write_text(json.dumps({"prediction_type": "mean"}))
    info = inspect_model(str(folder))
    assert info.prediction_target == "mean" and info.conditional and info.num_train_timesteps == 30
