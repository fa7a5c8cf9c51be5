"""Score Distillation Sampling (DreamFusion, Poole et al. 2022, Eq. 3) and Classifier Score Distillation (Yu et al.
2023) on the shared `Denoiser`: time schedules, w(t) weightings, classifier-free guidance in the diffusers
convention, gradient clipping, and the loss whose gradient is the SDS gradient.

CFG convention: `guidance_scale` s means eps_u + s (eps_c - eps_u) (diffusers; `sdtoolkit.core.cfg`). threestudio's
SDS and nerfstudio's generfacto write eps_c + s' (eps_c - eps_u), i.e. s = s' + 1: threestudio's
`guidance_scale: 100.` is s = 101 here. DreamFusion's omega = 100 (Ho & Salimans' (1 + w) eps_c - w eps_u) is also
s = 101.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from sdtoolkit.core.config import FRACTION, POSITIVE, Bound, OneOf, Range
from sdtoolkit.core.denoiser import Conditioning, Denoiser
from sdtoolkit.distill.score_distillation import injection_loss, sample_timesteps
from sdtoolkit.text_to_3d.guidance.registry import register

WEIGHTINGS = ("sds", "uniform", "fantasia3d")
ANNEALINGS = ("none", "linear", "sqrt")


@dataclass
class TimestepScheduleConfig:
    """Which diffusion times t the guidance draws, as fractions of the schedule's range."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "min_step_percent": FRACTION,
        "max_step_percent": FRACTION,
        "anneal": OneOf(*ANNEALINGS),
        "max_step_percent_end": FRACTION,
        "anneal_start": FRACTION,
        "anneal_end": FRACTION,
    }

    min_step_percent: float = 0.02
    """Lower end of t (threestudio `min_step_percent`, DreamFusion: 0.02)."""
    max_step_percent: float = 0.98
    """Upper end of t at the start (threestudio `max_step_percent`, DreamFusion: 0.98)."""
    anneal: str = "none"
    """'none': t ~ U[min, max]; 'linear': the upper end falls linearly to `max_step_percent_end` between the
    fractions `anneal_start` and `anneal_end` of training (ProlificDreamer: 0.98 -> 0.5); 'sqrt': t is
    deterministic, max - (max - min) sqrt(progress) (HiFA, Zhu et al. 2023, Eq. 9)."""
    max_step_percent_end: float = 0.5
    """Upper end after linear annealing (ProlificDreamer: 0.5)."""
    anneal_start: float = 0.0
    """Training fraction where linear annealing starts."""
    anneal_end: float = 1.0
    """Training fraction where linear annealing ends."""

    def __post_init__(self) -> None:
        if self.anneal not in ANNEALINGS:
            raise ValueError(f"anneal={self.anneal!r}; choose one of {', '.join(ANNEALINGS)}")
        if not 0 <= self.min_step_percent <= self.max_step_percent <= 1:
            raise ValueError(
                f"need 0 <= min_step_percent <= max_step_percent <= 1, got {self.min_step_percent}, "
                f"{self.max_step_percent}"
            )
        if self.anneal == "linear" and not self.anneal_start <= self.anneal_end:
            raise ValueError(f"need anneal_start <= anneal_end, got {self.anneal_start} and {self.anneal_end}")


def step_fraction_range(config: TimestepScheduleConfig, progress: float) -> tuple[float, float]:
    """[low, high] fractions of the time range at training progress in [0, 1]."""
    low, high = config.min_step_percent, config.max_step_percent
    if config.anneal == "linear":
        span = max(config.anneal_end - config.anneal_start, 1e-8)
        a = min(max((progress - config.anneal_start) / span, 0.0), 1.0)
        high = high + (config.max_step_percent_end - high) * a
        high = max(high, low)
    return low, high


def fraction_to_time(denoiser: Denoiser, fraction: Tensor) -> Tensor:
    """Fraction of the schedule's range -> native time (an integer timestep for discrete VP schedules): the
    schedule's own `time_from_fraction`, the conversion `sample_timesteps` uses too."""
    return denoiser.schedule.time_from_fraction(fraction)


def sample_sds_timesteps(
    denoiser: Denoiser,
    config: TimestepScheduleConfig,
    n: int,
    progress: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """`[n]` native times for training progress in [0, 1] under `config`."""
    low, high = step_fraction_range(config, progress)
    if config.anneal == "sqrt":
        fraction = high - (high - low) * math.sqrt(min(max(progress, 0.0), 1.0))
        return fraction_to_time(denoiser, torch.full((n,), fraction, dtype=torch.float64)).float()
    return sample_timesteps(denoiser.schedule, n, low, high, generator=generator)


def sds_weight(kind: str, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
    """w(t) of the SDS gradient, from the schedule's alpha_t, sigma_t (VP: alpha_t^2 = alphā_t):

    - `sds`: sigma_t^2 = 1 - alphā_t (DreamFusion's choice, threestudio `weighting_strategy: sds`);
    - `uniform`: 1;
    - `fantasia3d`: alpha_t sigma_t^2 = sqrt(alphā_t)(1 - alphā_t) (Chen et al. 2023, threestudio `fantasia3d`).
    """
    if kind == "sds":
        return sigma_t**2
    if kind == "uniform":
        return torch.ones_like(sigma_t)
    if kind == "fantasia3d":
        return alpha_t * sigma_t**2
    raise ValueError(f"weighting={kind!r}; choose one of {', '.join(WEIGHTINGS)}")


@dataclass
class SDSConfig:
    """Score Distillation Sampling (DreamFusion) hyper-parameters."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "guidance_scale": Range(0),
        "weighting": OneOf(*WEIGHTINGS),
        "grad_clip": POSITIVE,
    }

    guidance_scale: float = 100.0
    """CFG scale s in the diffusers convention (eps_u + s (eps_c - eps_u)); threestudio's s' = s - 1. DreamFusion
    used 100 with Imagen; the small builtin teacher wants far less (see `text_to_3d.defaults_for_prior`)."""
    weighting: str = "sds"
    """w(t): 'sds' (sigma_t^2 = 1 - alphā_t), 'uniform' or 'fantasia3d' (sqrt(alphā_t)(1 - alphā_t))."""
    timesteps: TimestepScheduleConfig = field(default_factory=TimestepScheduleConfig)
    """Time range and annealing."""
    grad_clip: float | None = None
    """Clamp every entry of the gradient to [-grad_clip, grad_clip] (threestudio `grad_clip`); None = off."""

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting={self.weighting!r}; choose one of {', '.join(WEIGHTINGS)}")


@dataclass
class GuidanceOutput:
    """What a guidance step returns: the loss to backpropagate and logs."""

    loss: Tensor
    """Scalar surrogate loss; its gradient with respect to the latents is the guidance gradient (divided by B)."""
    t: Tensor
    """`[B]` the native times used."""
    grad_norm: Tensor
    """Norm of the guidance gradient (before division by B), for logging."""
    extra_losses: dict[str, Tensor] = field(default_factory=dict)
    """Other losses to add (VSD's LoRA denoising loss), already scaled."""


def clip_gradient(grad: Tensor, clip: float | None) -> Tensor:
    """nan_to_num, then an element-wise clamp to [-clip, clip] (threestudio's `grad_clip`)."""
    grad = torch.nan_to_num(grad)
    return grad if clip is None else grad.clamp(-clip, clip)


def sds_surrogate_loss(latents: Float[Tensor, "B C H W"], grad: Float[Tensor, "B C H W"]) -> Tensor:
    """The SDS trick: a loss whose gradient with respect to the latents is `grad / B`.

    With the target held constant (stop-gradient sg, threestudio's `target = (latents - grad).detach()`),
        L = 1/(2B) || z - sg(z - g) ||^2   =>   dL/dz = (z - (z - g)) / B = g / B,
    so backpropagating L through the encoder and the renderer applies w(t)(eps_hat - eps) to the latents without
    ever differentiating the U-Net (Poole et al. 2022, Eq. 3 drops the U-Net Jacobian).
    """
    return injection_loss(latents, grad, reduction="sum") / latents.shape[0]


def region_gradient(
    per_region: Float[Tensor, "K B C H W"], masks: Float[Tensor, "B K H W"] | None
) -> Float[Tensor, "B C H W"]:
    """sum_k M_k * g_k (SemanticSDS's region-specific gradient); with masks that partition the image every latent
    pixel receives exactly its own region's gradient. No masks: the single region's gradient."""
    if masks is None:
        return per_region[0]
    return (per_region * masks.permute(1, 0, 2, 3)[:, :, None]).sum(0)


class SDSGuidance:
    """g = w(t) (eps_hat(z_t; y, t) - eps) with z_t = alpha_t z + sigma_t eps and CFG in the diffusers convention.

    With K region conditionings and masks (SemanticSDS) one batched forward evaluates every region's prompt at the
    same z_t and the gradients are combined by `region_gradient`.
    """

    config: SDSConfig

    def __init__(self, config: SDSConfig, denoiser: Denoiser):
        self.config, self.denoiser = config, denoiser

    def estimate(
        self, z_t: Tensor, t: Tensor, eps: Tensor, cond: Conditioning, uncond: Conditioning, cameras=None
    ) -> Tensor:
        """eps_hat - eps, the (unweighted) SDS direction at (z_t, t)."""
        prediction = self.denoiser.predict(z_t, t, cond, uncond=uncond, guidance_scale=self.config.guidance_scale)
        return prediction.eps - eps

    def __call__(
        self,
        latents: Float[Tensor, "B C H W"],
        conds: list[tuple[Conditioning, Conditioning]],
        progress: float,
        *,
        masks: Float[Tensor, "B K H W"] | None = None,
        cameras=None,
        generator: torch.Generator | None = None,
    ) -> GuidanceOutput:
        """One guidance step on rendered latents (with grad).

        Args:
            conds: one (cond, uncond) per region, each batched like the latents (one region for plain SDS).
            progress: training progress in [0, 1] (time annealing).
            masks: `[B, K, h, w]` region masks at latent resolution (K = len(conds)); None for one region.
        """
        batch = latents.shape[0]
        t = sample_sds_timesteps(self.denoiser, self.config.timesteps, batch, progress, generator).to(latents.device)
        eps = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(latents.device)
        with torch.no_grad():
            z_t = self.denoiser.add_noise(latents.detach(), eps, t)
            k = len(conds)
            cond = Conditioning.cat([c for c, _ in conds])
            uncond = Conditioning.cat([u for _, u in conds])
            direction = self.estimate(
                z_t.repeat(k, 1, 1, 1), t.repeat(k), eps.repeat(k, 1, 1, 1), cond, uncond, cameras
            )
            c = self.denoiser.coefficients(t, latents)
            w = sds_weight(self.config.weighting, c.alpha_t, c.sigma_t)
            grad = region_gradient(direction.reshape(k, *latents.shape), masks) * w
            grad = clip_gradient(grad, self.config.grad_clip)
        return GuidanceOutput(sds_surrogate_loss(latents, grad), t, grad.norm())


@register("sds", SDSConfig)
class RegisteredSDS(SDSGuidance):
    """DreamFusion's SDS."""


@dataclass
class CSDConfig(SDSConfig):
    """Classifier Score Distillation (Yu et al. 2023, "Text-to-3D with Classifier Score Distillation", Eq. 8):
    only the classifier term of CFG, g = w(t) s (eps_c - eps_u); `guidance_scale` is its weight."""

    guidance_scale: float = 40.0
    """Weight of the classifier score (CSD's w; there is no unconditional "+1" term)."""
    weighting: str = "uniform"
    """CSD uses w(t) = 1 by default."""


@register("csd", CSDConfig)
class CSDGuidance(SDSGuidance):
    """g = w(t) s (eps_c - eps_u): SDS without its denoising term (eps_u - eps)."""

    def estimate(self, z_t, t, eps, cond, uncond, cameras=None) -> Tensor:
        eps_c = self.denoiser.predict(z_t, t, cond).eps
        eps_u = self.denoiser.predict(z_t, t, uncond).eps
        return self.config.guidance_scale * (eps_c - eps_u)
