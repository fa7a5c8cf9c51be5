"""Adversarial parts of distribution-matching distillation: non-saturating and hinge GAN losses, DMD2's classifier
head on the fake score's bottleneck, and a small text-conditioned pixel-space discriminator (Flash-DMD's stand-in).

- DMD2 (Yin et al. 2024b, Sec. 4.3): a classification branch on the fake diffusion model's bottleneck (the UNet
  mid-block output) separates real from generated latents; generator loss softplus(-D(G(z))), discriminator loss
  softplus(D(G(z))) + softplus(-D(x_real)). `bottleneck_features` runs the network only up to its mid block.
- Flash-DMD (Chen et al. 2025, Sec. 3.2): a pixel-space GAN whose backbone is a frozen SAM encoder with trainable
  heads. SAM is far too large to ship; `PixelDiscriminator` is a small spectrally-normalised conv net with a
  projection (Miyato & Koyama 2018) on the pooled text embedding instead.
- PCM (Wang et al. 2024, its released SD1.5 script): the student's phase-edge prediction ("fake") and the target
  ("real") are diffused forward to a random time in [edge, edge + T/N), the frozen teacher's down and mid blocks
  give features (`trunk_features`), small heads (`TrunkDiscriminator`) score them; hinge loss for the
  discriminator, relu(1 - D(fake)) for the student (`phased_adversarial_losses`).

Feature reads go through `sdtoolkit.core.features.capture_outputs` (forward hooks that stop after the last block
needed).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from sdtoolkit.core.consistency import forward_transition
from sdtoolkit.core.denoiser import Conditioning, Denoiser
from sdtoolkit.core.features import capture_outputs
from sdtoolkit.core.schedules import VPSchedule

__all__ = [
    "GAN_LOSSES",
    "BottleneckHead",
    "PixelDiscriminator",
    "TokenHead",
    "TrunkDiscriminator",
    "bottleneck_features",
    "bottleneck_head",
    "gan_discriminator_loss",
    "gan_generator_loss",
    "hinge_discriminator_loss",
    "hinge_generator_loss",
    "phased_adversarial_losses",
    "pooled_text",
    "trunk_features",
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


def bottleneck_features(
    denoiser: Denoiser, x_t: Tensor, t: Tensor, cond: Conditioning | None = None, **kwargs
) -> Tensor:
    """The network's bottleneck features at (x_t, t), computed through the Denoiser's own network call (same
    timestep, conditioning and guidance handling) and stopping right after the bottleneck block: a UNet's mid-block
    output `[B, C_mid, h, w]`, or a transformer's image hidden states after its middle block `[B, N, C]`
    (`ModelFamily.feature_blocks`). `kwargs` go to `Denoiser.predict` (e.g. `guidance_embed`). Wrap in
    `ScorePair.fake_context()` for the fake score."""
    family, model = denoiser.family, denoiser.base_model
    try:
        block = family.feature_blocks(model)[-1]
    except (NotImplementedError, AttributeError):
        raise NotImplementedError(
            f"bottleneck features need a UNet mid block or transformer blocks; got {denoiser.model_kind}. Use a "
            "pixel-space discriminator (PixelDiscriminator)"
        ) from None

    def run() -> None:
        denoiser.predict(x_t, t, cond, **kwargs)

    return capture_outputs(run, [block], stop_after=block, tuple_index=family.feature_output_index)[0]


def bottleneck_head(denoiser: Denoiser) -> nn.Module:
    """The classification head for `bottleneck_features` of this Denoiser's network (UNet: `BottleneckHead.
    for_unet`; transformer: `TokenHead` of its hidden width)."""
    model = denoiser.base_model
    if hasattr(model, "mid_block"):
        return BottleneckHead.for_unet(model)
    return TokenHead(denoiser.family.feature_channels(model)[-1])


class TokenHead(nn.Module):
    """A classification head on transformer hidden states `[B, N, C]`: LayerNorm -> Linear -> SiLU -> Linear to
    one logit per token, averaged over tokens (`reduce=True`, `[B]`) or kept (`[B, N]`, PCM's per-position
    logits)."""

    def __init__(self, channels: int, reduce: bool = True):
        super().__init__()
        self.reduce = reduce
        self.net = nn.Sequential(
            nn.LayerNorm(channels), nn.Linear(channels, channels), nn.SiLU(), nn.Linear(channels, 1)
        )

    def forward(self, h: Tensor) -> Tensor:
        logits = self.net(h.float()).squeeze(-1)
        return logits.mean(dim=1) if self.reduce else logits


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


# ---------------------------------------------------------------------------------------------------------- PCM


def trunk_features(
    teacher: Denoiser,
    x_t: Tensor,
    t: Tensor,
    cond: Conditioning,
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> list[Tensor]:
    """Outputs of the frozen teacher's feature blocks at (x_t, t), in fp32: a UNet's down blocks and mid block (the
    up blocks are skipped), a transformer's blocks up to its middle one (`ModelFamily.feature_blocks`). `context`
    wraps the forward (e.g. `Denoiser.adapters_disabled` when the student is a LoRA on it)."""
    model, family = teacher.base_model, teacher.family
    embed = torch.zeros(x_t.shape[0], device=x_t.device) if teacher.time_cond_proj_dim is not None else None

    def run() -> None:
        with context():
            teacher.predict(x_t, t, cond, guidance_embed=embed)

    blocks = family.feature_blocks(model)
    features = capture_outputs(run, blocks, stop_after=blocks[-1], tuple_index=family.feature_output_index)
    return [f.float() for f in features]


class TrunkDiscriminator(nn.Module):
    """One small head per teacher feature map (down blocks, mid block): conv3x3 -> GroupNorm -> LeakyReLU ->
    conv1x1 -> a logit map. PCM uses four 2-layer heads per block; one 1-layer head keeps it small."""

    def __init__(self, channels: list[int], tokens: bool = False):
        super().__init__()
        self.heads = nn.ModuleList(
            TokenHead(c, reduce=False)
            if tokens
            else nn.Sequential(
                nn.Conv2d(c, c, 3, padding=1),
                nn.GroupNorm(math.gcd(32, c), c),
                nn.LeakyReLU(0.2),
                nn.Conv2d(c, 1, 1),
            )
            for c in channels
        )

    @classmethod
    def for_unet(cls, unet: nn.Module) -> TrunkDiscriminator:
        channels = list(unet.config.block_out_channels)
        return cls([*channels, channels[-1]])

    @classmethod
    def for_denoiser(cls, denoiser: Denoiser) -> TrunkDiscriminator:
        """Heads for `trunk_features` of this Denoiser's network: conv heads on UNet maps, token heads (one logit
        per token) on transformer hidden states."""
        model = denoiser.base_model
        if hasattr(model, "mid_block"):
            return cls.for_unet(model)
        return cls(denoiser.family.feature_channels(model), tokens=True)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        return [head(f) for head, f in zip(self.heads, features)]


def hinge_discriminator_loss(real_logits: list[Tensor], fake_logits: list[Tensor]) -> Tensor:
    """mean relu(1 - D(real)) + mean relu(1 + D(fake)), averaged over heads (Lim & Ye 2017; PCM's d_loss)."""
    terms = [F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real_logits, fake_logits)]
    return torch.stack(terms).mean()


def hinge_generator_loss(fake_logits: list[Tensor]) -> Tensor:
    """mean relu(1 - D(fake)), averaged over heads (PCM's g_loss)."""
    return torch.stack([F.relu(1 - f).mean() for f in fake_logits]).mean()


def phased_adversarial_losses(
    method: Any, out: Any, cond: Conditioning, train_discriminator: bool, num_phases: int
) -> dict[str, Tensor]:
    """PCM's adversarial terms for one consistency step `out` (a `sdtoolkit.trainers.lcm.ConsistencyStep`):
    `{"d_loss"}` when training the discriminator (fake and real detached), else `{"g_loss"}` (gradient into the
    student's phase-edge prediction). `method` gives `teacher`, `models["discriminator"]` and `teacher_context`."""
    teacher: Denoiser = method.teacher
    discriminator = method.models["discriminator"]
    schedule = teacher.schedule
    edge = out.edge
    # a time uniformly within the phase above the edge: whole timesteps on VP's integer grid, continuous otherwise
    offset = torch.rand(edge.shape, device=edge.device)
    if isinstance(schedule, VPSchedule):
        offset = torch.floor(offset * (schedule.num_train_timesteps // num_phases))
    else:
        offset = offset * (schedule.t_max - schedule.t_min) / num_phases
    t_adv = (edge + offset).clamp(max=schedule.t_max)
    fake = forward_transition(teacher, out.online, edge, t_adv, torch.randn_like(out.online))
    if train_discriminator:
        real = forward_transition(teacher, out.target, edge, t_adv, torch.randn_like(out.target))
        with torch.no_grad():
            fake_features = trunk_features(teacher, fake.detach(), t_adv, cond, method.teacher_context)
            real_features = trunk_features(teacher, real, t_adv, cond, method.teacher_context)
        loss = hinge_discriminator_loss(discriminator(real_features), discriminator(fake_features))
        return {"d_loss": loss}
    features = trunk_features(teacher, fake, t_adv, cond, method.teacher_context)
    return {"g_loss": hinge_generator_loss(discriminator(features))}
