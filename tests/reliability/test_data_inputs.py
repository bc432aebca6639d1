"""Hostile and wrong training data: mixed image sizes and modes, corrupt / truncated / bomb images, non-UTF-8 class
folder names, missing columns, labels missing or out of range, non-image columns, text labels."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from _tiny import tiny_args, train
from datasets import ClassLabel, Dataset, Features, Value
from datasets import Image as ImageFeature
from PIL import Image

from condiff import ClassConditionalDDPMPipeline
from condiff.data import check_images, image_channels, pil_to_model_tensor, to_model_mode


def digit(value: int = 200, size=(8, 8)) -> np.ndarray:
    a = np.zeros(size, np.uint8)
    a[2:-2, 3:-3] = value
    return a


def mixed_folder(root):
    """cat: L 8x8, RGB 10x12, LA; dog: RGBA with transparency, palette, 16-bit grayscale."""
    cat, dog = root / "cat", root / "dog"
    cat.mkdir(parents=True)
    dog.mkdir()
    Image.fromarray(digit()).save(cat / "l.png")
    Image.fromarray(np.stack([digit(size=(10, 12))] * 3, -1)).save(cat / "rgb.png")
    Image.fromarray(digit()).convert("LA").save(cat / "la.png")
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[:4, :, 3] = 255  # top half opaque white, bottom half transparent white
    Image.fromarray(rgba, "RGBA").save(dog / "rgba.png")
    Image.fromarray(digit()).convert("P").save(dog / "p.png")
    Image.fromarray(digit().astype(np.uint16) * 257).save(dog / "i16.png")
    return root


def test_mixed_sizes_and_modes_train_as_rgb(tmp_path):
    data = mixed_folder(tmp_path / "folder")
    out = train(tiny_args(tmp_path / "run", "--train_data_dir", str(data), "--max_train_steps", "2",
                          "--cache_dir", str(tmp_path / "cache")))  # fmt: skip
    pipe = ClassConditionalDDPMPipeline.from_pretrained(out)
    assert pipe.unet.config.in_channels == 3 and pipe.id2label == {0: "cat", 1: "dog"}
    assert json.loads((out / "training_summary.json").read_text())["skipped_bad_images"] == 0


def test_mode_conversion_rules():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[:2, :, 3] = 255
    flat = np.asarray(to_model_mode(Image.fromarray(rgba, "RGBA"), 3))
    assert (flat[:2] == 255).all() and (flat[2:] == 0).all()  # transparency flattened onto black
    i16 = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    assert np.asarray(to_model_mode(i16, 1)).max() == 255  # scaled, not clipped from 65535
    assert np.asarray(to_model_mode(Image.fromarray(np.full((4, 4), 1028, np.uint16)), 1)).max() == 4
    gray_palette = Image.fromarray(digit()).convert("P")
    colour_palette = Image.fromarray(np.full((8, 8, 3), [255, 0, 0], np.uint8)).convert("P")
    assert image_channels(gray_palette) == 1 and image_channels(colour_palette) == 3
    t = pil_to_model_tensor([Image.fromarray(rgba, "RGBA"), Image.fromarray(digit((6, 9)))], 8, 3)
    assert t.shape == (2, 3, 8, 8) and t.min() >= -1 and t.max() <= 1


def test_corrupt_images_are_an_error_by_default_and_skipped_with_the_flag(tmp_path):
    data = mixed_folder(tmp_path / "folder")
    (data / "cat" / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    good = (data / "dog" / "p.png").read_bytes()
    (data / "dog" / "truncated.png").write_bytes(good[: len(good) // 2])
    (data / "dog" / "empty.jpg").write_bytes(b"")
    args = ["--train_data_dir", str(data), "--max_train_steps", "2", "--cache_dir", str(tmp_path / "cache")]
    with pytest.raises(ValueError, match=r"3 of 9 images cannot be decoded .*garbage\.png.*--on_bad_image skip"):
        train(tiny_args(tmp_path / "run", *args))
    out = train(tiny_args(tmp_path / "run", *args, "--on_bad_image", "skip"))
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["skipped_bad_images"] == 3 and summary["global_step"] == 2


def test_decompression_bomb_counts_as_a_bad_image(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # an 8x8 image is then a "bomb" (> 2x the limit)
    ds = Dataset.from_dict({"image": [digit()], "label": [0]}, features=Features({"image": ImageFeature(),
                                                                                 "label": Value("int64")}))  # fmt: skip
    with pytest.raises(ValueError, match="DecompressionBombError"):
        check_images(ds, "image", "error")


def test_non_utf8_class_folder_name_is_a_clear_error(tmp_path):
    root = tmp_path / "folder"
    bad = root / os.fsdecode(b"d\xffg")
    bad.mkdir(parents=True)
    Image.fromarray(digit()).save(bad / "0.png")
    with pytest.raises(ValueError, match=r"--train_data_dir: the name .*d\\xffg.* is not valid UTF-8"):
        train(tiny_args(tmp_path / "run", "--train_data_dir", str(root)))


def parquet_dataset(tmp_path, columns: dict, features: Features | None = None) -> str:
    ds = Dataset.from_dict(columns, features=features)
    folder = tmp_path / "ds"
    folder.mkdir()
    ds.to_parquet(str(folder / "train.parquet"))
    return str(folder)


def images(n: int) -> list:
    return [digit(50 + 20 * i) for i in range(n)]


@pytest.mark.parametrize(
    "labels,feature,match",
    [
        ([0, 1, 7], "classlabel_cast", r"class ids outside 0\.\.1 .*1 rows, first row 2 with label 7"),
        ([0, -1, 1], ClassLabel(names=["a", "b"]), r"class ids outside 0\.\.1 .*first row 1 with label -1"),
        ([0, None, 1], ClassLabel(names=["a", "b"]), r"has 1 rows without a label \(first: row 1\)"),
        ([0, -3, 1], Value("int64"), r"negative class ids: -3"),
        ([0.0, 1.5, 2.0], Value("float64"), r"must hold integer class ids.*\['float'\]"),
        ([0, 10**9, 1], Value("int64"), r"class id 1000000000"),
    ],
)
def test_bad_labels_are_clear_errors(tmp_path, labels, feature, match):
    if feature == "classlabel_cast":
        features = Features({"image": ImageFeature(), "label": Value("int64")})
        ds = Dataset.from_dict({"image": images(3), "label": labels}, features=features)
        # datasets refuses 7 for a 2-name ClassLabel at creation, but a file can still declare one (metadata edited,
        # or cast without checks): write the ints, then declare the ClassLabel in the parquet schema.
        import pyarrow.parquet as pq

        folder = tmp_path / "ds"
        folder.mkdir()
        table = ds.data.table
        meta = dict(table.schema.metadata or {})
        info = json.loads(meta[b"huggingface"])
        info["info"]["features"]["label"] = {"names": ["a", "b"], "_type": "ClassLabel"}
        meta[b"huggingface"] = json.dumps(info).encode()
        pq.write_table(table.replace_schema_metadata(meta), folder / "train.parquet")
        folder = str(folder)
    else:
        features = Features({"image": ImageFeature(), "label": feature})
        folder = parquet_dataset(tmp_path, {"image": images(3), "label": labels}, features)
    with pytest.raises(ValueError, match=r"--label_column 'label' .*" + match):
        train(tiny_args(tmp_path / "run", "--dataset_name", folder, "--cache_dir", str(tmp_path / "cache")))


def test_text_labels_become_class_names(tmp_path):
    names = ["七", "ñandú", "zero", "七"]
    folder = parquet_dataset(tmp_path, {"image": images(4), "label": names},
                             Features({"image": ImageFeature(), "label": Value("string")}))  # fmt: skip
    out = train(tiny_args(tmp_path / "run", "--dataset_name", folder, "--max_train_steps", "1",
                          "--cache_dir", str(tmp_path / "cache")))  # fmt: skip
    pipe = ClassConditionalDDPMPipeline.from_pretrained(out)
    assert sorted(pipe.id2label.values()) == sorted(set(names))
    assert pipe.get_label_ids("七") == [[k for k, v in pipe.id2label.items() if v == "七"][0]]
    assert "七" in (out / "README.md").read_text(encoding="utf-8")


def test_missing_and_non_image_columns(tmp_path):
    folder = parquet_dataset(tmp_path, {"image": images(2), "digit": [0, 1]},
                             Features({"image": ImageFeature(), "digit": Value("int64")}))  # fmt: skip
    cache = ["--cache_dir", str(tmp_path / "cache")]
    with pytest.raises(ValueError, match=r"--label_column 'label' is not a column .*\['image', 'digit'\]"):
        train(tiny_args(tmp_path / "run", "--dataset_name", folder, *cache))
    with pytest.raises(ValueError, match=r"--image_column 'digit' must hold images"):
        train(tiny_args(tmp_path / "run", "--dataset_name", folder, "--image_column", "digit", "--label_column",
                        "digit", *cache))  # fmt: skip
