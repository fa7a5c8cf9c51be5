"""A teacher of any schedule seen in TrigFlow time: the training-free conversion that continuous-time consistency
distillation (sCM; Lu & Song 2024, "Simplifying, Stabilizing and Scaling Continuous-Time Consistency Models")
needs, as SANA-Sprint (Chen et al. 2025, Sec. 3.1) does it for flow-matching teachers, here for every schedule the
Denoiser knows (flow, VP with ε, x0 or v prediction).

TrigFlow (Lu & Song 2024, Eq. 3): x_s = cos(s) x0 + sin(s) z, z ~ N(0, sigma_d^2 I), s in [0, pi/2], and the
network F predicts the scaled velocity F = (dx_s/ds) / sigma_d, so x0 = cos(s) x_s - sigma_d sin(s) F (Eq. 6).
TrigFlow's data is the teacher's data scaled by sigma_d (x0_trig = sigma_d x0), so that

    x_s / sigma_d = cos(s) x0 + sin(s) eps,     eps ~ N(0, I).

A teacher with x_t = alpha_t x0 + sigma_t eps sees the same point at the time t whose noise-to-signal ratio is
sigma_t / alpha_t = tan(s) (`matched_time`), scaled by r_t = sqrt(alpha_t^2 + sigma_t^2) (`teacher_input`), since
alpha_t = r_t cos(s) and sigma_t = r_t sin(s) there. From the teacher's (x0, eps) at that point,

    F = cos(s) eps - sin(s) x0                                   (`trigflow_velocity`)

(differentiate x_s / sigma_d in s), and the TrigFlow clean estimate is sigma_d x0 (`trigflow_x0`). For a flow
teacher, t = sin s / (sin s + cos s) and r_t = 1 / (sin s + cos s), and F equals SANA-Sprint's
F = [(1 - 2t) x_in + (1 - 2t + 2t^2) v] / sqrt(t^2 + (1 - t)^2) (tests check both).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sdtoolkit.core.schedules import FlowSchedule, NoiseSchedule, TrigFlowSchedule
from sdtoolkit.core.utils import append_dims

SIGMA_DATA = 0.5
"""sigma_d of sCM and SANA-Sprint."""


def matched_time(schedule: NoiseSchedule, s: Tensor, iterations: int = 64) -> Tensor:
    """The native time t of `schedule` with sigma_t / alpha_t = tan(s), for TrigFlow times s `[B]`.

    Closed form for flow (t = sin s / (sin s + cos s)); otherwise bisection in float64 on the monotone ratio, to
    float64 precision. Beyond the teacher's noisiest time (a VP schedule whose last alpha is not 0) t is clamped to
    its end: such a teacher cannot see TrigFlow's pure-noise end, s = pi/2.
    """
    # float32 pi/2 (1.5707964) and SCMScheduler's 1.5708 lie just above pi/2, where tan turns negative: TrigFlow's
    # time ends at pi/2
    s64 = s.to(torch.float64).clamp(0.0, math.pi / 2)
    if isinstance(schedule, FlowSchedule):
        return (torch.sin(s64) / (torch.sin(s64) + torch.cos(s64))).clamp(0.0, 1.0).to(s.dtype)
    if isinstance(schedule, TrigFlowSchedule):
        return s
    with torch.no_grad():
        target = torch.tan(s64.detach() if s64.requires_grad else s64)
        lo = torch.full_like(target, float(schedule.t_min))
        hi = torch.full_like(target, float(schedule.t_max))
        for _ in range(iterations):
            mid = (lo + hi) / 2
            ratio = schedule.sigma(mid) / schedule.alpha(mid)
            below = ratio < target
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        t_star = (lo + hi) / 2
    # One Newton step from the (gradient-free) root t*: its value is t* to float64 precision, and its derivative
    # in s is the implicit one, dt/ds = (1 + tan^2 s) / rho'(t*) with rho = sigma / alpha, so that reverse- and
    # forward-mode AD (sCM's JVP) see the true d t / d s instead of the bisection's zero.
    rho = lambda t: schedule.sigma(t) / schedule.alpha(t)  # noqa: E731
    ends = torch.tensor([float(schedule.t_min), float(schedule.t_max)], dtype=torch.float64, device=s64.device)
    rho_min, rho_max = rho(ends)
    inside = (target > rho_min) & (target < rho_max)  # a bracketed root; else t* is an end of the schedule
    slope = torch.where(inside, _d_ratio(schedule, t_star), torch.ones_like(t_star))
    step = torch.where(inside, (torch.tan(s64) - rho(t_star)) / slope, torch.zeros_like(t_star))
    return (t_star + step).to(s.dtype)


def _d_ratio(schedule: NoiseSchedule, t: Tensor) -> Tensor:
    """d/dt (sigma_t / alpha_t) = (sigma' alpha - sigma alpha') / alpha^2."""
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    return (schedule.d_sigma(t) * alpha - sigma * schedule.d_alpha(t)) / alpha**2


def teacher_input(
    schedule: NoiseSchedule, x_s: Tensor, s: Tensor, t: Tensor, sigma_data: float = SIGMA_DATA
) -> Tensor:
    """x_t = r_t x_s / sigma_d with r_t = sqrt(alpha_t^2 + sigma_t^2): the teacher's sample at its matched time."""
    r = torch.sqrt(schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2)
    return append_dims(r.to(x_s.dtype), x_s.ndim) * x_s / sigma_data


def trigflow_velocity(x0: Tensor, eps: Tensor, s: Tensor) -> Tensor:
    """F = cos(s) eps - sin(s) x0: the TrigFlow network output for the teacher's (x0, eps) at time s."""
    s = append_dims(s.to(x0.dtype), x0.ndim)
    return torch.cos(s) * eps - torch.sin(s) * x0


def trigflow_x0(x_s: Tensor, F: Tensor, s: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    """x0 = cos(s) x_s - sigma_d sin(s) F (Lu & Song 2024, Eq. 6), in TrigFlow's data scale."""
    s = append_dims(s.to(x_s.dtype), x_s.ndim)
    return torch.cos(s) * x_s - sigma_data * torch.sin(s) * F


class TrigFlowTeacher:
    """A frozen teacher `Denoiser` evaluated in TrigFlow time: `F(x_s, s, ...)` and `x0(x_s, s, ...)`.

    Guidance is the Denoiser's own (`uncond`, `guidance_scale`, `guidance_embed`), applied in the teacher's
    parametrisation; since every conversion here is affine, it equals guidance on F (sCM's dx/ds = sigma_d [F_u + w
    (F_c - F_u)]).
    """

    def __init__(self, denoiser, sigma_data: float = SIGMA_DATA):
        if not sigma_data > 0 or not math.isfinite(sigma_data):
            raise ValueError(f"sigma_data must be a positive number, got {sigma_data}")
        self.denoiser = denoiser
        self.sigma_data = sigma_data

    def prediction(self, x_s: Tensor, s: Tensor, cond=None, **guidance):
        """The teacher's `Prediction` at the point matching (x_s, s), and that point's native time."""
        schedule = self.denoiser.schedule
        s = s.expand(x_s.shape[0]) if s.ndim == 0 else s
        t = matched_time(schedule, s)
        x_t = teacher_input(schedule, x_s, s, t, self.sigma_data)
        return self.denoiser.predict(x_t, t, cond, **guidance), t

    def F(self, x_s: Tensor, s: Tensor, cond=None, **guidance) -> Tensor:
        """The teacher's TrigFlow output F at (x_s, s): cos(s) eps - sin(s) x0."""
        pred, _ = self.prediction(x_s, s, cond, **guidance)
        s = s.expand(x_s.shape[0]) if s.ndim == 0 else s
        return trigflow_velocity(pred.x0, pred.eps, s)

    def x0(self, x_s: Tensor, s: Tensor, cond=None, **guidance) -> Tensor:
        """The teacher's clean estimate in TrigFlow's data scale: sigma_d x0."""
        pred, _ = self.prediction(x_s, s, cond, **guidance)
        return self.sigma_data * pred.x0


__all__ = [
    "SIGMA_DATA",
    "TrigFlowTeacher",
    "matched_time",
    "teacher_input",
    "trigflow_velocity",
    "trigflow_x0",
]
