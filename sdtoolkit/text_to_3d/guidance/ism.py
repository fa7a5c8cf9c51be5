"""Interval Score Matching (LucidDreamer, Liang et al. 2023, "LucidDreamer: Towards High-Fidelity Text-to-3D
Generation via Interval Score Matching", Sec. 4) on the shared `Denoiser`.

SDS's target is the noise eps that made x_t, a single-step pseudo ground truth that averages over everything x_t
could have come from, hence over-smoothed results. ISM replaces it with a deterministic trajectory:

1. DDIM inversion with the unconditional (empty-prompt) teacher takes the render's latent x0 to x_s, s = t - delta,
   in a few large steps (LucidDreamer: from the smallest time, strides of 200 of 1000 timesteps, at most 5 steps;
   the first point is x0 noised to that smallest time).
2. One more inversion step takes x_s to x_t:  x_t = alpha_t x0_hat(x_s) + sigma_t eps_0(x_s, s), with
   x0_hat(x_s) = (x_s - sigma_s eps_0(x_s, s)) / alpha_s and eps_0 = eps_phi(., ., empty prompt).
3. The gradient on the latents is
       g = w(t) [eps_phi(x_t, t, y) - eps_phi(x_s, s, empty)],
   eps_phi(x_t, t, y) with classifier-free guidance (diffusers convention eps_u + s (eps_c - eps_u), LucidDreamer's
   7.5), and w(t) = sigma_t / alpha_t (LucidDreamer's code: sqrt((1 - alphā_t) / alphā_t)).

Derivation (the paper's Eq. 11-17 in our alpha/sigma notation). The pseudo ground truth the conditional teacher
reaches from x_t in one step is x0_hat_t = (x_t - sigma_t eps_phi(x_t, t, y)) / alpha_t. Substituting x_t from
step 2:
       x0_hat_t = x0_hat(x_s) + (sigma_t / alpha_t) [eps_0(x_s, s) - eps_phi(x_t, t, y)].
ISM matches the two pseudo ground truths of the interval [s, t]: L = E_t[ w'(t) || x0_hat(x_s) - x0_hat_t ||^2 ]
= E_t[ w'(t) (sigma_t / alpha_t)^2 || eps_phi(x_t, t, y) - eps_0(x_s, s) ||^2 ]. As in SDS (DreamFusion, Eq. 3) the
teacher's Jacobians are dropped (x_s and x_t are DDIM-inverted from sg(x0), and d x0_hat(x_s) / d x0 is taken as
the identity), which leaves the gradient E_t[ w(t) (eps_phi(x_t, t, y) - eps_0(x_s, s)) dx0/dtheta ] (the paper's
Eq. 17) with the weight folded into w(t). LucidDreamer's implementation uses w(t) = sigma_t / alpha_t; `weighting`
offers it ('ism', default) and SDS's choices.

Every time goes through the schedule: t is drawn as SDS draws it (`sample_sds_timesteps`), the interval and the
inversion stride are fractions of the schedule's range converted to native time spans by `time_from_fraction`,
the inversion steps are the schedule's deterministic `solver_step` (DDIM with eta = 0 for VP, the Euler step for
flow), so nothing assumes an integer VP schedule beyond what SDS does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from sdtoolkit.core.config import AT_LEAST_1, FRACTION, POSITIVE, Bound, OneOf, Range
from sdtoolkit.core.denoiser import Conditioning, Denoiser, Prediction
from sdtoolkit.text_to_3d.guidance.registry import register
from sdtoolkit.text_to_3d.guidance.sds import (
    WEIGHTINGS,
    GuidanceOutput,
    TimestepScheduleConfig,
    clip_gradient,
    fraction_to_time,
    region_gradient,
    sample_sds_timesteps,
    sds_surrogate_loss,
    sds_weight,
)

ISM_WEIGHTINGS = ("ism", *WEIGHTINGS)


def ism_weight(kind: str, alpha_t: Tensor, sigma_t: Tensor) -> Tensor:
    """w(t) of the ISM gradient: 'ism' is sigma_t / alpha_t (LucidDreamer's sqrt((1 - alphā_t) / alphā_t)); the
    others are SDS's (`sds_weight`)."""
    return sigma_t / alpha_t if kind == "ism" else sds_weight(kind, alpha_t, sigma_t)


@dataclass
class ISMConfig:
    """Interval Score Matching (LucidDreamer) hyper-parameters; the defaults are LucidDreamer's `GuidanceParams`
    (delta_t 80, xs_delta_t 200, xs_inv_steps 5 of 1000 timesteps, guidance_scale 7.5) as fractions of the range."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "guidance_scale": Range(0),
        "weighting": OneOf(*ISM_WEIGHTINGS),
        "interval": FRACTION,
        "inversion_stride": Range(0, 1, low_open=True),
        "inversion_steps": AT_LEAST_1,
        "grad_clip": POSITIVE,
    }

    guidance_scale: float = 7.5
    """CFG scale of eps_phi(x_t, t, y), diffusers convention (LucidDreamer: 7.5)."""
    weighting: str = "ism"
    """w(t): 'ism' (sigma_t / alpha_t, LucidDreamer's code), or SDS's 'sds', 'uniform', 'fantasia3d'."""
    timesteps: TimestepScheduleConfig = field(default_factory=TimestepScheduleConfig)
    """How t is drawn (as for SDS)."""
    interval: float = 0.08
    """delta: s = t - delta, as a fraction of the schedule's range (LucidDreamer `delta_t`: 80 of 1000)."""
    inversion_stride: float = 0.2
    """Largest DDIM-inversion step from x0 to x_s, as a fraction of the range (LucidDreamer `xs_delta_t`: 200)."""
    inversion_steps: int = 5
    """At most this many inversion steps to x_s, starting from max(s - steps * stride, smallest time)
    (LucidDreamer `xs_inv_steps`: 5)."""
    grad_clip: float | None = None
    """Element-wise clamp of the gradient (None = off)."""

    def __post_init__(self) -> None:
        if self.weighting not in ISM_WEIGHTINGS:
            raise ValueError(f"weighting={self.weighting!r}; choose one of {', '.join(ISM_WEIGHTINGS)}")


def start_time(denoiser: Denoiser) -> Tensor:
    """The smallest time of the schedule's range (fraction 0), where LucidDreamer's inversion starts."""
    return fraction_to_time(denoiser, torch.tensor(0.0, dtype=torch.float64))


def time_span(denoiser: Denoiser, fraction: float) -> Tensor:
    """A span of `fraction` of the schedule's range in native time (80 timesteps for 0.08 of a 1000-step VP)."""
    return fraction_to_time(denoiser, torch.tensor(fraction, dtype=torch.float64)) - start_time(denoiser)


@torch.no_grad()
def ddim_invert(
    denoiser: Denoiser, x0: Tensor, eps: Tensor, s: Tensor, uncond: Conditioning, stride: float, steps: int
) -> tuple[Tensor, Prediction]:
    """(x_s, the unconditional prediction at (x_s, s)): x0 noised with `eps` to the start time max(s - steps stride,
    smallest time), then deterministic inversion steps x <- alpha_next x0_hat(x) + sigma_next eps_0(x) with the
    unconditional teacher, each to min(current + stride, s), until s (`stride` a fraction of the range). The
    prediction at (x_s, s) is ISM's target and drives the step from s to t."""
    span = time_span(denoiser, stride).to(s)
    current = torch.maximum(s - steps * span, start_time(denoiser).to(s))
    x = denoiser.add_noise(x0, eps, current)
    while True:
        prediction = denoiser.predict(x, current, uncond)
        if bool((current >= s).all()):
            return x, prediction
        following = torch.minimum(current + span, s)
        x = denoiser.schedule.solver_step(prediction.x0, prediction.eps, following)
        current = following


@register("ism", ISMConfig)
class ISMGuidance:
    """g = w(t) (eps_phi(x_t, t, y) - eps_phi(x_s, s, empty)) with x_s, x_t DDIM-inverted from the render's latent
    (module docstring). With K region conditionings and masks (SemanticSDS layouts) the inversion is shared (it is
    unconditional) and each region's gradient is combined by `region_gradient`, as in SDS."""

    config: ISMConfig

    def __init__(self, config: ISMConfig, denoiser: Denoiser):
        self.config, self.denoiser = config, denoiser

    def __call__(
        self,
        latents: Tensor,
        conds: list[tuple[Conditioning, Conditioning]],
        progress: float,
        *,
        masks: Tensor | None = None,
        cameras=None,
        generator: torch.Generator | None = None,
    ) -> GuidanceOutput:
        """One ISM step on rendered latents (with grad); arguments as `SDSGuidance.__call__`."""
        c = self.config
        batch, k = latents.shape[0], len(conds)
        t = sample_sds_timesteps(self.denoiser, c.timesteps, batch, progress, generator).to(latents.device)
        eps = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(latents.device)
        with torch.no_grad():
            s = torch.maximum(t - time_span(self.denoiser, c.interval).to(t), start_time(self.denoiser).to(t))
            uncond = conds[0][1]  # the empty prompt (LucidDreamer inverts with `inverse_text` = "")
            _, at_s = ddim_invert(
                self.denoiser, latents.detach(), eps, s, uncond, c.inversion_stride, c.inversion_steps
            )
            x_t = self.denoiser.schedule.solver_step(at_s.x0, at_s.eps, t)  # one more inversion step, s -> t
            cond = Conditioning.cat([cc for cc, _ in conds])
            unconds = Conditioning.cat([u for _, u in conds])
            eps_t = self.denoiser.predict(
                x_t.repeat(k, 1, 1, 1), t.repeat(k), cond, uncond=unconds, guidance_scale=c.guidance_scale
            ).eps
            coefficients_t = self.denoiser.coefficients(t, latents)
            w = ism_weight(c.weighting, coefficients_t.alpha_t, coefficients_t.sigma_t)
            direction = eps_t - at_s.eps.repeat(k, 1, 1, 1)
            grad = region_gradient(direction.reshape(k, *latents.shape), masks) * w
            grad = clip_gradient(grad, c.grad_clip)
        return GuidanceOutput(sds_surrogate_loss(latents, grad), t, grad.norm())
