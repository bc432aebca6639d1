"""train_cfg.py: argument checks, data sources, checkpoints/resume, outputs, Hub staging, a short real training."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from condiff import ClassConditionalDDPMPipeline
from condiff.data import load_mnist_arrays, uint8_to_model_tensor
from condiff.diffusion import denoising_loss, drop_labels
from condiff.hub import HubUploadError, push_folder
from condiff.models import class_conditional_unet, training_scheduler
from condiff.tasks.cfg import CFGTask
from condiff.train import build_parser, run

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--resolution", "8", "--block_out_channels", "8", "16", "--norm_num_groups", "4",
    "--train_batch_size", "8", "--max_train_samples", "64", "--validation_images_per_class", "1",
    "--validation_inference_steps", "2", "--report_to", "none",
]  # fmt: skip


def tiny_args(tmp_path, *extra):
    return ["cfg", "--output_dir", str(tmp_path / "run"), *TINY, *extra]


def train(argv: list[str]) -> Path:
    return run(argv)


def test_drop_labels_is_per_sample_at_the_requested_rate():
    torch.manual_seed(0)
    labels = torch.zeros(20000, dtype=torch.long)
    dropped = drop_labels(labels, null_class=10, p_uncond=0.1)
    rate = (dropped == 10).float().mean().item()
    assert 0.09 < rate < 0.11
    assert set(dropped.unique().tolist()) == {0, 10}
    assert torch.equal(drop_labels(labels, 10, 0.0), labels)


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--p_uncond", "1.5"], "--p_uncond"),
        (["--train_batch_size", "0"], "--train_batch_size"),
        (["--learning_rate", "-1"], "--learning_rate"),
        (["--block_out_channels", "8", "10"], "--block_out_channels"),
        (["--push_to_hub"], "--hub_model_id"),
        (["--image_column", "pixels"], "--image_column 'pixels'"),
        (["--label_column", "digit"], "--label_column 'digit'"),
        (["--dataset_name", "x", "--train_data_dir", "y"], "only one"),
    ],
)
def test_bad_arguments_fail_before_training(tmp_path, extra, match):
    with pytest.raises(ValueError, match=match):
        train(tiny_args(tmp_path, *extra))
    assert not (tmp_path / "run" / "model_index.json").exists()


def test_empty_image_folder_and_unwritable_output(tmp_path):
    empty = tmp_path / "empty" / "cats"
    empty.mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="--train_data_dir .* holds no images"):
        train(tiny_args(tmp_path, "--train_data_dir", str(empty.parent)))
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    with pytest.raises(ValueError, match="--output_dir"):
        train(["cfg", "--output_dir", str(blocker / "sub"), *TINY])
    assert blocker.read_text() == "keep me"


def test_cli_exits_with_clear_message(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train_cfg.py"), "--output_dir", str(tmp_path), "--p_uncond", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "--p_uncond must be a finite number in [0, 1]" in result.stderr


def _imagefolder(root: Path) -> Path:
    images, labels = load_mnist_arrays("train")
    for cls in (3, 7):
        d = root / f"digit{cls}"
        d.mkdir(parents=True)
        for i, img in enumerate(images[labels == cls][:12]):
            Image.fromarray(img).convert("RGB").save(d / f"{i}.png")
    return root


def test_trains_on_image_folder_with_names_and_resumes(tmp_path):
    data = _imagefolder(tmp_path / "folder")
    out = train(
        tiny_args(tmp_path, "--train_data_dir", str(data), "--max_train_steps", "4", "--checkpointing_steps", "2")
    )
    pipe = ClassConditionalDDPMPipeline.from_pretrained(out)
    assert pipe.id2label == {0: "digit3", 1: "digit7"}
    assert pipe.unet.config.in_channels == 3 and pipe.unet.config.num_class_embeds == 3
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    # Resume from the latest checkpoint and continue to step 6.
    out = train(
        tiny_args(
            tmp_path, "--train_data_dir", str(data), "--max_train_steps", "6", "--checkpointing_steps", "2",
            "--resume_from_checkpoint", "latest", "--checkpoints_total_limit", "2",
        )
    )  # fmt: skip
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["global_step"] == 6
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]


def test_outputs_model_card_and_hub_staging(tmp_path, monkeypatch):
    out = train(tiny_args(tmp_path, "--max_train_steps", "3", "--checkpointing_steps", "2", "--use_ema"))
    for name in ("model_index.json", "README.md", "training_args.json", "samples/final.png"):
        assert (out / name).is_file(), name
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    card = (out / "README.md").read_text()
    # The card names the real output folder (not the temporary folder it was staged in) in its title and code.
    assert f"# {out.name}\n" in card and f'from_pretrained("{out}")' in card and ".tmp-" not in card
    assert f'custom_pipeline="{out}"' in card and (out / "pipeline.py").is_file()
    assert "mnist-10k" in card
    assert "accelerate launch scripts/train_cfg.py --output_dir" in card and "--max_train_steps 3 " in card
    assert "v_prediction" not in card and "epsilon" in card

    uploaded = {}

    def fake_upload_folder(repo_id, folder_path, **kw):
        uploaded["files"] = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        uploaded["ignore"] = kw["ignore_patterns"]
        return "ok"

    # Pushing names the Hub id in the card instead (a new run into the same folder: --overwrite_output_dir).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUploadError):
        train(
            tiny_args(
                tmp_path, "--max_train_steps", "1", "--push_to_hub", "--hub_model_id", "someone/tiny-id",
                "--overwrite_output_dir",
            )
        )  # fmt: skip
    assert 'from_pretrained("someone/tiny-id")' in (out / "README.md").read_text()
    monkeypatch.setattr("condiff.hub.create_repo", lambda *a, **k: None)
    monkeypatch.setattr("condiff.hub.upload_folder", fake_upload_folder)
    assert push_folder(out, "someone/tiny") == "ok"
    for name in ("pipeline.py", "guidance.py", "labels.py", "README.md", "model_index.json"):
        assert name in uploaded["files"]
    assert "checkpoint-*" in uploaded["ignore"]
    assert (out / "class_conditional.py").read_text() == (REPO / "pipelines" / "class_conditional.py").read_text()


def test_push_to_unreachable_hub_keeps_local_results(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = tiny_args(tmp_path, "--max_train_steps", "2", "--push_to_hub", "--hub_model_id", "someone/tiny")
    with pytest.raises(HubUploadError, match="Everything is saved locally"):
        train(args)
    out = tmp_path / "run"
    assert ClassConditionalDDPMPipeline.from_pretrained(out).num_classes == 10
    assert (out / "README.md").is_file() and (out / "pipeline.py").is_file()


@torch.no_grad()
def held_out_loss(unet, scheduler, clean, labels) -> float:
    """The training objective on a fixed batch with fixed noise and timesteps (before/after comparisons)."""
    return denoising_loss(unet, scheduler, clean, torch.Generator().manual_seed(0), class_labels=labels).item()


@pytest.mark.slow
def test_short_training_reduces_the_denoising_loss(tmp_path):
    """About a minute of real training on an MNIST subset: the held-out denoising loss must fall clearly."""
    images, labels = load_mnist_arrays("test")
    clean, y = uint8_to_model_tensor(images[:256]), torch.from_numpy(labels[:256])
    argv = (
        ["cfg", "--output_dir", str(tmp_path / "run"), "--block_out_channels", "16", "32", "32",
         "--norm_num_groups", "8", "--train_batch_size", "32", "--max_train_samples", "2000",
         "--max_train_steps", "150",
         "--lr_warmup_steps", "20", "--checkpointing_steps", "1000", "--validation_steps", "1000",
         "--report_to", "none", "--no-use_ema", "--validation_inference_steps", "2"]
    )  # fmt: skip
    args = build_parser(CFGTask).parse_args(argv[1:])
    torch.manual_seed(args.seed)
    untrained = class_conditional_unet(10, 28, 1, (16, 32, 32), 1, False, 8)
    scheduler = training_scheduler(args.noise_schedule, args.prediction_type)
    before = held_out_loss(untrained, scheduler, clean, y)
    out = train(argv)
    trained = ClassConditionalDDPMPipeline.from_pretrained(out).unet
    after = held_out_loss(trained, scheduler, clean, y)
    assert after < 0.35 * before, (before, after)
    assert np.isfinite(after)


TORCHRUN_ARGS = [*TINY, "--max_train_steps", "4", "--checkpointing_steps", "2", "--train_batch_size", "4"]


def test_two_process_torchrun_stays_in_sync_and_rank0_writes(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
         str(REPO / "scripts" / "train_cfg.py"), "--output_dir", str(out), *TORCHRUN_ARGS],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["num_processes"] == 2
    checksums = summary["rank_parameter_checksums"]
    assert len(checksums) == 2 and checksums[0] == pytest.approx(checksums[1], rel=1e-9)
    # One set of weights per checkpoint (rank 0), plus each rank's own RNG state.
    for ckpt in ("checkpoint-2", "checkpoint-4"):
        names = sorted(p.name for p in (out / ckpt).iterdir())
        assert names.count("model.safetensors") == 1
        assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(names)
    assert result.stdout.count("Saved to ") == 1


def test_trains_on_a_datasets_folder_with_named_columns(tmp_path):
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    images, labels = load_mnist_arrays("train")
    features = Features({"img": ImageFeature(), "digit": ClassLabel(names=["zero", "one", "two"])})
    keep = labels < 3
    ds = Dataset.from_dict({"img": list(images[keep][:48]), "digit": labels[keep][:48].tolist()}, features=features)
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    ds.to_parquet(str(folder / "train.parquet"))
    args = tiny_args(
        tmp_path, "--dataset_name", str(folder), "--image_column", "img", "--label_column", "digit",
        "--max_train_steps", "2", "--cache_dir", str(tmp_path / "cache"),
    )  # fmt: skip
    pipe = ClassConditionalDDPMPipeline.from_pretrained(train(args))
    assert pipe.id2label == {0: "zero", 1: "one", 2: "two"} and pipe.unet.config.in_channels == 1


def test_bf16_gradient_accumulation_and_tensorboard(tmp_path):
    """bf16 autocast on CPU, 2 micro-batches per update, and the validation grid logged to TensorBoard."""
    args = tiny_args(
        tmp_path, "--mixed_precision", "bf16", "--gradient_accumulation_steps", "2", "--max_train_steps", "3",
        "--validation_steps", "2", "--report_to", "tensorboard",
    )  # fmt: skip
    out = train(args)
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["global_step"] == 3 and np.isfinite(summary["final_loss"])
    assert (out / "samples" / "step-0000002.png").is_file()  # the last step is not validated: final.png shows it
    events = list((out / "logs").rglob("events.out.tfevents.*"))
    assert events and sum(e.stat().st_size for e in events) > 1000  # scalars and the validation image


def test_num_threads_applies_to_the_run_and_the_caller_keeps_its_count(tmp_path):
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    out = train(tiny_args(tmp_path, "--max_train_steps", "1", "--num_threads", str(wanted)))
    assert json.loads((out / "training_summary.json").read_text())["torch_threads"] == wanted
    assert torch.get_num_threads() == before
