"""Sample-quality metrics (README, "Evaluate"): conditional accuracy and the Frechet distance of evaluator
features against the MNIST test split, with the real-vs-real floor (train rows vs test rows) beside it, and
within-class diversity relative to the real test split's.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from scipy import linalg

from condiff.data import load_mnist_arrays, uint8_to_model_tensor
from condiff.evaluator import MnistClassifier, load_evaluator

__all__ = [
    "frechet_distance",
    "classifier_features_and_logits",
    "conditional_accuracy",
    "real_features",
    "real_vs_real_floor",
    "matched_floor",
    "default_classifier",
    "evaluate_images",
    "within_class_diversity",
    "real_diversity",
    "guidance_misses",
]


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Run BLAS on one thread: for 128 x 128 matrices threads only add contention (a shared 2-core machine
    after torch work made `sqrtm` 50x slower). threadpoolctl is optional."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets [N, D] and [M, D] (float64).

    ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), with unbiased covariances.
    """
    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feats_a and feats_b must be [N, D] with the same D, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 rows per set to estimate a covariance, got {len(a)} and {len(b)}")
    with _single_threaded_blas():
        return _frechet_distance(a, b)


def _frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(cov_a @ cov_b)
    if caught or not np.isfinite(covmean).all():
        # Singular product (e.g. constant features): regularise both covariances slightly (pytorch-fid).
        offset = np.eye(a.shape[1]) * 1e-6
        covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(covmean.imag).max()
        if imag > 1e-3 * max(1.0, np.abs(covmean.real).max()):
            raise ValueError(f"matrix square root has a large imaginary component ({imag:.3g})")
        covmean = covmean.real
    diff = mu_a - mu_b
    fd = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))
    return max(fd, 0.0)  # round-off can give tiny negatives for (near-)identical sets


@torch.inference_mode()
def classifier_features_and_logits(
    classifier: MnistClassifier, images: torch.Tensor, batch_size: int = 500
) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features [N, D] and logits [N, K] (float32 numpy) of images [N, 1, 28, 28] in [-1, 1].

    Runs in batches on the classifier's device; the classifier is put in eval mode.
    """
    classifier.eval()
    device = next(classifier.parameters()).device
    feats, logits = [], []
    for i in range(0, len(images), batch_size):
        xb = torch.as_tensor(images[i : i + batch_size]).to(device=device, dtype=torch.float32)
        f, lg = classifier.features_and_logits(xb)
        feats.append(f.float().cpu().numpy())
        logits.append(lg.float().cpu().numpy())
    if not feats:
        raise ValueError("images is empty")
    return np.concatenate(feats), np.concatenate(logits)


def conditional_accuracy(
    logits_or_preds: np.ndarray | torch.Tensor, labels: Sequence[int] | np.ndarray | torch.Tensor
) -> float:
    """Fraction of rows whose prediction equals the requested label.

    `logits_or_preds` is logits [N, K] (argmax is taken) or predicted class ids [N].
    """
    pred = np.asarray(logits_or_preds.detach().cpu() if torch.is_tensor(logits_or_preds) else logits_or_preds)
    if pred.ndim == 2:
        pred = pred.argmax(1)
    lab = np.asarray(labels.detach().cpu() if torch.is_tensor(labels) else labels).reshape(-1)
    if pred.shape != lab.shape:
        raise ValueError(f"labels has {lab.shape[0]} entries but there are {pred.shape[0]} predictions")
    if len(lab) == 0:
        raise ValueError("labels is empty")
    return float((pred == lab).mean())


@lru_cache(maxsize=1)
def default_classifier() -> MnistClassifier:
    """The shipped evaluator on CPU, loaded once per process."""
    return load_evaluator()


# classifier -> {split: (features, logits)}; weak keys, so a dropped classifier releases its cache.
_REAL_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_FLOOR_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_MATCHED_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_DIVERSITY_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _real_outputs(split: str, classifier: MnistClassifier) -> tuple[np.ndarray, np.ndarray]:
    per_split = _REAL_CACHE.setdefault(classifier, {})
    if split not in per_split:
        images, _labels = load_mnist_arrays(split)
        per_split[split] = classifier_features_and_logits(classifier, uint8_to_model_tensor(images))
    return per_split[split]


def real_features(split: str, classifier: MnistClassifier | None = None) -> np.ndarray:
    """Evaluator features [N, D] of the vendored MNIST split, computed once per (split, classifier) object.

    The cache assumes the classifier's weights do not change afterwards.
    """
    return _real_outputs(split, classifier if classifier is not None else default_classifier())[0]


def real_vs_real_floor(classifier: MnistClassifier | None = None) -> float:
    """Frechet distance of train-split features vs test-split features: what real data scores (cached)."""
    classifier = classifier if classifier is not None else default_classifier()
    if classifier not in _FLOOR_CACHE:
        train, test = real_features("train", classifier), real_features("test", classifier)
        _FLOOR_CACHE[classifier] = frechet_distance(train, test)
    return _FLOOR_CACHE[classifier]


def matched_floor(num_samples: int, classifier: MnistClassifier | None = None, repeats: int = 5) -> float:
    """Real-vs-real Frechet distance at a matched sample size: random `num_samples`-row subsets of the train
    split vs the full test split, averaged over `repeats` seeded draws (cached).

    The Frechet distance is biased upwards by small samples, so a set of N generated images should be read
    against this floor at N rather than only against the all-train-rows `real_vs_real_floor`.
    """
    classifier = classifier if classifier is not None else default_classifier()
    train = real_features("train", classifier)
    n = min(int(num_samples), len(train))
    if n < 2:
        raise ValueError(f"num_samples must be >= 2, got {num_samples}")
    per_classifier = _MATCHED_CACHE.setdefault(classifier, {})
    if (n, repeats) not in per_classifier:
        test = real_features("test", classifier)
        if n == len(train):
            value = real_vs_real_floor(classifier)
        else:
            rng = np.random.default_rng(0)
            draws = [train[rng.choice(len(train), n, replace=False)] for _ in range(repeats)]
            value = float(np.mean([frechet_distance(d, test) for d in draws]))
        per_classifier[(n, repeats)] = value
    return per_classifier[(n, repeats)]


def _to_model_range(images: torch.Tensor | np.ndarray, value_range: tuple[float, float]) -> torch.Tensor:
    x = torch.as_tensor(images).detach().to("cpu", torch.float32)
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
        raise ValueError(f"images must be [N, 1, 28, 28], got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"images contain {int((~torch.isfinite(x)).sum())} NaN or inf values; cannot score them")
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    tol = 1e-3 * (hi - lo)
    x_min, x_max = float(x.min()), float(x.max())
    if x_min < lo - tol or x_max > hi + tol:
        raise ValueError(
            f"images span [{x_min:.3g}, {x_max:.3g}], outside value_range={value_range}; pass the range the "
            "images are in, e.g. value_range=(-1, 1) for model-space tensors, (0, 1) for output_type='pt'"
        )
    return ((x - lo) / (hi - lo) * 2 - 1).clamp_(-1, 1)


def evaluate_images(
    images: torch.Tensor | np.ndarray,
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    classifier: MnistClassifier | None = None,
    value_range: tuple[float, float] = (0, 1),
) -> dict[str, Any]:
    """Score images [N, 1, 28, 28] generated for `labels` [N].

    Returns accuracy (conditional accuracy), frechet_distance (vs the test split), floor (all real train
    rows vs real test rows), fd_ratio (= frechet_distance / floor), floor_matched and fd_ratio_matched (the
    same with the floor measured on real train subsets of the same size N, see `matched_floor`: real images
    score fd_ratio_matched ~ 1 while their fd_ratio is ~ 1.5-2 at N = 1000), per_class_accuracy and
    num_samples. `value_range` is the range the images are given in: (0, 1) for diffusers
    `output_type="pt"`, (-1, 1) for model space.
    """
    classifier = classifier if classifier is not None else default_classifier()
    lab = np.asarray(labels.detach().cpu() if torch.is_tensor(labels) else labels).reshape(-1)
    if len(lab) != len(images):
        raise ValueError(f"labels has {len(lab)} entries but images has {len(images)} rows")
    if len(lab) < 2:
        raise ValueError("need at least 2 images for a Frechet distance")
    x = _to_model_range(images, value_range)
    feats, logits = classifier_features_and_logits(classifier, x)
    pred = logits.argmax(1)
    fd = frechet_distance(feats, real_features("test", classifier))
    floor = real_vs_real_floor(classifier)
    floor_matched = matched_floor(len(lab), classifier)
    per_class = {int(c): float((pred[lab == c] == c).mean()) for c in np.unique(lab)}
    return {
        "accuracy": conditional_accuracy(pred, lab),
        "frechet_distance": fd,
        "floor": floor,
        "fd_ratio": fd / floor,
        "floor_matched": floor_matched,
        "fd_ratio_matched": fd / floor_matched,
        "per_class_accuracy": per_class,
        "num_samples": int(len(lab)),
    }


def _pairwise_mean(features: np.ndarray) -> float:
    from scipy.spatial.distance import pdist

    return float(pdist(features.astype(np.float64)).mean())


def within_class_diversity(features: np.ndarray, labels: Sequence[int] | np.ndarray) -> float | None:
    """Mean pairwise Euclidean feature distance within each class, averaged over the classes that have at
    least two rows (None when none has). Unbiased in the sample size: a mean over pairs."""
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(features):
        raise ValueError(f"labels has {len(labels)} entries but features has {len(features)} rows")
    per_class = [_pairwise_mean(features[labels == c]) for c in np.unique(labels) if (labels == c).sum() >= 2]
    return float(np.mean(per_class)) if per_class else None


def real_diversity(classifier: MnistClassifier | None = None) -> float:
    """`within_class_diversity` of the real test split (true labels), the reference for generated sets (cached)."""
    classifier = classifier if classifier is not None else default_classifier()
    if classifier not in _DIVERSITY_CACHE:
        _images, labels = load_mnist_arrays("test")
        _DIVERSITY_CACHE[classifier] = within_class_diversity(real_features("test", classifier), labels)
    return _DIVERSITY_CACHE[classifier]


@torch.no_grad()
def accuracy_by_noise_level(
    classifier: torch.nn.Module,
    scheduler,
    images: torch.Tensor,
    labels: torch.Tensor | np.ndarray,
    timesteps: Sequence[int],
    seed: int = 0,
    batch_size: int = 500,
) -> list[dict[str, float]]:
    """Accuracy of a noise-aware classifier p(y | x_t, t) on x_t = add_noise(x0, eps, t) at each timestep, with the
    same fixed-seed noise at every level: [{"timestep", "noise_fraction", "accuracy"}, ...]."""
    classifier.eval()
    device = next(classifier.parameters()).device
    labels = torch.as_tensor(labels)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    rows = []
    for t in timesteps:
        correct = 0
        for i in range(0, len(images), batch_size):
            x0, eps = images[i : i + batch_size], noise[i : i + batch_size]
            t_batch = torch.full((len(x0),), int(t), dtype=torch.long)
            noisy = scheduler.add_noise(x0, eps, t_batch)
            predicted = classifier(noisy.to(device), t_batch.to(device)).argmax(1).cpu()
            correct += int((predicted == labels[i : i + batch_size]).sum())
        rows.append(
            {
                "timestep": int(t),
                "noise_fraction": int(t) / scheduler.config.num_train_timesteps,
                "accuracy": correct / len(images),
            }
        )
    return rows


@torch.inference_mode()
def guidance_misses(
    images: torch.Tensor | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    guiding_classifier: torch.nn.Module,
    classifier: MnistClassifier | None = None,
    value_range: tuple[float, float] = (0, 1),
) -> dict[str, Any]:
    """Where classifier guidance's misses come from. Of the samples that the evaluator (`classifier`, default the
    shipped one) does not assign to their requested label, `guide_fooled` counts those that the noise-aware
    classifier which guided them, read at t = 0, does assign to it (guidance reached that classifier's region of the
    class, the evaluator sees another digit); `guide_rejects` the rest."""
    classifier = classifier if classifier is not None else default_classifier()
    x = _to_model_range(images, value_range)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(x):
        raise ValueError(f"labels has {len(labels)} entries but there are {len(x)} images")
    _, logits = classifier_features_and_logits(classifier, x)
    guiding_classifier.eval()
    param = next(guiding_classifier.parameters())
    predicted = []
    for xb in x.split(500):
        t = torch.zeros(len(xb), dtype=torch.long, device=param.device)
        predicted.append(guiding_classifier(xb.to(param.device, param.dtype), t).argmax(1).cpu())
    guide = torch.cat(predicted).numpy()
    missed = logits.argmax(1) != labels
    fooled = int((guide[missed] == labels[missed]).sum())
    return {
        "num_samples": int(len(labels)),
        "evaluator_accuracy": float(1 - missed.mean()),
        "guide_accuracy": float((guide == labels).mean()),
        "misses": int(missed.sum()),
        "guide_fooled": fooled,
        "guide_rejects": int(missed.sum()) - fooled,
        "missed_indices": np.flatnonzero(missed).tolist(),
    }
