"""Continuous-time consistency distillation (sCM; Lu & Song 2024, "Simplifying, Stabilizing and Scaling
Continuous-Time Consistency Models") in TrigFlow time, as SANA-Sprint (Chen et al. 2025) trains it.

TrigFlow (Lu & Song 2024, Sec. 2): x_s = cos(s) x0 + sin(s) z, z ~ N(0, sigma_d^2 I), s in [0, pi/2]; the network
F_theta(x_s / sigma_d, s) predicts the scaled velocity, and the consistency function is

    f_theta(x_s, s) = cos(s) x_s - sigma_d sin(s) F_theta(x_s / sigma_d, s)                          (Eq. 6)

Continuous-time consistency asks df_theta/ds = 0 along the teacher's probability-flow ODE dx_s/ds = sigma_d F_pre.
Its training gradient (Eq. 8) is that of E[w(s) ||F_theta - F_theta^- - g||^2] with the tangent

    g = -cos^2(s) (sigma_d F_theta^- - dx_s/ds) - r cos(s) sin(s) (x_s + sigma_d dF_theta^-/ds)      (Eq. 8, 9)

where F_theta^- is F_theta without gradient, dF_theta^-/ds = d/ds F_theta^-(x_s / sigma_d, s) is the total
derivative along the ODE (one forward-mode JVP, `jvp_tangents`), and r ramps from 0 to 1 ("tangent warm-up",
Sec. 4.2). Stabilisers of Sec. 4.2-4.3: the tangent is normalised, g / (||g|| + c) with c = 0.1, and the loss is
weighted adaptively by a learned log-variance w_phi(s) (Eq. 10):

    L = E[ (1 / (sigma_d tan s)) / e^{w_phi(s)} ||F_theta - F_theta^- - g||^2 / D + w_phi(s) ]

with the prior weight 1 / (sigma_d tan s). s is drawn as arctan(e^tau / sigma_d), tau ~ N(P_mean, P_std^2)
(SANA-Sprint: P_mean 0.2, P_std 1.6). Every function below is one of these equations; `sdtoolkit.core.trigflow`
provides the teacher seen in TrigFlow time (any flow or VP teacher, training-free).

Forward-mode AD (`torch.func.jvp`) needs every op of the student to support it: attention must run on the math
kernel (`sdtoolkit.core.attention`, backend `jvp`); `check_jvp_backend` refuses the others with one line.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sdtoolkit.core.conditioning import Conditioning
from sdtoolkit.core.denoiser import Denoiser
from sdtoolkit.core.trigflow import SIGMA_DATA, TrigFlowTeacher, matched_time
from sdtoolkit.core.utils import append_dims

__all__ = [
    "LogVarianceHead",
    "JVP_SAFE_ATTENTION",
    "SCMStep",
    "check_jvp_backend",
    "difference_step",
    "network_time_delta",
    "normalize_tangent",
    "ode_derivative",
    "sample_time",
    "scm_loss",
    "scm_step",
    "tangent_target",
    "tangent_warmup",
    "trigflow_noise",
    "trigflow_ode_tangents",
]

JVP_SAFE_ATTENTION = ("jvp", "math")
"""Attention backends with forward-mode AD (`sdtoolkit.core.attention`): the SDPA math kernel."""


def check_jvp_backend(backend: str) -> None:
    """Refuses an attention backend that cannot run `torch.func.jvp` (flash, efficient, cuDNN, xformers)."""
    if backend not in JVP_SAFE_ATTENTION:
        raise ValueError(
            f"attention backend {backend!r} has no forward-mode AD, which sCM's tangent (torch.func.jvp) needs; "
            f"use one of {list(JVP_SAFE_ATTENTION)} (`--attention jvp`)"
        )


def sample_time(
    n: int,
    p_mean: float = 0.2,
    p_std: float = 1.6,
    sigma_data: float = SIGMA_DATA,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """TrigFlow times s = arctan(e^tau / sigma_d), tau ~ N(p_mean, p_std^2) (Lu & Song 2024, Sec. 4.1's log-normal
    proposal in sigma = e^tau; SANA-Sprint's defaults). `[n]` float32 in (0, pi/2)."""
    tau = torch.randn(n, generator=generator, device=device) * p_std + p_mean
    return torch.atan(tau.exp() / sigma_data)


def trigflow_noise(x0: Tensor, z: Tensor, s: Tensor) -> Tensor:
    """x_s = cos(s) x0 + sin(s) z (Lu & Song 2024, Eq. 3), with x0 and z in TrigFlow's scale (z ~ N(0, sigma_d^2))."""
    s = append_dims(s.to(x0.dtype), x0.ndim)
    return torch.cos(s) * x0 + torch.sin(s) * z


def trigflow_ode_tangents(x_s: Tensor, s: Tensor, dxds: Tensor, sigma_data: float = SIGMA_DATA) -> tuple:
    """The JVP tangents (v_x, v_s) = (cos s sin s (dx_s/ds) / sigma_d, cos s sin s) for F(x_s / sigma_d, s).

    `torch.func.jvp(F, (x_s / sigma_d, s), (v_x, v_s))` then gives cos(s) sin(s) dF/ds along the ODE, the factor
    of Eq. 8's last term (SANA-Sprint computes it so; it keeps the tangent bounded as s -> 0 and s -> pi/2)."""
    cs = torch.cos(s) * torch.sin(s)
    return append_dims(cs.to(dxds.dtype), dxds.ndim) * dxds / sigma_data, cs


def difference_step(dtau_ds: Tensor, delta: float, h_max: float = 0.05) -> Tensor:
    """h = min(delta / |dtau/ds|, h_max): the TrigFlow time step over which the network's timestep input tau(s)
    moves by `delta` (h_max where tau does not move, e.g. a VP teacher clamped at its noisiest time)."""
    return delta / dtau_ds.abs().clamp_min(delta / h_max)


def network_time_delta(schedule, fraction: float) -> float:
    """`fraction` of the network's timestep range under `schedule` (a `NoiseSchedule`; 999 timesteps for SD's, 1
    for a dense-time SANA student's): the `delta` of `ode_derivative` (`SCMConfig.time_difference`)."""
    ends = schedule.model_timestep(torch.tensor([float(schedule.t_min), float(schedule.t_max)], dtype=torch.float64))
    return fraction * float(ends[1] - ends[0])


def ode_derivative(
    F,
    x_in: Tensor,
    s: Tensor,
    v_x: Tensor,
    v_s: Tensor,
    tau=None,
    delta: float = 0.0,
    h_max: float = 0.05,
) -> tuple[Tensor, Tensor]:
    """F(x_in, s) and its derivative along the tangents (v_x, v_s) (`trigflow_ode_tangents`): cos(s) sin(s) dF/ds.

    `delta` = 0: one exact forward-mode JVP, `torch.func.jvp(F, (x_in, s), (v_x, v_s))` (sCM, SANA-Sprint).

    `delta` > 0: the x-part by the JVP, the s-part (the conversion's and the network's time dependence at fixed
    x_in) by a central difference whose half-step h (`difference_step`) moves the network's timestep tau(s) by
    `delta`. A network that embeds 1000 t in sinusoids of up to 1 rad per timestep, trained at integer timesteps
    only (SD's UNets), wiggles between them: its exact time derivative is dominated by that wiggle and is not the
    derivative along the teacher's ODE. Lu & Song 2024 (Sec. 4.1) trace sCM's instability to this term and embed
    t, not 1000 t (SANA-Sprint's "dense time embedding", a fine-tune); the difference smooths it training-free.
    Costs two more forwards (no gradient).

    Args:
        F: F(x_in [B, ...], s [B]) -> [B, ...]. tau: s [B] -> the network's timestep input [B] (differentiable).
    """
    if delta <= 0:
        return torch.func.jvp(F, (x_in, s), (v_x, v_s))
    F_minus, dF_x = torch.func.jvp(lambda x: F(x, s), (x_in,), (v_x,))
    _, dtau_ds = torch.func.jvp(tau, (s,), (torch.ones_like(s),))
    h = difference_step(dtau_ds, delta, h_max)
    s_hi, s_lo = (s + h).clamp(max=_S_MAX), (s - h).clamp(min=0.0)
    dF_s = (F(x_in, s_hi) - F(x_in, s_lo)) / append_dims((s_hi - s_lo).to(F_minus.dtype), F_minus.ndim)
    return F_minus, dF_x + append_dims(v_s.to(F_minus.dtype), F_minus.ndim) * dF_s


_S_MAX = float(torch.nextafter(torch.tensor(math.pi / 2), torch.tensor(0.0)))
"""The largest float32 below pi/2 (beyond it tan s < 0)."""


def tangent_warmup(step: int, warmup_steps: int) -> float:
    """r = min(1, step / warmup_steps) (Lu & Song 2024, Sec. 4.2, "tangent warmup"); 1 without warm-up."""
    return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)


def tangent_target(
    F_minus: Tensor,
    dxds: Tensor,
    x_s: Tensor,
    cs_dF_ds: Tensor,
    s: Tensor,
    r: float,
    sigma_data: float = SIGMA_DATA,
) -> Tensor:
    """g = -cos^2(s) (sigma_d F^- - dx_s/ds) - r (cos(s) sin(s) x_s + sigma_d cos(s) sin(s) dF^-/ds) (Eq. 8, 9).

    Args:
        F_minus: F_theta^-(x_s / sigma_d, s), no gradient.
        dxds: the teacher's ODE velocity dx_s/ds = sigma_d F_pre (with its guidance).
        cs_dF_ds: cos(s) sin(s) dF_theta^-/ds from `torch.func.jvp` with `trigflow_ode_tangents`.
        r: tangent warm-up factor in [0, 1].
    """
    s = append_dims(s.to(x_s.dtype), x_s.ndim)
    cos, sin = torch.cos(s), torch.sin(s)
    return -(cos**2) * (sigma_data * F_minus - dxds) - r * (cos * sin * x_s + sigma_data * cs_dF_ds)


def normalize_tangent(g: Tensor, c: float = 0.1) -> Tensor:
    """g / (||g|| + c), the norm per sample over all other dimensions (Lu & Song 2024, Sec. 4.2, "tangent
    normalization"; c = 0.1 as SANA-Sprint)."""
    norm = torch.linalg.vector_norm(g, dim=tuple(range(1, g.ndim)), keepdim=True)
    return g / (norm + c)


def scm_loss(
    F: Tensor, F_minus: Tensor, g: Tensor, s: Tensor, logvar: Tensor, sigma_data: float = SIGMA_DATA
) -> Tensor:
    """Eq. 10: mean over samples of (1 / (sigma_d tan s)) / e^{logvar} mean_D (F - F^- - g)^2 + logvar.

    Its gradient in theta is -2 w(s) / e^{logvar} g dF/dtheta / D at F = F^- (the sCM update); its gradient in the
    log-variance head fits logvar to the log of the weighted squared error (adaptive weighting)."""
    weight = 1.0 / (sigma_data * torch.tan(s.to(F.dtype)))
    squared = (F - F_minus - g).pow(2).flatten(1).mean(dim=1)
    logvar = logvar.reshape(-1).to(F.dtype)
    return (weight / logvar.exp() * squared + logvar).mean()


class LogVarianceHead(nn.Module):
    """The learned log-variance w_phi(s) of the adaptive weighting (Lu & Song 2024, Eq. 10): sinusoidal features
    of s (scaled to [0, 1000] as a diffusion timestep) and one linear layer, zero-initialised so that training
    starts from the prior weighting alone (SANA-Sprint's `logvar_linear` reads the transformer's time embedding;
    a separate head keeps the student a stock network that exports unchanged)."""

    def __init__(self, num_features: int = 128):
        super().__init__()
        if num_features % 2:
            raise ValueError(f"num_features must be even, got {num_features}")
        self.num_features = num_features
        self.linear = nn.Linear(num_features, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, s: Tensor) -> Tensor:
        half = self.num_features // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=s.device, dtype=torch.float32) / half)
        angles = (s.float() * (1000.0 / (math.pi / 2)))[:, None] * freqs[None]
        features = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
        return self.linear(features.to(self.linear.weight.dtype)).squeeze(1)


# ---------------------------------------------------------------------------------------------------- one step


@dataclass
class SCMStep:
    """One sCM step's loss and ingredients (tests check them against hand computations)."""

    loss: Tensor
    F: Tensor
    """F_theta(x_s / sigma_d, s), with gradient."""
    F_minus: Tensor
    """F_theta^- from the JVP pass (no gradient)."""
    g: Tensor
    """The normalised tangent."""
    dxds: Tensor
    """The teacher's guided ODE velocity."""
    s: Tensor
    logvar: Tensor


def scm_step(
    *,
    student: Denoiser,
    jvp_student: Denoiser,
    teacher: Denoiser,
    logvar_head: nn.Module,
    x0: Tensor,
    z: Tensor,
    s: Tensor,
    w: Tensor,
    embed: Tensor | None,
    cond: Conditioning,
    uncond: Conditioning,
    r: float,
    c: float = 0.1,
    sigma_data: float = SIGMA_DATA,
    time_delta: float = 0.0,
) -> SCMStep:
    """Steps 1-5 of the module docstring for given draws: latents `x0` (teacher scale), unit noise `z`, TrigFlow
    times `s` [B], teacher guidance `w` [B] (None: the teacher's conditional prediction, no CFG), the student's
    guidance input `embed` [B] (or None).

    `student` runs the gradient forward (it may hold a DDP module); `jvp_student` is the same network unwrapped,
    in float32, for the JVP. `time_delta` > 0: dF/ds's time part by a central difference that moves the network's
    timestep by that much (`ode_derivative`); 0: the exact JVP."""
    x0_trig, z_trig = sigma_data * x0.float(), sigma_data * z.float()
    x_s = trigflow_noise(x0_trig, z_trig, s)
    # 2. dx_s/ds = sigma_d F_pre, the teacher's guided F (any schedule, seen in TrigFlow time)
    with torch.no_grad():
        guidance = {} if w is None else {"uncond": uncond, "guidance_scale": w}
        F_pre = TrigFlowTeacher(teacher, sigma_data).F(x_s.to(teacher.dtype), s, cond, **guidance)
        dxds = sigma_data * F_pre.float()
    # 3. F^- and cos(s) sin(s) dF^-/ds along the ODE: one forward-mode JVP through the unwrapped student
    check_jvp_backend(jvp_student.attention_backend or "unset (the model's default)")
    trig = TrigFlowTeacher(jvp_student, sigma_data)

    def F_of(x_in: Tensor, s_: Tensor) -> Tensor:
        return trig.F(sigma_data * x_in, s_, cond, guidance_embed=embed)

    def tau(s_: Tensor) -> Tensor:  # the network's timestep input at TrigFlow time s_
        schedule = jvp_student.schedule
        return schedule.model_timestep(matched_time(schedule, s_))

    v_x, v_s = trigflow_ode_tangents(x_s, s, dxds, sigma_data)
    with torch.no_grad(), _full_precision(jvp_student.base_model):
        F_minus, cs_dF_ds = ode_derivative(F_of, x_s / sigma_data, s, v_x, v_s, tau, time_delta)
    # 4. the tangent (Eq. 8-9), warmed up and normalised
    g = tangent_target(F_minus, dxds, x_s, cs_dF_ds, s, r, sigma_data)
    g = normalize_tangent(g, c)
    # 5. F_theta with gradient, the adaptive weight, Eq. 10
    F = TrigFlowTeacher(student, sigma_data).F(x_s, s, cond, guidance_embed=embed).float()
    logvar = logvar_head(s)
    loss = scm_loss(F, F_minus.detach(), g.detach(), s, logvar, sigma_data)
    return SCMStep(loss, F, F_minus, g, dxds, s, logvar)


@contextlib.contextmanager
def _full_precision(model: nn.Module):
    """Runs `model` without accelerate's mixed-precision forward wrapper (which autocasts even the unwrapped module)
    and without autocast: the JVP runs in float32 (a bf16 JVP fails in diffusers' Linear layers, see
    `sdtoolkit.core.attention`)."""
    original = model.__dict__.get("_original_forward")
    patched = model.__dict__.get("forward")
    if original is not None and patched is not None:
        model.forward = original
    device = next(model.parameters()).device.type
    try:
        with torch.autocast(device_type=device, enabled=False):
            yield
    finally:
        if original is not None and patched is not None:
            model.forward = patched
