"""Evaluating text-to-image MNIST models (issue 9): prompt adherence and attribute control.

`PromptedPipeline` shows a text pipeline to condiff's class-conditional evaluation tools as if it took labels: label d
becomes one of several held-out phrasings naming d, so `run_settings` (the guidance sweep tool of the other
pipelines) scores accuracy, Frechet distance, diversity and speed unchanged. `attribute_control` measures how far
"thick" vs "thin" (or "left-" vs "right-slanted") prompts move the measured attribute, in standard deviations of the
real data, and `negative_prompt_shift` how far a negative prompt moves it the other way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from condiff.captions import DIGIT_NAMES, attribute_prompts, evaluation_prompts, measure_attributes
from condiff.evaluation.sampling import generate_samples

Phrasings = Callable[[int], list[str]]


class PromptedPipeline:
    """`pipe(label=[...])` for a text pipeline: the k-th image of digit d in a call gets `phrasings(d)[k % n]`."""

    num_classes = 10

    def __init__(self, pipe: Any, phrasings: Phrasings = evaluation_prompts, negative_prompt: str | None = None):
        self.pipe, self.phrasings, self.negative_prompt = pipe, phrasings, negative_prompt

    def __getattr__(self, name: str) -> Any:  # config, device, unet, progress bar settings: the wrapped pipeline's
        return getattr(self.pipe, name)

    @property
    def scheduler(self) -> Any:
        return self.pipe.scheduler

    @scheduler.setter
    def scheduler(self, value: Any) -> None:
        self.pipe.scheduler = value

    def prompts(self, labels: Sequence[int]) -> list[str]:
        seen: dict[int, int] = {}
        out = []
        for label in labels:
            options = self.phrasings(int(label))
            k = seen.get(int(label), 0)
            seen[int(label)] = k + 1
            out.append(options[k % len(options)])
        return out

    def __call__(self, label: Sequence[int], **kwargs: Any) -> Any:
        prompts = self.prompts(label)
        negative = None if self.negative_prompt is None else [self.negative_prompt] * len(prompts)
        return self.pipe(prompt=prompts, negative_prompt=negative, **kwargs)


def real_attribute_stats() -> dict[str, dict[str, float]]:
    """Mean and standard deviation of each measured attribute over the MNIST train split."""
    from condiff.data import load_mnist_arrays

    measured = measure_attributes(load_mnist_arrays("train")[0])
    return {k: {"mean": float(np.nanmean(v)), "sd": float(np.nanstd(v))} for k, v in measured.items()}


def measured_samples(pipe: Any, phrasings: Phrasings, per_digit: int, negative_prompt: str | None = None, **call):
    """(attributes of `per_digit` images of every digit, their labels, the evaluator's accuracy on them)."""
    from condiff.evaluation.metrics import default_classifier
    from condiff.evaluator import classifier_accuracy

    samples = generate_samples(PromptedPipeline(pipe, phrasings, negative_prompt), per_digit, **call)
    attributes = measure_attributes(samples.images[:, 0].numpy())
    accuracy = classifier_accuracy(default_classifier(), samples.images * 2 - 1, samples.labels)
    return attributes, samples.labels, accuracy


def attribute_control(
    pipe: Any, attribute: str, low: str, high: str, per_digit: int, stats: dict, **call: Any
) -> dict[str, Any]:
    """Per digit, the mean `attribute` of images prompted with the `high` word minus that with the `low` word (held-out
    phrasings from `attribute_prompts`), in the real data's standard deviations."""
    sd = stats[attribute]["sd"]
    means, accuracy = {}, {}
    for value in (low, high):
        measured, labels, accuracy[value] = measured_samples(
            pipe, lambda d, v=value: attribute_prompts(d, attribute, v), per_digit, **call
        )
        means[value] = [float(np.nanmean(measured[attribute][labels == d])) for d in range(10)]
    gaps = [(h - lo) / sd for h, lo in zip(means[high], means[low])]
    return {
        "attribute": attribute,
        "low": low,
        "high": high,
        "real_sd": sd,
        "mean_low": means[low],
        "mean_high": means[high],
        "gap_sd": gaps,
        "min_gap_sd": min(gaps),
        "accuracy": accuracy,
        "images_per_value": 10 * per_digit,
    }


def negative_prompt_shift(pipe: Any, attribute: str, low: str, high: str, per_digit: int, **call: Any) -> dict:
    """Mean `attribute` of images for neutral held-out prompts with no negative prompt, with `low` as the negative
    prompt (should move toward `high`) and with `high` as the negative prompt (should move toward `low`)."""
    result = {"attribute": attribute, "images": 10 * per_digit}
    for name, negative in (("none", None), (f"negative '{low}'", low), (f"negative '{high}'", high)):
        measured, _, accuracy = measured_samples(pipe, evaluation_prompts, per_digit, negative, **call)
        result[name] = {"mean": float(np.nanmean(measured[attribute])), "accuracy": accuracy}
    return result


def _article(word: str) -> str:
    return "an" if word[0] in "8aeiou" and not word.startswith("one") else "a"


def held_out_styles() -> dict[str, Phrasings]:
    """Phrasing styles a text model never saw in training (`captions.training_caption_set`; a test checks), each a
    function digit -> phrasings, plus "eval", the evaluation prompts: prompt adherence across ways of asking."""

    def handwritten(d: int) -> list[str]:
        n, k = DIGIT_NAMES[d], str(d)
        return [f"a handwritten digit {n}", f"a handwritten {k}", f"handwritten number {n}", f"a hand-drawn {n}"]

    def numeral(d: int) -> list[str]:
        n, k = DIGIT_NAMES[d], str(d)
        return [f"the number {k}", f"the numeral {k}", f"digit {k}", f"number {n}"]

    def descriptive(d: int) -> list[str]:
        n, k = DIGIT_NAMES[d], str(d)
        return [f"a picture of the numeral {n}", f"a photo of the digit {k}", f"an image showing the number {n}",
                f"a drawing of {_article(n)} {n}"]  # fmt: skip

    def terse(d: int) -> list[str]:
        n, k = DIGIT_NAMES[d], str(d)
        return [f"{k}.", f"{n}!", f"digit: {k}", f"#{k}"]

    def sentence(d: int) -> list[str]:
        n, k = DIGIT_NAMES[d], str(d)
        return [
            f"write the digit {n}",
            f"draw {_article(k)} {k}",
            f"an mnist {n}",
            f"a white {n} on a black background",
        ]

    return {"eval": evaluation_prompts, "handwritten": handwritten, "numeral": numeral, "descriptive": descriptive,
            "terse": terse, "sentence": sentence}  # fmt: skip
