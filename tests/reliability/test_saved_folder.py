"""A saved folder is checked before loading (reliability round 2, items 1-2): implausible sizes are refused when
loading, before anything is allocated, naming the file and field (the limits can be raised on purpose); a component
without weights, of the wrong library, with broken JSON or no folder is named with its folder."""

import json
import time

import pytest
from condiff.pipelines import saved_folder as limits
from conftest import tiny_pipeline

from condiff import ClassConditionalDDPMPipeline


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    tiny_pipeline().save_pretrained(folder)
    return folder


def edited(saved, tmp_path, file, **changes):
    import shutil

    folder = tmp_path / "edited"
    shutil.copytree(saved, folder)
    config = json.loads((folder / file).read_text())
    (folder / file).write_text(json.dumps({**config, **changes}))
    return folder


@pytest.mark.parametrize(
    "file, changes, match",
    [
        ("scheduler/scheduler_config.json", {"num_train_timesteps": 10**9}, "num_train_timesteps = 1000000000"),
        ("unet/config.json", {"sample_size": 20000}, "sample_size = 20000"),
        ("unet/config.json", {"sample_size": 1e6}, "sample_size = 1000000.0"),
        ("unet/config.json", {"num_class_embeds": 10**9}, "num_class_embeds = 1000000000"),
        ("unet/config.json", {"block_out_channels": [1048576] * 2}, "parameters"),
    ],
)
def test_implausible_sizes_are_refused_quickly_naming_file_and_field(saved, tmp_path, file, changes, match):
    folder = edited(saved, tmp_path, file, **changes)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=match) as error:
        ClassConditionalDDPMPipeline.from_pretrained(folder)
    assert file.split("/")[0] in str(error.value) and "LIMITS[" in str(error.value)
    assert time.perf_counter() - start < 30  # refused, not allocated (the 1e9 schedule used to hang for minutes)


def test_a_non_numeric_size_is_refused(saved, tmp_path):
    with pytest.raises(ValueError, match="sample_size must be a non-negative number"):
        ClassConditionalDDPMPipeline.from_pretrained(edited(saved, tmp_path, "unet/config.json", sample_size="big"))


def test_a_limit_can_be_raised_on_purpose(saved, tmp_path, monkeypatch):
    monkeypatch.setitem(limits.LIMITS, "max_sample_size", 4)  # the tiny UNet makes 8x8 samples
    with pytest.raises(ValueError, match="sample_size = 8"):
        ClassConditionalDDPMPipeline.from_pretrained(saved)
    monkeypatch.setitem(limits.LIMITS, "max_sample_size", 8)
    assert ClassConditionalDDPMPipeline.from_pretrained(saved).unet.config.sample_size == 8


def test_parameters_are_counted_without_memory():
    unet = tiny_pipeline().unet
    config = {**unet.config, "_class_name": type(unet).__name__, "block_out_channels": [4096, 4096]}
    assert limits.count_parameters_on_meta(config) > 10**8  # built on the meta device: no allocation


def test_a_component_without_weights_is_named(saved, tmp_path):
    folder = edited(saved, tmp_path, "unet/config.json")
    for weights in (folder / "unet").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ValueError, match=r"component 'unet' of .*edited: .*unet has a config.json but no weights"):
        ClassConditionalDDPMPipeline.from_pretrained(folder)


def test_a_component_of_the_wrong_library_is_named(saved, tmp_path):
    folder = edited(saved, tmp_path, "model_index.json", guide_unet=["transformers", "BertModel"])
    with pytest.raises(ValueError, match=r"component 'guide_unet' is transformers.BertModel, but ClassCondition"):
        ClassConditionalDDPMPipeline.from_pretrained(folder)


def test_broken_json_and_a_missing_component_folder_are_named(saved, tmp_path):
    folder = edited(saved, tmp_path, "unet/config.json")
    (folder / "unet" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"unet/config.json is not valid JSON"):
        ClassConditionalDDPMPipeline.from_pretrained(folder)
    import shutil

    shutil.rmtree(folder / "unet")
    with pytest.raises(ValueError, match=r"component 'unet' of .*: .*unet has no config.json"):
        ClassConditionalDDPMPipeline.from_pretrained(folder)
