"""Text captions of MNIST digits from measured attributes, for text-conditional (latent) diffusion.

1. `measure_attributes` measures stroke thickness, slant and width of each image (numpy + scipy only).
2. `fit_thresholds` takes the terciles of the training set; `attribute_words` turns measurements into words:
   thickness "thin" / "thick", slant "left-slanted" / "upright" / "right-slanted", width "narrow" / "wide".
3. `make_captions` writes one caption per image from a fixed list of training templates, mixing number words
   and numerals; `evaluation_prompts` and `attribute_prompts` give held-out phrasings, never produced in
   training (`training_caption_set` lists every training caption, so that can be checked).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ATTRIBUTES = ("thickness", "slant", "width")
# Words for the lower, middle and upper tercile of each attribute (None: no word).
ATTRIBUTE_WORDS: dict[str, tuple[str | None, str | None, str | None]] = {
    "thickness": ("thin", None, "thick"),
    "slant": ("left-slanted", "upright", "right-slanted"),
    "width": ("narrow", None, "wide"),
}
INK_THRESHOLD = 0.5  # ink = pixels above this fraction of the image's brightest pixel
MIN_INK = 0.1  # images whose brightest pixel is below this (on a [0, 1] scale) count as empty

Words = Mapping[str, str | None]


def _as_unit_float(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images must be (N, H, W), got shape {images.shape}")
    if images.dtype == np.uint8:
        return images.astype(np.float64) / 255.0
    return images.astype(np.float64)


def _stroke_thickness(ink: np.ndarray) -> float:
    """Mean stroke width of one binary image: the distance transform on its ridge, at twice the resolution.

    Upsampling by 2 makes every stroke an even number of pixels wide, so a straight stroke of width w has a
    two-pixel ridge at distance exactly w (half-pixel units) from the background: no discretisation bias.
    """
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    crop = np.pad(ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], 1)
    up = crop.repeat(2, 0).repeat(2, 1)
    dist = ndimage.distance_transform_edt(up)
    ridge = up & (dist >= ndimage.maximum_filter(dist, size=3))
    return float(dist[ridge].mean())  # 2 x (mean ridge distance in half pixels) / 2


def measure_attributes(images: np.ndarray) -> dict[str, np.ndarray]:
    """Measure each digit's "thickness", "slant" and "width" (float arrays of length N; NaN for empty images).

    `images` is (N, H, W): uint8 (0 background, 255 ink) or floats in [0, 1]. Ink is binarised at half the
    image's maximum.

    - thickness: mean stroke width in pixels, 2 x the mean Euclidean distance transform on the stroke's ridge
      (its 3x3 local maxima), computed at 2x resolution to remove the half-pixel bias of even widths.
    - slant: shear in degrees from ink-weighted central moments, atan(-mu11 / mu02) with rows pointing down,
      so "/" (top leaning right) is positive, "\\" negative and "|" zero.
    - width: width in pixels of the bounding box of the binarised ink.
    """
    x = _as_unit_float(images)
    n, h, w = x.shape
    peak = x.reshape(n, -1).max(1) if n else np.zeros(0)
    has_ink = peak >= MIN_INK
    ink = (x > INK_THRESHOLD * peak[:, None, None]) & has_ink[:, None, None]

    weights = np.where(has_ink[:, None, None], x, 0.0)
    mass = weights.sum((1, 2))
    safe_mass = np.where(has_ink, mass, 1.0)
    ys, xs = np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64)
    y_mean = (weights.sum(2) * ys).sum(1) / safe_mass
    x_mean = (weights.sum(1) * xs).sum(1) / safe_mass
    dy = ys[None, :, None] - y_mean[:, None, None]
    dx = xs[None, None, :] - x_mean[:, None, None]
    mu11 = (weights * dx * dy).sum((1, 2))
    mu02 = (weights * dy * dy).sum((1, 2))
    slant = np.degrees(np.arctan2(-mu11, mu02))

    columns = ink.any(1)
    first, last = columns.argmax(1), w - 1 - columns[:, ::-1].argmax(1)
    width = (last - first + 1).astype(np.float64)

    thickness = np.array([_stroke_thickness(im) if ok else np.nan for im, ok in zip(ink, has_ink)], dtype=np.float64)
    nan = np.full(n, np.nan)
    return {
        "thickness": thickness,
        "slant": np.where(has_ink, slant, nan),
        "width": np.where(has_ink, width, nan),
    }


@dataclass(frozen=True)
class AttributeThresholds:
    """Lower and upper tercile boundaries (low, high) of each attribute, fitted on a training set."""

    thickness: tuple[float, float]
    slant: tuple[float, float]
    width: tuple[float, float]

    def to_dict(self) -> dict[str, list[float]]:
        """A JSON-ready dict {attribute: [low, high]}."""
        return {name: [float(v) for v in getattr(self, name)] for name in ATTRIBUTES}

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[float]]) -> AttributeThresholds:
        """Inverse of `to_dict`."""
        return cls(**{name: (float(data[name][0]), float(data[name][1])) for name in ATTRIBUTES})


def fit_thresholds(
    attributes: Mapping[str, np.ndarray], percentiles: tuple[float, float] = (33.0, 67.0)
) -> AttributeThresholds:
    """The 33rd and 67th percentiles of each attribute, ignoring NaN (empty images)."""
    bounds = {}
    for name in ATTRIBUTES:
        values = np.asarray(attributes[name], dtype=np.float64)
        if not np.isfinite(values).any():
            raise ValueError(f"no finite {name} values to fit thresholds on")
        low, high = np.nanpercentile(values, percentiles)
        bounds[name] = (float(low), float(high))
    return AttributeThresholds(**bounds)


def attribute_words(
    attributes: Mapping[str, np.ndarray], thresholds: AttributeThresholds
) -> list[dict[str, str | None]]:
    """Per image {"thickness", "slant", "width": word or None}: below the low tercile boundary the low word,
    above the high boundary the high word, else the middle word (None, or "upright" for slant); NaN gives None."""
    n = len(np.asarray(attributes[ATTRIBUTES[0]]))
    out: list[dict[str, str | None]] = [{} for _ in range(n)]
    for name in ATTRIBUTES:
        values = np.asarray(attributes[name], dtype=np.float64)
        low, high = getattr(thresholds, name)
        low_word, mid_word, high_word = ATTRIBUTE_WORDS[name]
        for row, v in zip(out, values):
            row[name] = None if np.isnan(v) else low_word if v < low else high_word if v > high else mid_word
    return out


def _article(phrase: str) -> str:
    """ "a" or "an" for the phrase's first word, by sound: "an eight", "an 8", "an upright", "a one"."""
    first = phrase.split(" ", 1)[0].lower()
    vowel = first[:1] in ("a", "e", "i", "o", "u") and not first.startswith(("one", "uni"))
    return "an" if vowel or first.startswith("8") else "a"


def _a(phrase: str) -> str:
    return f"{_article(phrase)} {phrase}"


def _cat(*parts: str | None, sep: str = " ") -> str:
    return sep.join(p for p in parts if p)


def _adj(words: Words, order: Sequence[str]) -> str:
    return ", ".join(w for w in (words.get(k) for k in order) if w)


def _and(words: Words, order: Sequence[str]) -> str:
    present = [w for w in (words.get(k) for k in order) if w]
    return f"{', '.join(present[:-1])} and {present[-1]}" if len(present) > 1 else "".join(present)


def _opt(prefix: str, text: str) -> str:
    return f"{prefix} {text}" if text else ""


def _stroke(words: Words) -> str:
    return f"with a {words['thickness']} stroke" if words.get("thickness") else ""


# Training templates (name, numeral, words) -> caption. Attributes a template leaves out are simply omitted.
Template = Callable[[str, str, Words], str]
CLASS_TEMPLATES: tuple[Template, ...] = (
    lambda n, d, w: n,  # "seven"
    lambda n, d, w: d,  # "7"
    lambda n, d, w: _a(n),  # "a seven"
    lambda n, d, w: _a(d),  # "an 8"
    lambda n, d, w: f"the digit {d}",  # "the digit 7"
    lambda n, d, w: f"the number {n}",  # "the number seven"
)
ATTRIBUTE_TEMPLATES: tuple[Template, ...] = (
    lambda n, d, w: _a(_cat(_adj(w, ("thickness", "slant", "width")), n)),  # "a thick, right-slanted seven"
    lambda n, d, w: _a(_cat(_adj(w, ("slant", "thickness", "width")), n)),  # "an upright, thick four"
    lambda n, d, w: _a(_cat(_adj(w, ("width", "slant", "thickness")), d)),  # "a wide, left-slanted, thin 7"
    # "the digit 1, thin and upright"
    lambda n, d, w: _cat(f"the digit {d}", _and(w, ("thickness", "slant", "width")), sep=", "),
    lambda n, d, w: _cat(_a(_cat(w.get("width"), d)), _stroke(w)),  # "a wide 3 with a thin stroke"
    lambda n, d, w: _cat(_a(_cat(w.get("slant"), n)), _stroke(w)),  # "a left-slanted two with a thick stroke"
    lambda n, d, w: _cat(n, _adj(w, ("width", "thickness", "slant")), sep=", "),  # "seven, wide, thick, upright"
    # "an 8 that is upright and wide"
    lambda n, d, w: _cat(_a(d), _opt("that is", _and(w, ("slant", "width", "thickness")))),
)


def _has_words(words: Words) -> bool:
    return any(words.get(k) for k in ATTRIBUTES)


def make_captions(
    labels: Sequence[int] | np.ndarray, words: Sequence[Words], rng: np.random.Generator, p_attributes: float = 0.8
) -> list[str]:
    """One caption per image from a randomly drawn training template; with probability 1 - p_attributes (and
    always when the image has no attribute word) a class-only template ("7", "a seven", "the digit 7")."""
    if len(labels) != len(words):
        raise ValueError(f"{len(labels)} labels but {len(words)} word dicts")
    captions = []
    for label, image_words in zip(labels, words):
        label = int(label)
        use_words = rng.random() < p_attributes and _has_words(image_words)
        templates = ATTRIBUTE_TEMPLATES if use_words else CLASS_TEMPLATES
        template = templates[rng.integers(len(templates))]
        captions.append(template(DIGIT_NAMES[label], str(label), image_words))
    return captions


def training_caption_set(labels: Iterable[int] = range(10)) -> set[str]:
    """Every caption the training templates can produce for these digits (all templates x word combinations)."""
    options = [(None, *(w for w in ATTRIBUTE_WORDS[k] if w)) for k in ATTRIBUTES]
    combos = [dict(zip(ATTRIBUTES, c)) for c in itertools.product(*options)]
    out = set()
    for label in labels:
        name, numeral = DIGIT_NAMES[int(label)], str(int(label))
        out.update(t(name, numeral, {}) for t in CLASS_TEMPLATES)
        out.update(t(name, numeral, w) for t in ATTRIBUTE_TEMPLATES for w in combos)
    return out


def _digit(digit: int) -> tuple[str, str]:
    if not 0 <= int(digit) <= 9:
        raise ValueError(f"digit must be 0..9, got {digit}")
    return DIGIT_NAMES[int(digit)], str(int(digit))


def evaluation_prompts(digit: int) -> list[str]:
    """Held-out phrasings naming the digit and no attribute (none is a training caption)."""
    name, numeral = _digit(digit)
    return [
        f"a handwritten {name}",
        f"number {numeral}, handwritten",
        f"an image of the digit {name}",
        f"{name}.",
        f"a picture of {_a(numeral)}",
    ]


def attribute_prompts(digit: int, attribute: str, value: str) -> list[str]:
    """Held-out phrasings naming the digit and one attribute word (none is a training caption)."""
    if attribute not in ATTRIBUTE_WORDS or value not in ATTRIBUTE_WORDS[attribute] or value is None:
        allowed = {k: [w for w in v if w] for k, v in ATTRIBUTE_WORDS.items()}
        raise ValueError(f"unknown attribute/value {attribute!r}={value!r}; allowed: {allowed}")
    name, numeral = _digit(digit)
    prompts = [
        f"a handwritten {value} {name}",
        f"an image of {_a(value)} {numeral}",
        f"{value} {name}.",
        f"handwritten {numeral}, {value}",
    ]
    if attribute == "thickness":
        prompts.append(f"a handwritten {name} with a {value} stroke")
    return prompts
