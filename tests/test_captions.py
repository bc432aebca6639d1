"""Attribute measurement, attribute words and captions of MNIST digits (`condiff.captions`)."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest

from condiff.captions import (
    ATTRIBUTE_WORDS,
    ATTRIBUTES,
    DIGIT_NAMES,
    AttributeThresholds,
    attribute_prompts,
    attribute_words,
    evaluation_prompts,
    fit_thresholds,
    make_captions,
    measure_attributes,
    training_caption_set,
)

ALL_WORDS = {w for words in ATTRIBUTE_WORDS.values() for w in words if w}
WORD_COMBOS = [
    dict(zip(ATTRIBUTES, c))
    for c in itertools.product(*[(None, *(w for w in ATTRIBUTE_WORDS[k] if w)) for k in ATTRIBUTES])
]


def canvas() -> np.ndarray:
    return np.zeros((28, 28), np.uint8)


def sheared_bar(angle: float, width: int = 3, rows: tuple[int, int] = (4, 24)) -> np.ndarray:
    """A bar `width` px wide in every row, its top shifted right by tan(angle) px per row for angle > 0 ("/")."""
    img, shear = canvas(), np.tan(np.radians(angle))
    for r in range(*rows):
        start = int(round(14 + shear * (14 - r) - width / 2))
        img[r, start : start + width] = 255
    return img


def tokens(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9-]+", text.lower()))


def shapes_of_width(w: int) -> list[np.ndarray]:
    horizontal, vertical, rectangle, ring = canvas(), canvas(), canvas(), canvas()
    horizontal[12 : 12 + w, 4:24] = 255
    vertical[4:24, 12 : 12 + w] = 255
    rectangle[5:23, 10 : 10 + w] = 255
    rectangle[5:23, 18 : 18 + w] = 255  # two bars: the ridge of each
    ring[6 : 6 + w, 6:22] = ring[22 - w : 22, 6:22] = ring[6:22, 6 : 6 + w] = ring[6:22, 22 - w : 22] = 255
    return [horizontal, vertical, rectangle, ring]


@pytest.mark.parametrize("w", range(1, 7))
def test_thickness_of_lines_of_known_width(w):
    thickness = measure_attributes(np.stack(shapes_of_width(w)))["thickness"]
    np.testing.assert_allclose(thickness[:3], w, atol=1e-9)  # straight strokes: exact
    assert abs(thickness[3] - w) <= 0.15 * w  # corners of the ring add a little


@pytest.mark.parametrize("angle", [-30, -20, -10, 10, 20, 30])
def test_thickness_of_sheared_bars_is_perpendicular_width(angle):
    images = np.stack([sheared_bar(angle, w) for w in (2, 3, 4)])
    expected = np.array([2, 3, 4]) * np.cos(np.radians(angle))
    np.testing.assert_allclose(measure_attributes(images)["thickness"], expected, rtol=0.15)


def test_float_images_measure_like_uint8():
    images = np.stack(shapes_of_width(3) + [sheared_bar(20)])
    a, b = measure_attributes(images), measure_attributes(images.astype(np.float32) / 255)
    for name in ATTRIBUTES:
        np.testing.assert_allclose(a[name], b[name], atol=1e-9)


@pytest.mark.parametrize("angle", [-30, -20, -10, 0, 10, 20, 30])
def test_slant_of_sheared_bars(angle):
    slant = measure_attributes(np.stack([sheared_bar(angle, w) for w in (1, 3, 5)]))["slant"]
    np.testing.assert_allclose(slant, angle, atol=1.0)


def test_slant_sign_slash_positive_backslash_negative():
    slash, backslash, upright = canvas(), canvas(), canvas()
    for i in range(20):
        slash[4 + i, 23 - i] = backslash[4 + i, 4 + i] = 255  # "/": the top row's ink is on the right
    upright[4:24, 13:15] = 255
    slant = measure_attributes(np.stack([slash, backslash, upright]))["slant"]
    assert slant[0] == pytest.approx(45, abs=1) and slant[1] == pytest.approx(-45, abs=1)
    assert slant[2] == pytest.approx(0, abs=1e-9)


def test_width_is_bounding_box_of_ink():
    images = np.stack([shapes_of_width(w)[1] for w in range(1, 7)] + [sheared_bar(20, 3, rows=(4, 24))])
    width = measure_attributes(images)["width"]
    np.testing.assert_array_equal(width[:6], np.arange(1, 7))
    assert width[6] == pytest.approx(3 + np.tan(np.radians(20)) * 19, abs=1)
    faint = images[:1].astype(np.float64) / 255 * 0.4  # binarised at half the image's own maximum
    faint[0, 0, 0] = 0.1
    assert measure_attributes(faint)["width"][0] == 1


def test_empty_image_gives_nan_and_no_attribute_words():
    images = np.stack([canvas(), shapes_of_width(3)[0], canvas()])
    attributes = measure_attributes(images)
    for name in ATTRIBUTES:
        assert np.isnan(attributes[name][[0, 2]]).all() and np.isfinite(attributes[name][1])
    thresholds = AttributeThresholds(thickness=(2.0, 3.0), slant=(-5.0, 5.0), width=(10.0, 15.0))
    words = attribute_words(attributes, thresholds)
    assert words[0] == {"thickness": None, "slant": None, "width": None}
    assert words[1] == {"thickness": None, "slant": "upright", "width": "wide"}
    captions = make_captions([4, 4, 8], words, np.random.default_rng(0), p_attributes=1.0)
    assert not tokens(captions[0]) & ALL_WORDS and not tokens(captions[2]) & ALL_WORDS
    with pytest.raises(ValueError):
        measure_attributes(canvas())


def test_thresholds_are_terciles_and_round_trip_through_json():
    rng = np.random.default_rng(0)
    attributes = {name: rng.normal(size=300) for name in ATTRIBUTES}
    attributes["slant"][:10] = np.nan
    thresholds = fit_thresholds(attributes)
    for name in ATTRIBUTES:
        values = attributes[name][np.isfinite(attributes[name])]
        assert getattr(thresholds, name) == pytest.approx(tuple(np.percentile(values, [33, 67])))
        low, high = getattr(thresholds, name)
        assert 0.30 < np.mean(values < low) < 0.36 and 0.30 < np.mean(values > high) < 0.36
    assert AttributeThresholds.from_dict(json.loads(json.dumps(thresholds.to_dict()))) == thresholds


def test_attribute_words_by_tercile():
    thresholds = AttributeThresholds(thickness=(2.0, 3.0), slant=(0.0, 10.0), width=(12.0, 16.0))
    attributes = {
        "thickness": np.array([1.5, 2.5, 3.5]),
        "slant": np.array([-5.0, 5.0, 20.0]),
        "width": np.array([8.0, 14.0, 20.0]),
    }
    assert attribute_words(attributes, thresholds) == [
        {"thickness": "thin", "slant": "left-slanted", "width": "narrow"},
        {"thickness": None, "slant": "upright", "width": None},
        {"thickness": "thick", "slant": "right-slanted", "width": "wide"},
    ]


def test_captions_name_the_class_and_only_the_images_attribute_words():
    labels = [d for d in range(10) for _ in WORD_COMBOS]
    words = WORD_COMBOS * 10
    captions = make_captions(labels, words, np.random.default_rng(1), p_attributes=0.8)
    with_words = 0
    for label, image_words, caption in zip(labels, words, captions):
        found = tokens(caption)
        assert {DIGIT_NAMES[label], str(label)} & found, caption
        assert not (set(DIGIT_NAMES) | set("0123456789")) - {DIGIT_NAMES[label], str(label)} & found, caption
        assert found & ALL_WORDS <= {w for w in image_words.values() if w}, (caption, image_words)
        with_words += bool(found & ALL_WORDS)
    assert 0.5 < with_words / len(captions) < 0.85  # p_attributes, less templates that omit the present words
    assert set(captions) <= training_caption_set()
    assert len(set(captions)) > 200  # many phrasings


def test_captions_without_attributes_and_determinism():
    labels, words = list(range(10)) * 5, [WORD_COMBOS[-1]] * 50
    class_only = make_captions(labels, words, np.random.default_rng(0), p_attributes=0.0)
    assert all(not tokens(c) & ALL_WORDS for c in class_only)
    assert {"7", "seven", "a seven", "an 8", "an eight"} <= set(class_only) | set(
        make_captions(labels * 4, words * 4, np.random.default_rng(1), p_attributes=0.0)
    )
    first = make_captions(labels, words, np.random.default_rng(3))
    assert first == make_captions(labels, words, np.random.default_rng(3))
    assert first != make_captions(labels, words, np.random.default_rng(4))
    with pytest.raises(ValueError):
        make_captions([1, 2], words[:1], np.random.default_rng(0))


def test_training_captions_include_examples():
    seen = training_caption_set()
    examples = [
        "a thick, right-slanted seven",
        "the digit 1, thin and upright",
        "7",
        "a seven",
        "an upright, thick four",
    ]
    assert set(examples) | {"a wide 3 with a thin stroke"} <= seen
    assert training_caption_set([3]) <= seen and not any("seven" in c for c in training_caption_set([3]))


def test_evaluation_and_attribute_prompts_are_held_out():
    seen = training_caption_set()
    for digit in range(10):
        prompts = evaluation_prompts(digit)
        assert len(prompts) >= 4 and not set(prompts) & seen
        for p in prompts:
            assert {DIGIT_NAMES[digit], str(digit)} & tokens(p) and not tokens(p) & ALL_WORDS
        for attribute, values in ATTRIBUTE_WORDS.items():
            for value in filter(None, values):
                prompts = attribute_prompts(digit, attribute, value)
                assert len(prompts) >= 3 and not set(prompts) & seen
                for p in prompts:
                    assert {DIGIT_NAMES[digit], str(digit)} & tokens(p) and tokens(p) & ALL_WORDS == {value}
    with pytest.raises(ValueError):
        attribute_prompts(7, "thickness", "wide")
    with pytest.raises(ValueError):
        evaluation_prompts(10)


def test_articles():
    texts = set(training_caption_set())
    for digit in range(10):
        texts.update(evaluation_prompts(digit))
        for attribute, values in ATTRIBUTE_WORDS.items():
            for value in filter(None, values):
                texts.update(attribute_prompts(digit, attribute, value))
    joined = "\n".join(texts)
    assert not re.search(r"\ba (eight|8|upright)\b", joined)
    assert not re.search(r"\ban (?!eight\b|8\b|upright\b|image\b)", joined)
    assert {"an eight", "an 8", "a one", "an upright, thick four", "an upright eight"} <= texts


def test_attributes_of_real_mnist_are_sensible():
    from condiff.data import load_mnist_arrays

    images, labels = load_mnist_arrays("train")
    images, labels = images[:2000], labels[:2000]
    attributes = measure_attributes(images)
    assert all(np.isfinite(v).all() for v in attributes.values())
    thickness, slant, width = attributes["thickness"], attributes["slant"], attributes["width"]
    assert np.mean((thickness > 1.5) & (thickness < 5)) > 0.9
    assert 2.0 < np.median(thickness) < 3.5
    assert np.mean(np.abs(slant) < 45) > 0.95 and -5 < np.median(slant) < 20  # handwriting leans right a little
    assert width[labels == 1].mean() + 5 < width[labels == 0].mean()
    assert np.mean(width <= 3) < 0.01 and width.max() <= 28
    words = attribute_words(attributes, fit_thresholds(attributes))
    for name, (low, mid, high) in ATTRIBUTE_WORDS.items():
        counts = [sum(w[name] == v for w in words) for v in (low, mid, high)]
        assert all(600 < c < 740 for c in counts), (name, counts)
