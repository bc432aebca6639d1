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
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

__all__ = ["MnistClassifier", "classifier_accuracy", "default_evaluator_path", "load_evaluator", "random_affine"]


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class MnistClassifier(ModelMixin, ConfigMixin):
    """Conv(32)-Conv(32)-pool-Conv(64)-Conv(64)-pool -> Linear(feature_dim) -> Linear(num_classes).

    Inputs are float [N, 1, 28, 28] in [-1, 1]. `features` is the `feature_dim`-d output of the first fully
    connected layer (after its BatchNorm, before the ReLU, so the feature covariance stays full rank); these
    are the features of the Frechet distance. `forward` returns logits.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        channels: tuple[int, int] = (32, 64),
        feature_dim: int = 128,
        image_size: int = 28,
        dropout: float = 0.3,
    ):
        super().__init__()
        c1, c2 = channels
        self.conv = nn.Sequential(
            _conv_block(in_channels, c1),
            _conv_block(c1, c1),
            nn.MaxPool2d(2),
            nn.Dropout2d(dropout / 3),
            _conv_block(c1, c2),
            _conv_block(c2, c2),
            nn.MaxPool2d(2),
            nn.Dropout2d(dropout / 3),
        )
        side = image_size // 4
        self.fc = nn.Linear(c2 * side * side, feature_dim, bias=False)
        self.fc_norm = nn.BatchNorm1d(feature_dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [N, feature_dim] of images [N, C, H, W] in [-1, 1]."""
        return self.fc_norm(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [N, num_classes] of images [N, C, H, W] in [-1, 1]."""
        return self.head(self.drop(F.relu(self.features(x))))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both outputs from one pass (eval mode: dropout is the identity)."""
        feats = self.features(x)
        return feats, self.head(self.drop(F.relu(feats)))


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
