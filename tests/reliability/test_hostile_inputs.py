"""Property-based tests (hypothesis) of every argument of ClassConditionalDDPMPipeline.__call__ and of the `condiff`
command line (the training flags: `test_hostile_training_flags.py`): every invalid value raises ValueError/TypeError
(argparse: exit status 2) with a message naming the argument, before any model work; every valid combination returns
the right number of images of the right size and type."""

from __future__ import annotations

import contextlib
import io
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from condiff.pipelines import OUTPUT_TYPES
from conftest import tiny_pipeline
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

NAMES = ["zero", "one", "two"]
PIPE = tiny_pipeline()  # one shared tiny pipeline (8x8, 3 classes, 50 training timesteps); tests never modify it
FAST = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def model_must_not_run(*a, **k):
    raise AssertionError("the model ran before the arguments were checked")


@contextlib.contextmanager
def no_model_work(pipe):
    real = pipe.unet.forward
    pipe.unet.forward = model_must_not_run
    try:
        yield
    finally:
        pipe.unet.forward = real


# ------------------------------------------------------------------------------------------- invalid values

weird_floats = st.sampled_from([math.nan, math.inf, -math.inf])
long_text = st.builds(lambda n, c: c * n, st.integers(1_000, 200_000), st.sampled_from(["x", "€", "\udcff", " "]))
not_a_number = st.one_of(st.text(max_size=5), st.lists(st.integers(), max_size=2), st.binary(max_size=3))


def bad_labels():
    not_a_name = st.text(max_size=30).filter(lambda s: s.strip().lower() not in NAMES)
    return st.one_of(
        st.integers().filter(lambda v: not 0 <= v < 3),
        st.floats(),
        st.booleans(),
        not_a_name,
        long_text,
        st.binary(min_size=1, max_size=8),
        st.just([]),
        st.lists(st.lists(st.integers(0, 2), min_size=1, max_size=2), min_size=1, max_size=2),  # nested
        st.builds(lambda n: torch.rand(n), st.integers(1, 3)),  # float tensor
        st.builds(lambda n: torch.ones(n, dtype=torch.bool), st.integers(1, 3)),
        st.builds(lambda n: torch.zeros(n, 2, dtype=torch.long), st.integers(1, 3)),  # 2-d
        st.builds(lambda v: torch.tensor([v]), st.integers(3, 10**6)),  # out of range
        st.builds(lambda n: np.zeros((n, 2), np.int64), st.integers(1, 3)),
        st.just(torch.zeros(3, dtype=torch.long, device="meta")),
        st.just([0] * 70_000),  # more than one call may produce
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    )


def bad_positive_int(maximum: int, none_is_default: bool = False):
    """Invalid values for an int argument in 1..maximum (None is valid where it means "the model's default")."""
    options = [st.integers(max_value=0), st.integers(min_value=maximum + 1, max_value=10**30), st.floats(),
               st.booleans(), not_a_number]  # fmt: skip
    return st.one_of(*options) if none_is_default else st.one_of(*options, st.none())


def bad_latents():
    shape = (2, 1, 8, 8)
    return st.one_of(
        st.builds(lambda s: torch.zeros(s), st.sampled_from([(1, 1, 8, 8), (2, 1, 4, 4), (2, 3, 8, 8), (2, 64)])),
        st.builds(lambda d: torch.zeros(shape, dtype=d), st.sampled_from([torch.int64, torch.uint8, torch.bool])),
        st.just(torch.zeros(shape, dtype=torch.complex64)),
        st.builds(lambda v: torch.full(shape, v), weird_floats),
        st.just(torch.zeros(shape, device="meta")),
        st.just(np.zeros(shape, np.float32)),
        st.just([[0.0]]),
        st.text(max_size=3),
    )


INVALID = {
    "label": bad_labels(),
    "num_images_per_label": bad_positive_int(65536),  # (None included: it has no default meaning)
    "num_images_per_prompt": bad_positive_int(65536, none_is_default=True),  # None: not given (an alias, below)
    "num_inference_steps": bad_positive_int(50, none_is_default=True),  # tiny model: 50 training timesteps
    "guidance_scale": st.one_of(st.floats(max_value=-1e-9), weird_floats, not_a_number, st.booleans()),
    "guidance_rescale": st.one_of(
        st.floats(max_value=-1e-9),
        st.floats(min_value=1.0 + 1e-9),
        weird_floats,
        not_a_number,
        st.booleans(),
        st.none(),
    ),
    "guidance_interval": st.one_of(
        st.tuples(st.floats(0, 1), st.floats(0, 1)).filter(lambda p: p[0] > p[1]),
        st.tuples(st.floats(), st.floats()).filter(lambda p: not (0 <= p[0] <= p[1] <= 1)),
        st.lists(st.floats(0, 1), max_size=5).filter(lambda v: len(v) != 2),
        st.text(max_size=4),  # (None means the model's default interval)
    ),
    "generator": st.one_of(
        st.builds(lambda n: [torch.Generator() for _ in range(n)], st.integers(0, 5).filter(lambda n: n != 2)),
        st.builds(lambda v: [torch.Generator(), v], st.one_of(st.integers(), st.text(max_size=3), st.none())),
        st.integers(),
        st.text(max_size=5),
        st.just((torch.Generator(), torch.Generator())),
    ),
    "latents": bad_latents(),
    "output_type": st.one_of(
        st.text(max_size=10).filter(lambda s: s not in OUTPUT_TYPES), st.none(), st.integers(), long_text
    ),
    "callback_on_step_end": st.one_of(st.integers(), st.text(min_size=1, max_size=3), st.just(3.5)),
    "callback_on_step_end_tensor_inputs": st.one_of(
        st.lists(st.text(max_size=8).filter(lambda s: s != "latents"), min_size=1, max_size=3),
        st.just("latents"),
        st.none(),
        st.integers(),
    ),
}


@FAST
@given(data=st.data())
def test_every_invalid_pipeline_argument_is_rejected_by_name(data):
    name = data.draw(st.sampled_from(sorted(INVALID)), label="argument")
    value = data.draw(INVALID[name], label="value")
    kwargs = {"label": [0, 1], "num_inference_steps": 2, name: value}
    with no_model_work(PIPE), pytest.raises((ValueError, TypeError)) as err:
        PIPE(**kwargs)
    message = str(err.value)
    assert name in message or (name == "label" and "label" in message), message
    assert len(message) < 2_000, "a huge value was copied into the message"


def test_too_many_images_in_total_names_both_arguments():
    with no_model_work(PIPE), pytest.raises(ValueError, match="label x num_images_per_label = 20000 images"):
        PIPE(label=[0, 1], num_images_per_label=10_000)


# ------------------------------------------------------------------------------------------- valid values


def label_and_count():
    name = st.sampled_from(NAMES).flatmap(
        lambda n: st.sampled_from([n, n.upper(), f"  {n} ", n.capitalize()])
    )  # case and whitespace do not matter
    one = st.one_of(st.integers(0, 2), name, st.integers(0, 2).map(np.int64))
    return st.one_of(
        st.just((None, 1)),
        one.map(lambda v: (v, 1)),
        st.lists(one, min_size=1, max_size=3).map(lambda v: (v, len(v))),
        st.tuples(
            st.lists(st.integers(0, 2), min_size=1, max_size=3),
            st.sampled_from([torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8]),
        ).map(lambda p: (torch.tensor(p[0], dtype=p[1]), len(p[0]))),
        st.integers(0, 2).map(lambda v: (torch.tensor(v), 1)),
        st.lists(st.integers(0, 2), min_size=1, max_size=3).map(lambda v: (np.array(v), len(v))),
    )


@FAST
@given(
    label_count=label_and_count(),
    per_label=st.integers(1, 3),
    steps=st.one_of(st.integers(1, 3), st.none()),  # None: the model's default (20)
    scale=st.one_of(st.floats(0, 10), st.none()),  # None: the model's default_guidance_scale
    rescale=st.floats(0, 1),
    interval=st.one_of(st.tuples(st.floats(0, 1), st.floats(0, 1)).map(sorted).map(tuple), st.none()),
    output_type=st.sampled_from(OUTPUT_TYPES),
    generator_kind=st.sampled_from(["none", "one", "list"]),
    per_label_name=st.sampled_from(["num_images_per_label", "num_images_per_prompt"]),
    latents_dtype=st.sampled_from([None, torch.float16, torch.float32, torch.float64]),
    seed=st.integers(0, 2**32 - 1),
    return_dict=st.booleans(),
)
def test_every_valid_combination_returns_the_right_images(
    label_count, per_label, steps, scale, rescale, interval, output_type, generator_kind, per_label_name,
    latents_dtype, seed, return_dict,
):  # fmt: skip
    label, n_labels = label_count
    n = n_labels * per_label
    generator = {
        "none": None,
        "one": torch.Generator().manual_seed(seed),
        "list": [torch.Generator().manual_seed(seed + i) for i in range(n)],
    }[generator_kind]
    latents = None if latents_dtype is None else torch.randn((n, 1, 8, 8), generator=torch.Generator().manual_seed(seed)
                                                            ).to(latents_dtype)  # fmt: skip
    out = PIPE(
        label=label, **{per_label_name: per_label}, num_inference_steps=steps, guidance_scale=scale,
        guidance_rescale=rescale, guidance_interval=interval, output_type=output_type, generator=generator,
        latents=latents, return_dict=return_dict,
    )  # fmt: skip
    images = out.images if return_dict else out[0]
    assert len(images) == n
    if output_type == "pil":
        assert all(isinstance(i, Image.Image) and i.size == (8, 8) and i.mode == "L" for i in images)
    elif output_type == "np":
        assert isinstance(images, np.ndarray) and images.shape == (n, 8, 8, 1) and images.dtype == np.float32
        assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    elif output_type == "pt":
        assert isinstance(images, torch.Tensor) and images.shape == (n, 1, 8, 8) and images.dtype == torch.float32
        assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    else:  # "latent": the model-space tensor (DDPM clips x0 to [-1, 1])
        assert isinstance(images, torch.Tensor) and images.shape == (n, 1, 8, 8) and images.dtype == torch.float32
        assert torch.isfinite(images).all() and images.min() >= -1 and images.max() <= 1


# ------------------------------------------------------------------------------------------- `condiff` CLI


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-model")
    PIPE.save_pretrained(folder)
    return folder


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    from condiff.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code
    return code, out.getvalue(), err.getvalue()


CLI_INVALID = {
    "--steps": bad_positive_int(10_000),
    "--guidance-scale": st.one_of(st.floats(max_value=-1e-9), weird_floats, st.text(max_size=4)),
    "--num-images": bad_positive_int(65536),
    "--upscale": bad_positive_int(64),
    "--seed": st.one_of(st.integers(max_value=-1), st.integers(min_value=2**64), st.floats(), st.text(max_size=4)),
}


def as_cli_text(value) -> str:
    return str(value) if not isinstance(value, bytes) else value.decode("latin-1")


CLI_VALID_RANGE = {"--steps": (1, 10_000), "--num-images": (1, 65536), "--upscale": (1, 64), "--seed": (0, 2**64 - 1)}


def cli_text_is_valid(flag: str, text: str) -> bool:
    """An independent statement of what each flag accepts (a drawn text such as "5" can be a valid value)."""
    try:
        if flag == "--guidance-scale":
            return math.isfinite(float(text)) and float(text) >= 0
        low, high = CLI_VALID_RANGE[flag]
        return low <= int(text) <= high
    except ValueError:
        return False


@settings(max_examples=40, deadline=None, database=None)
@given(data=st.data())
def test_cli_rejects_invalid_numbers_naming_the_flag(data, model_dir, tmp_path_factory):
    flag = data.draw(st.sampled_from(sorted(CLI_INVALID)), label="flag")
    text = as_cli_text(data.draw(CLI_INVALID[flag], label="value"))
    assume(not cli_text_is_valid(flag, text))
    out = tmp_path_factory.getbasetemp() / "cli.png"
    code, _, err = run_cli(["generate", "--model", str(model_dir), "--out", str(out), "--quiet", f"{flag}={text}"])
    assert code == 2 and f"argument {flag}" in err, err


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--label", "x" * 100_000], r"label 'x+\.\.\.<100002 characters> is not a class name"),
        (["--label", "\udcff\udcfe"], "is not a class name"),
        (["--label", "7"], r"label must be in 0\.\.2"),
        (["--label", ",,"], "label must not be an empty list"),
        (["--model", "/nonexistent/model"], "nonexistent"),
        (["--out", "/nonexistent/dir/x.png"], "--out"),
        (["--out", "grid.txt"], "--out"),
    ],
)
def test_cli_rejects_bad_labels_models_and_paths(argv, match, model_dir, tmp_path):
    base = ["--model", str(model_dir), "--out", str(tmp_path / "g.png"), "--quiet", "--steps", "2"]
    code, _, err = run_cli(["generate", *base, *argv])  # argparse keeps the last --model / --out
    assert code == 2 and re.search(match, err), err
    assert len(err) < 2_000


def test_cli_refuses_pickle_weights_that_run_code(tmp_path):
    """A .bin whose unpickling would run code is refused, naming the file; nothing runs (plain .bin folders load:
    tests/test_cli_model_folders.py)."""
    import pickle

    PIPE.save_pretrained(tmp_path / "bin", safe_serialization=False)
    marker = tmp_path / "ran.txt"

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (marker, "code ran"))

    (tmp_path / "bin" / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps({"x": Payload()}))
    code, _, err = run_cli(["generate", "--model", str(tmp_path / "bin"), "--out", str(tmp_path / "g.png")])
    assert code == 2 and "diffusion_pytorch_model.bin" in err, err
    assert not marker.exists() and not (tmp_path / "g.png").exists()


@settings(max_examples=8, deadline=None, database=None)
@given(
    label=st.sampled_from([None, "0", "two", "0,1", "zero,one,two", "none"]),
    num_images=st.integers(1, 5),
    steps=st.integers(1, 3),
    upscale=st.integers(1, 3),
    scale=st.floats(0, 5),
)
def test_cli_valid_arguments_write_the_grid(label, num_images, steps, upscale, scale, model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("grid") / "grid.png"
    argv = ["generate", "--model", str(model_dir), "--out", str(out), "--quiet", "--steps", str(steps),
            "--num-images", str(num_images), "--upscale", str(upscale), "--guidance-scale", repr(scale)]  # fmt: skip
    if label is not None:
        argv += ["--label", label]
    code, stdout, err = run_cli(argv)
    assert code == 0, err
    n_labels = 1 if label in (None, "none") else len(label.split(","))
    expected = n_labels * num_images  # --num-images is per label
    assert f"({expected} images: {num_images} per label x {n_labels} label(s)" in stdout
    with Image.open(out) as grid:
        assert grid.width % (8 * upscale) == 0 and grid.height % (8 * upscale) == 0
        cols, rows = grid.width // (8 * upscale), grid.height // (8 * upscale)
        if n_labels > 1:  # one row per label
            assert (cols, rows) == (num_images, n_labels)
        else:
            assert cols * rows >= expected > cols * (rows - 1)


# ------------------------------------------------------------------------------------------- training flags


@pytest.mark.parametrize("flag", ["--guidance-scale", "--steps", "--num-images", "--seed"])
def test_cli_refuses_a_double_dash_value_naming_the_flag(flag, model_dir, tmp_path):
    """argparse reads `--flag=--` as no value and stores []; found by the property test above."""
    code, _, err = run_cli(["generate", "--model", str(model_dir), "--out", str(tmp_path / "x.png"), f"{flag}=--"])
    assert code == 2 and f"argument {flag}: expected one value" in err, err
    assert not (tmp_path / "x.png").exists()
