"""Adversarial parts of distribution-matching distillation: non-saturating and hinge GAN losses, DMD2's classifier
head on the fake score's bottleneck, and a small text-conditioned pixel-space discriminator (Flash-DMD's stand-in).

- DMD2 (Yin et al. 2024b, Sec. 4.3): a classification branch on the fake diffusion model's bottleneck (the UNet
  mid-block output) separates real from generated latents; generator loss softplus(-D(G(z))), discriminator loss
  softplus(D(G(z))) + softplus(-D(x_real)). `bottleneck_features` runs the network only up to its mid block.
- Flash-DMD (Chen et al. 2025, Sec. 3.2): a pixel-space GAN whose backbone is a frozen SAM encoder with trainable
  heads. SAM is far too large to ship; `PixelDiscriminator` is a small spectrally-normalised conv net with a
  projection (Miyato & Koyama 2018) on the pooled text embedding instead.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from sdtoolkit.core.denoiser import Conditioning, Denoiser

__all__ = [
    "GAN_LOSSES",
    "BottleneckHead",
    "PixelDiscriminator",
    "bottleneck_features",
    "gan_discriminator_loss",
    "gan_generator_loss",
    "pooled_text",
]

GAN_LOSSES = ("softplus", "hinge")


def _check_kind(kind: str) -> None:
    if kind not in GAN_LOSSES:
        raise ValueError(f"GAN loss {kind!r} is not supported; choose one of {', '.join(GAN_LOSSES)}")


def gan_generator_loss(logits_fake: Tensor, kind: str = "softplus") -> Tensor:
    """Generator side: non-saturating `softplus(-D(G(z)))` (Goodfellow et al. 2014; DMD2 Eq. 9) or hinge `-D(G(z))`
    (Lim & Ye 2017)."""
    _check_kind(kind)
    return F.softplus(-logits_fake).mean() if kind == "softplus" else (-logits_fake).mean()


def gan_discriminator_loss(logits_real: Tensor, logits_fake: Tensor, kind: str = "softplus") -> Tensor:
    """Discriminator side: `softplus(D(fake)) + softplus(-D(real))` (DMD2) or hinge `relu(1 + D(fake)) +
    relu(1 - D(real))`; each term averaged over its batch."""
    _check_kind(kind)
    if kind == "softplus":
        return F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()
    return F.relu(1 + logits_fake).mean() + F.relu(1 - logits_real).mean()


class _StopForward(Exception):
    """Raised by the mid-block hook so the up-blocks of the UNet are never run."""


def bottleneck_features(
    denoiser: Denoiser, x_t: Tensor, t: Tensor, cond: Conditioning | None = None, **kwargs
) -> Tensor:
    """The UNet's mid-block output at (x_t, t) (`[B, C_mid, h, w]`), computed through the Denoiser's own network call
    (same timestep and conditioning handling) and stopping right after the mid block. `kwargs` go to
    `Denoiser.model_output` (e.g. `guidance_embed`). Wrap in `ScorePair.fake_context()` for the fake score."""
    model = denoiser.base_model
    mid = getattr(model, "mid_block", None)
    if mid is None:
        raise NotImplementedError(
            f"bottleneck features need a UNet with a mid_block (UNet2DConditionModel, UNet2DModel); got "
            f"{denoiser.model_kind}. Use a pixel-space discriminator (PixelDiscriminator) for transformers."
        )
    captured: dict[str, Tensor] = {}

    def hook(module, args, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output
        raise _StopForward

    handle = mid.register_forward_hook(hook)
    try:
        denoiser.model_output(x_t, t, cond, **kwargs)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return captured["h"]


def _groups(channels: int) -> int:
    return math.gcd(32, channels)


class BottleneckHead(nn.Module):
    """DMD2's classification branch: stride-2 4x4 convolutions with GroupNorm and SiLU down to a small map, global
    average pooling and a 1x1 projection to one logit per sample (Yin et al. 2024b, Sec. 4.3 / their SD1.5 head)."""

    def __init__(self, in_channels: int, spatial_size: int):
        super().__init__()
        layers: list[nn.Module] = []
        size = spatial_size
        while size > 2:
            layers += [
                nn.Conv2d(in_channels, in_channels, kernel_size=4, stride=2, padding=1),
                nn.GroupNorm(_groups(in_channels), in_channels),
                nn.SiLU(),
            ]
            size //= 2
        layers += [nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, 1, kernel_size=1)]
        self.net = nn.Sequential(*layers)

    @classmethod
    def for_unet(cls, unet: nn.Module) -> BottleneckHead:
        """Sized from a diffusers UNet config: mid channels = last block width, map = sample_size / 2^(blocks-1)."""
        config = unet.config
        channels = config.block_out_channels[-1]
        size = max(1, config.sample_size // 2 ** (len(config.block_out_channels) - 1))
        return cls(channels, size)

    def forward(self, h: Tensor) -> Tensor:
        """`[B, C, h, w]` features -> `[B]` logits."""
        return self.net(h.float()).flatten(1).squeeze(1)


def pooled_text(cond: Conditioning) -> Tensor:
    """`[B, D]` text vector for a discriminator: SD3's pooled projection when present, else the mean over tokens of
    `encoder_hidden_states` (masked by `encoder_attention_mask` when given)."""
    if cond.pooled_projections is not None:
        return cond.pooled_projections
    h = cond.encoder_hidden_states
    if cond.encoder_attention_mask is not None:
        mask = cond.encoder_attention_mask.to(h.dtype).unsqueeze(-1)
        return (h * mask).sum(1) / mask.sum(1).clamp_min(1)
    return h.mean(1)


class PixelDiscriminator(nn.Module):
    """A small text-conditioned discriminator on decoded images (Flash-DMD's Pixel-GAN, without its frozen SAM
    backbone): spectrally-normalised 3x3/4x4 convolutions with LeakyReLU halving the resolution down to 4x4, a global
    sum pool, and a projection head logit = w . phi(x) + <V c, phi(x)> on the pooled text embedding c.

    Args:
        text_dim: width of the pooled text vector (`pooled_text`).
        resolution: image side; the net halves it until 4 (at least once).
        base_channels: width of the first layer (doubled per level, capped at 8x).
    """

    def __init__(self, text_dim: int, resolution: int = 64, base_channels: int = 32, in_channels: int = 3):
        super().__init__()
        levels = max(1, int(math.log2(max(resolution, 8))) - 2)
        layers: list[nn.Module] = [spectral_norm(nn.Conv2d(in_channels, base_channels, 3, padding=1))]
        layers.append(nn.LeakyReLU(0.2))
        channels = base_channels
        for level in range(levels):
            out = base_channels * min(2 ** (level + 1), 8)
            layers += [spectral_norm(nn.Conv2d(channels, out, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.linear = spectral_norm(nn.Linear(channels, 1))
        self.embed = spectral_norm(nn.Linear(text_dim, channels))

    def forward(self, images: Tensor, text: Tensor) -> Tensor:
        """`[B, 3, H, W]` images in [-1, 1] and `[B, D]` text vectors -> `[B]` logits."""
        phi = self.features(images.float()).sum(dim=(2, 3))
        return self.linear(phi).squeeze(1) + (self.embed(text.float()) * phi).sum(1)
