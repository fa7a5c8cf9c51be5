"""A small CNN that reads shape, colour and view off 64x64 renders, with features for the Fréchet distance."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from jaxtyping import Float
from torch import Tensor, nn


@dataclass
class ShapesClassifierOutput(BaseOutput):
    """Logits of the three heads and the penultimate features."""

    shape_logits: Float[Tensor, "B S"]
    colour_logits: Float[Tensor, "B C"]
    view_logits: Float[Tensor, "B V"]
    features: Float[Tensor, "B F"]


class ResidualBlock(nn.Module):
    """x + conv(silu(norm(conv(silu(norm(x))))))."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, channels), nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(groups, channels), nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class ShapesClassifier(ModelMixin, ConfigMixin):
    """Strided-conv CNN with residual blocks (all stages but the first); three linear heads on shared features.

    Input: RGB images in [0, 1], NCHW, resized to `sample_size` if needed. The feature vector (after the last
    hidden layer and its activation, `feature_dim` wide) is what `Evaluator.fd_shapes` compares.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 64,
        block_out_channels: tuple[int, ...] = (24, 32, 64, 96),
        feature_dim: int = 128,
        num_shapes: int = 5,
        num_colours: int = 6,
        num_views: int = 4,
        norm_num_groups: int = 8,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for index, channels in enumerate(block_out_channels):  # each stage halves the resolution
            layers.append(nn.Conv2d(in_channels, channels, 3, stride=2, padding=1))
            if index > 0:  # no residual block at the largest resolution, where it would cost the most
                layers.append(ResidualBlock(channels, norm_num_groups))
            in_channels = channels
        self.trunk = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(norm_num_groups, in_channels)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.hidden = nn.Linear(in_channels * 4, feature_dim)
        self.shape_head = nn.Linear(feature_dim, num_shapes)
        self.colour_head = nn.Linear(feature_dim, num_colours)
        self.view_head = nn.Linear(feature_dim, num_views)

    def preprocess(self, images: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 3 h w"]:
        """Resizes [0, 1] images to `sample_size` (antialiased bilinear) and maps them to [-1, 1]."""
        size = self.config.sample_size
        images = images.to(self.dtype)
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return images * 2 - 1

    def forward(self, images: Float[Tensor, "B 3 H W"], return_dict: bool = True):
        h = self.trunk(self.preprocess(images))
        h = self.pool(F.silu(self.norm_out(h))).flatten(1)
        features = F.silu(self.hidden(h))
        output = (self.shape_head(features), self.colour_head(features), self.view_head(features), features)
        return ShapesClassifierOutput(*output) if return_dict else output
