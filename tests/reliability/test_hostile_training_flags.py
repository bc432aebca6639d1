"""Property-based tests (hypothesis) of the training script's numeric flags: every invalid number is refused with a
message naming the flag before any work, and text where a number is expected is an argparse error (exit status 2)."""

from __future__ import annotations

import contextlib
import io
import math

import pytest
from _tiny import TINY
from hypothesis import given, settings
from hypothesis import strategies as st

weird_floats = st.sampled_from([math.nan, math.inf, -math.inf])

TRAIN_INT_FLAGS = {  # flag: (low, high or None)
    "train_batch_size": (1, None), "num_epochs": (1, None), "max_train_steps": (1, None),
    "gradient_accumulation_steps": (1, None), "checkpointing_steps": (1, None), "checkpoints_total_limit": (1, None),
    "validation_steps": (1, None), "validation_images_per_class": (1, 65536), "validation_inference_steps": (1, 1000),
    "resolution": (1, 4096), "layers_per_block": (1, None), "num_train_timesteps": (1, None),
    "lr_warmup_steps": (0, None), "dataloader_num_workers": (0, None), "seed": (0, 2**32 - 1),
    "max_train_samples": (1, None),
}  # fmt: skip
TRAIN_FLOAT_FLAGS = {  # flag: (low, high, low_open, high_open)
    "learning_rate": (0, math.inf, True, False), "p_uncond": (0, 1, False, False),
    "adam_beta1": (0, 1, False, True), "adam_beta2": (0, 1, False, True),
    "adam_weight_decay": (0, math.inf, False, False),
    "adam_epsilon": (0, math.inf, True, False), "max_grad_norm": (0, math.inf, True, False),
    "ema_max_decay": (0, 1, False, False), "ema_inv_gamma": (0, math.inf, True, False),
    "ema_power": (0, math.inf, True, False), "validation_guidance_scale": (0, math.inf, False, False),
}  # fmt: skip


def bad_int(low, high):
    out = st.integers(max_value=low - 1)
    return out if high is None else st.one_of(out, st.integers(min_value=high + 1, max_value=10**40))


def bad_float(low, high, low_open, high_open):
    below = st.floats(max_value=low, exclude_max=not low_open, allow_nan=False)
    options = [below, weird_floats]
    if math.isfinite(high):
        options.append(st.floats(min_value=high, exclude_min=not high_open, allow_nan=False))
    return st.one_of(*options)


@settings(max_examples=80, deadline=None, database=None)
@given(data=st.data())
def test_training_flags_reject_invalid_numbers_by_name(data, tmp_path_factory):
    from condiff.tasks.cfg import CFGTask
    from condiff.train import build_parser, fit

    kind = data.draw(st.sampled_from(["int", "float"]), label="kind")
    if kind == "int":
        flag = data.draw(st.sampled_from(sorted(TRAIN_INT_FLAGS)), label="flag")
        value = data.draw(bad_int(*TRAIN_INT_FLAGS[flag]), label="value")
    else:
        flag = data.draw(st.sampled_from(sorted(TRAIN_FLOAT_FLAGS)), label="flag")
        value = data.draw(bad_float(*TRAIN_FLOAT_FLAGS[flag]), label="value")
    out = tmp_path_factory.getbasetemp() / "train-flags"
    parser = build_parser(CFGTask)
    args = parser.parse_args(["--output_dir", str(out), *TINY, f"--{flag}={value}"])
    with pytest.raises(ValueError, match=f"^--{flag} "):
        fit(CFGTask, args, parser)


@settings(max_examples=40, deadline=None, database=None)
@given(
    flag=st.sampled_from(sorted(TRAIN_INT_FLAGS) + sorted(TRAIN_FLOAT_FLAGS)),
    text=st.one_of(st.text(alphabet="abcxyz,;€ ", min_size=1, max_size=6), st.just("1.5.2"), st.just("0x1q")),
)
def test_training_flags_reject_text_where_numbers_are_expected(flag, text):
    from condiff.tasks.cfg import CFGTask
    from condiff.train import build_parser

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as stop:
        build_parser(CFGTask).parse_args(["--output_dir", "unused", f"--{flag}={text}"])
    assert stop.value.code == 2 and f"argument --{flag}" in err.getvalue()
