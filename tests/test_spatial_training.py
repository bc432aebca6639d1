"""The spatial task on the engine: flags refused before any work, SR and layout runs export loadable pipelines whose
folders also load without condiff, the loss is exact under its generator."""

import json

import numpy as np
import pytest
import torch
from conftest import sample_without_condiff

from condiff import SemanticLayoutPipeline, SuperResolutionPipeline
from condiff.train import parse, run

TINY = [
    "--resolution", "8", "--block_out_channels", "8", "16", "--norm_num_groups", "4", "--train_batch_size", "8",
    "--max_train_samples", "64", "--validation_inference_steps", "2", "--report_to", "none",
    "--architecture", "UNet2DConditionModel", "--low_resolutions", "2", "4", "--layout_cell", "2",
]  # fmt: skip


def spatial_args(tmp_path, *extra):
    return ["spatial", "--output_dir", str(tmp_path / "run"), *TINY, *extra]


@pytest.mark.parametrize("extra, match", [
    (["--condition", "depth"], "--condition"),
    (["--low_resolutions", "8"], "low_resolutions"),
    (["--layout_cell", "3"], "--layout_cell 3 must divide --resolution 8"),
    (["--max_noise_level", "1000"], "max_noise_level"),
    (["--p_uncond", "1.5"], "p_uncond"),
])  # fmt: skip
def test_bad_spatial_flags_fail_before_training(tmp_path, extra, match):
    with pytest.raises((ValueError, SystemExit), match=match if "--condition" not in extra else None):
        run(spatial_args(tmp_path, *extra))
    assert not (tmp_path / "run" / "checkpoint-1").exists()


def test_the_loss_is_exact_under_its_generator_and_conditions_every_row(tmp_path):
    cls, args, _ = parse(spatial_args(tmp_path, "--class_labels"))
    task = cls(args)
    task.check_args()
    dataset = task.dataset()
    modules = task.build()
    batch = task.collate([dataset[i] for i in range(8)])
    losses = [task.loss(modules, batch, torch.Generator().manual_seed(3))[0].item() for _ in range(2)]
    assert losses[0] == losses[1]
    cond, inputs = task.condition(batch["images"], batch["labels"], torch.Generator().manual_seed(0))
    assert cond.shape == batch["images"].shape and inputs["timestep_cond"].shape == (8, 64)
    assert modules.unet.config.in_channels == 2 and modules.unet.config.num_class_embeds == 11


@pytest.mark.parametrize("condition, cls", [("super_resolution", SuperResolutionPipeline),
                                            ("layout", SemanticLayoutPipeline)])  # fmt: skip
def test_a_short_run_exports_a_pipeline_that_loads_with_and_without_condiff(tmp_path, condition, cls):
    out = run(spatial_args(tmp_path, "--condition", condition, "--max_train_steps", "2", "--checkpointing_steps", "2"))
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == cls.__name__
    assert (out / "samples" / "final.png").is_file() and "scripts/train_spatial.py" in (out / "README.md").read_text()
    pipe = cls.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    if condition == "layout":
        image, call, shape = np.full((4, 8), 10), "{'image': __import__('numpy').full((4, 8), 10)}", (1, 1, 8, 16)
    else:
        image, call, shape = torch.full((1, 1, 4, 4), 0.5), "{'image': torch.full((1, 1, 4, 4), 0.5)}", (1, 1, 8, 8)
    here = pipe(image=image, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert here.shape == shape
    there, module = sample_without_condiff(out, tmp_path / "out.pt", call)
    assert "condiff" not in module and torch.allclose(there, here, atol=1e-5)


def test_the_information_limit_classifier_sees_only_the_low_resolution_input(tmp_path):
    from condiff.pipelines.spatial_conditions import downsample_area

    cls, args, _ = parse(["evaluator", "--output_dir", str(tmp_path / "limit"), "--input_resolution", "7"])
    task = cls(args)
    task.check_args()
    images = torch.rand(2, 1, 28, 28) * 2 - 1
    seen = task.seen(images)
    assert seen.shape == images.shape
    other = images + (torch.rand_like(images) - 0.5) * 0.1
    other = other - torch.nn.functional.interpolate(
        downsample_area(other, 7) - downsample_area(images, 7), scale_factor=4
    )
    assert torch.allclose(task.seen(other), seen, atol=1e-5)  # same 7x7 content, same view
    _, bad, _ = parse(["evaluator", "--output_dir", str(tmp_path / "x"), "--input_resolution", "40"])
    with pytest.raises(ValueError, match="input_resolution"):
        cls(bad).check_args()
