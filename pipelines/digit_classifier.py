"""MnistClassifier: a small CNN classifier of digits (the evaluator of accuracy and Frechet distance, and a
super-resolution pipeline's classifier of its low-resolution inputs).

A diffusers component (ModelMixin + ConfigMixin). Hub-loadable: it imports only torch and diffusers, so it travels
with the pipeline code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


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
