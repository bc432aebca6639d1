"""`--init_unet`: a denoiser task starts from a saved folder's UNet (fine-tuning), refused when it cannot."""

from pathlib import Path

import pytest
from safetensors.torch import load_file

from condiff.train import run

TINY = [
    "--resolution", "8", "--block_out_channels", "8", "16", "--norm_num_groups", "4",
    "--train_batch_size", "8", "--max_train_samples", "64", "--validation_images_per_class", "1",
    "--validation_inference_steps", "2", "--report_to", "none",
]  # fmt: skip
WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"


def _max_difference(a: Path, b: Path) -> float:
    wa, wb = load_file(a / WEIGHTS), load_file(b / WEIGHTS)
    assert wa.keys() == wb.keys()
    return max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("init") / "first"
    run(["cfg", "--output_dir", str(out), *TINY, "--max_train_steps", "3"])
    return out


def test_a_run_starts_from_the_folder_weights(trained, tmp_path):
    # one step at a vanishing learning rate: the result is the folder's UNet, not a fresh initialisation
    argv = [*TINY, "--max_train_steps", "1", "--learning_rate", "1e-12", "--lr_warmup_steps", "0"]
    fine = run(["cfg", "--output_dir", str(tmp_path / "fine"), *argv, "--init_unet", str(trained)])
    fresh = run(["cfg", "--output_dir", str(tmp_path / "fresh"), *argv, "--seed", "1"])
    assert _max_difference(fine, trained) < 1e-6
    assert _max_difference(fresh, trained) > 1e-2


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--block_out_channels", "8", "8"], "--init_unet .*tensors differ"),
        (["--architecture", "UNet2DConditionModel"], "--init_unet .*holds a UNet2DModel"),
    ],
)
def test_a_folder_of_another_shape_is_refused(trained, tmp_path, extra, match):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=match):
        run(["cfg", "--output_dir", str(out), *TINY, "--max_train_steps", "1", *extra, "--init_unet", str(trained)])
    assert not (out / "checkpoint-1").exists()


def test_a_folder_without_a_unet_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="--init_unet .*unet/config.json"):
        run(["unconditional", "--output_dir", str(tmp_path / "run"), "--resolution", "8", "--init_unet", str(tmp_path)])
    assert not any((tmp_path / "run").glob("*"))  # nothing written (the writability check may make the folder)


def test_a_fixed_variance_folder_grows_a_zero_variance_head(tmp_path):
    # a learned-variance run started from a fixed-variance UNet keeps its mean channel and starts v at 0
    tiny = [a for a in TINY if a not in ("--validation_images_per_class", "1")] + ["--validation_images", "1"]
    first = run(["unconditional", "--output_dir", str(tmp_path / "fixed"), *tiny, "--max_train_steps", "2"])
    argv = [*tiny, "--max_train_steps", "1", "--learning_rate", "1e-12", "--lr_warmup_steps", "0"]
    grown = run(["unconditional", "--output_dir", str(tmp_path / "lv"), *argv, "--variance_type", "learned_range",
                 "--init_unet", str(first)])  # fmt: skip
    old, new = load_file(first / WEIGHTS), load_file(grown / WEIGHTS)
    assert new["conv_out.weight"].shape[0] == 2 * old["conv_out.weight"].shape[0] == 2
    assert (new["conv_out.weight"][:1] - old["conv_out.weight"]).abs().max() < 1e-6
    assert new["conv_out.weight"][1:].abs().max() < 1e-6 and new["conv_out.bias"][1:].abs().max() < 1e-6
    assert max((new[k] - old[k]).abs().max().item() for k in old if not k.startswith("conv_out")) < 1e-6
