"""NoiseAwareClassifier: p(y | x_t, t), the classifier that classifier guidance differentiates (Dhariwal & Nichol
2021).

A diffusers component (ModelMixin + ConfigMixin: `save_pretrained`, safetensors, `from_pretrained`) built from
diffusers' own blocks: a sinusoidal timestep embedding drives a scale and a shift after each GroupNorm of the
residual blocks (AdaGN, as in the UNet), then global average pooling and a linear head. Hub-loadable: it imports only
torch and diffusers, so it travels with the pipeline code.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.resnet import ResnetBlock2D
from torch import nn


class NoiseAwareClassifier(ModelMixin, ConfigMixin):
    """Class logits of noisy images x_t (N, C, H, W in the diffusion model's space) at timesteps t (N,) or a scalar.

    `num_train_timesteps` records the noise schedule's length the classifier was trained on, so that a pipeline can
    refuse to pair it with a scheduler of another length.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        sample_size: int = 28,
        block_out_channels: tuple[int, ...] = (32, 64, 64),
        time_embed_dim: int = 128,
        norm_num_groups: int = 8,
        num_train_timesteps: int = 1000,
    ):
        super().__init__()
        first = block_out_channels[0]
        self.time_proj = Timesteps(first, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(first, time_embed_dim)
        self.conv_in = nn.Conv2d(in_channels, first, kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        previous = first
        for i, channels in enumerate(block_out_channels):
            self.blocks.append(
                ResnetBlock2D(
                    in_channels=previous,
                    out_channels=channels,
                    temb_channels=time_embed_dim,
                    groups=norm_num_groups,
                    time_embedding_norm="scale_shift",
                    down=i < len(block_out_channels) - 1,
                )
            )
            previous = channels
        self.norm_out = nn.GroupNorm(norm_num_groups, previous)
        self.head = nn.Linear(previous, num_classes)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int) -> torch.Tensor:
        """Logits (N, num_classes)."""
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.expand(sample.shape[0]) if t.ndim == 0 else t
        emb = self.time_embedding(self.time_proj(t).to(sample.dtype))
        h = self.conv_in(sample)
        for block in self.blocks:
            h = block(h, emb)
        h = nn.functional.silu(self.norm_out(h)).mean(dim=(2, 3))
        return self.head(h)


class NoiseAwareClassifierEnsemble(ModelMixin, ConfigMixin):
    """A product of noise-aware classifiers: its logits are the mean of the members' log-probabilities, so
    log p(y | x_t, t) is their renormalised mean and classifier guidance follows the mean of their gradients,
    steering a sample until the members agree (a region that fools one member is not enough).

    `member_configs` holds each member's `NoiseAwareClassifier` config (`from_members` builds the ensemble from trained
    classifiers); the shared settings are recorded too, as a pipeline checks them against its UNet and scheduler.
    """

    @register_to_config
    def __init__(
        self,
        member_configs: tuple[dict, ...] = (),
        in_channels: int = 1,
        num_classes: int = 10,
        sample_size: int = 28,
        num_train_timesteps: int = 1000,
    ):
        super().__init__()
        if len(member_configs) < 2:
            raise ValueError(f"member_configs must hold at least two classifier configs, got {len(member_configs)}")
        shared = {"in_channels": in_channels, "num_classes": num_classes, "sample_size": sample_size}
        shared["num_train_timesteps"] = num_train_timesteps
        self.members = nn.ModuleList(NoiseAwareClassifier(**member) for member in member_configs)
        for i, member in enumerate(self.members):
            differing = {k: member.config[k] for k, v in shared.items() if member.config[k] != v}
            if differing:
                raise ValueError(f"member_configs[{i}] has {differing} but the ensemble {shared}: members must agree")

    @classmethod
    def from_members(cls, classifiers: list[NoiseAwareClassifier]) -> NoiseAwareClassifierEnsemble:
        """An ensemble holding copies of the trained `classifiers` (their configs and weights)."""
        if len(classifiers) < 2 or not all(isinstance(c, NoiseAwareClassifier) for c in classifiers):
            raise ValueError("classifiers must be at least two NoiseAwareClassifier models")
        configs = [{k: v for k, v in c.config.items() if not k.startswith("_")} for c in classifiers]
        shared = {k: configs[0][k] for k in ("in_channels", "num_classes", "sample_size", "num_train_timesteps")}
        ensemble = cls(member_configs=configs, **shared)
        for member, trained in zip(ensemble.members, classifiers):
            member.load_state_dict(trained.state_dict())
        ensemble.to(classifiers[0].device)
        return ensemble if ensemble.dtype == classifiers[0].dtype else ensemble.to(dtype=classifiers[0].dtype)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int) -> torch.Tensor:
        """Logits (N, num_classes): the mean of the members' log-softmax."""
        log_probs = [torch.log_softmax(member(sample, timestep).float(), dim=-1) for member in self.members]
        return torch.stack(log_probs).mean(dim=0).to(sample.dtype)
