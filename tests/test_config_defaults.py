"""`pipelines/config_defaults.py`: the config entries every pipeline shares, checked and normalised in one place."""

from __future__ import annotations

import pytest
from condiff.pipelines.config_defaults import checked_defaults


def test_entries_are_normalised_to_plain_lists_and_floats():
    config = checked_defaults(
        id2label={3: "three"}, default_num_inference_steps=14, default_guidance_interval=(0.45, 0.75),
        default_guidance_scale=2, guidance_scale_range=(1, 4), default_guidance="gated_cfg",
        autoguidance_cfg_scale=1, autoguidance_cfg_interval=(0, 1), gated_cfg_curve=[(999, 0.2), (100, 0.01)],
        gated_cfg_threshold=1, micro_batch_size=None, default_corrector_steps=0, default_corrector_snr=0.16,
    )  # fmt: skip
    assert config["default_guidance_interval"] == [0.45, 0.75]
    assert config["guidance_scale_range"] == [1.0, 4.0] and config["default_guidance_scale"] == 2.0
    assert config["gated_cfg_curve"] == [[999.0, 0.2], [100.0, 0.01]]
    assert config["autoguidance_cfg_interval"] == [0.0, 1.0] and config["default_guidance"] == "gated_cfg"
    assert config["id2label"] == {3: "three"}
    assert checked_defaults(default_guidance_scale=None) == {"default_guidance_scale": None}


@pytest.mark.parametrize(
    "entries, named",
    [
        ({"default_num_inference_steps": 0}, "default_num_inference_steps"),
        ({"default_guidance_scale": 5.0, "guidance_scale_range": (1, 4)}, "guidance_scale_range"),
        ({"default_guidance_scale": -1.0}, "default_guidance_scale"),
        ({"default_classifier_scale": float("nan")}, "default_classifier_scale"),
        ({"default_guidance_interval": (0.8, 0.2)}, "default_guidance_interval"),
        ({"default_guidance": "cfg", "autoguidance_cfg_scale": 1.0, "autoguidance_cfg_interval": (0, 2)},
         "autoguidance_cfg_interval"),
        ({"default_guidance": "cfg", "autoguidance_cfg_scale": -1.0, "autoguidance_cfg_interval": (0, 1)},
         "autoguidance_cfg_scale"),
        ({"gated_cfg_curve": [(999, 0.2)]}, "gated_cfg_curve"),
        ({"micro_batch_size": 0}, "micro_batch_size"),
        ({"default_guidance": "pag", "autoguidance_cfg_scale": 1.0, "autoguidance_cfg_interval": (0, 1)},
         "default_guidance"),
        ({"default_corrector_steps": 101, "default_corrector_snr": 0.16}, "default_corrector_steps"),
        ({"default_corrector_steps": 1, "default_corrector_snr": 0.0}, "default_corrector_snr"),
    ],
)  # fmt: skip
def test_a_bad_entry_is_refused_by_name(entries, named):
    with pytest.raises(ValueError, match=named):
        checked_defaults(**entries)


def test_an_unknown_entry_is_a_programming_error():
    with pytest.raises(TypeError, match="default_sampler"):
        checked_defaults(default_sampler="ddim")
