"""The MNIST evaluator: a small CNN classifier of clean digits, used for conditional accuracy and for the
Frechet distance of its penultimate features (README, "Evaluate").

The shipped weights live in `condiff/assets/evaluator` (`scripts/train_evaluator.py` trains one) with a
`metrics.json` that records the classifier's own test accuracy.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from condiff.pipelines.digit_classifier import MnistClassifier

__all__ = ["MnistClassifier", "classifier_accuracy", "default_evaluator_path", "load_evaluator", "random_affine"]


def default_evaluator_path() -> Path:
    """Folder of the shipped evaluator (`condiff/assets/evaluator`)."""
    return Path(str(resources.files("condiff") / "assets" / "evaluator"))


def load_evaluator(path: str | Path | None = None, device: str | torch.device = "cpu") -> MnistClassifier:
    """Load an evaluator saved with `save_pretrained` (default: the shipped one) in eval mode on `device`."""
    path = Path(path) if path is not None else default_evaluator_path()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no evaluator at {path} (expected config.json + safetensors); train one with scripts/train_evaluator.py"
        )
    model = MnistClassifier.from_pretrained(str(path), use_safetensors=True)
    return model.to(device).eval()


def random_affine(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    max_degrees: float = 10.0,
    max_shift: float = 2.0,
    scale_range: tuple[float, float] = (0.9, 1.1),
) -> torch.Tensor:
    """Random rotation / scale / shift (in pixels) of a batch in [-1, 1]; the background stays at -1."""
    n, _, h, w = x.shape
    u = torch.rand(n, 4, generator=generator, device=generator.device if generator else x.device).to(x.device, x.dtype)
    angle = (u[:, 0] * 2 - 1) * math.radians(max_degrees)
    scale = scale_range[0] + u[:, 1] * (scale_range[1] - scale_range[0])
    # affine_grid works in normalised coordinates: a shift of s pixels is 2 s / size.
    tx = (u[:, 2] * 2 - 1) * max_shift * 2 / w
    ty = (u[:, 3] * 2 - 1) * max_shift * 2 / h
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Sample in [0, 1] so that the zero padding is the black background.
    out = F.grid_sample((x + 1) / 2, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out * 2 - 1


@torch.inference_mode()
def classifier_accuracy(model: nn.Module, images: torch.Tensor, labels, batch_size: int = 500) -> float:
    """Fraction of `images` (N, C, H, W in [-1, 1]) that `model` assigns to `labels`, in eval mode."""
    model.eval()
    labels = torch.as_tensor(labels)
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(images), batch_size):
        predicted = model(images[i : i + batch_size].to(device)).argmax(1).cpu()
        correct += int((predicted == labels[i : i + batch_size]).sum())
    return correct / len(images)
