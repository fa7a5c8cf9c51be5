"""Multistep sampling of few-step students: the one loop behind every trainer's sample grids and validation, the
distribution-matching students' backward simulation, and the chains the exported stock schedulers run.

A few-step student is evaluated at fixed timesteps t_0 > t_1 > ... > t_{k-1}. At each t_i the network's prediction
gives a clean estimate, which is then carried to t_{i+1} in one of two ways:

- `renoise="fresh"` (LCM, Luo et al. 2023, Algorithm 3; DMD2's multi-step sampler, Yin et al. 2024b, Sec. 4.5;
  `LCMScheduler.step`): x_{t_{i+1}} = alpha_{t_{i+1}} x0_i + sigma_{t_{i+1}} eps with FRESH eps ~ N(0, I) drawn
  from `generator`. The clean estimate is the consistency function c_skip x_t + c_out x0 when `boundary` is given
  (LCM's `(sigma_data, timestep_scaling)`), else the network's x0 itself (distribution-matching students).
- `renoise="ddim"` (PCM, Wang et al. 2024; `TCDScheduler.step` with eta = 0): the deterministic DDIM map
  x_{t_{i+1}} = alpha_{t_{i+1}} x0_i + sigma_{t_{i+1}} eps_i with the PREDICTED eps (Song et al. 2021, Eq. 12),
  and from the last timestep to t = 0.

`multistep_sample` is that loop; `lcm_sample`, `phased_sample` and `few_step_sample` name its three uses.
`scm_sample` is the same fresh-noise chain in TrigFlow time for continuous-time consistency students (sCM,
`SCMScheduler.step`), where the clean estimate is x0 = cos(s) x - sigma_d sin(s) F. With
`until=j` it stops before evaluating step j and returns the input x_{t_j} it built (DMD2's backward simulation).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sdtoolkit.core.consistency import ddim_jump, lcm_consistency_function
from sdtoolkit.core.denoiser import Conditioning, Denoiser
from sdtoolkit.core.trigflow import SIGMA_DATA, TrigFlowTeacher, trigflow_x0

__all__ = [
    "S_MAX_NETWORK",
    "few_step_sample",
    "full_time",
    "lcm_sample",
    "multistep_sample",
    "phased_sample",
    "scm_sample",
    "scm_sampling_times",
]

RENOISE = ("fresh", "ddim")


def full_time(t: int | float | Tensor, x: Tensor) -> Tensor:
    """`[B]` float times equal to `t`, on `x`'s device."""
    return torch.full((x.shape[0],), float(t), device=x.device)


@torch.no_grad()
def multistep_sample(
    denoiser: Denoiser,
    noise: Tensor,
    cond: Conditioning,
    timesteps: list[int] | list[float],
    *,
    renoise: str = "fresh",
    generator: torch.Generator | None = None,
    boundary: tuple[float, float] | None = None,
    guidance_embed: Tensor | None = None,
    until: int | None = None,
) -> Tensor:
    """Runs a few-step student from `noise` at `timesteps[0]` down its chain (see the module docstring).

    Args:
        denoiser: the student's Denoiser.
        noise: `[B, ...]` input at the first timestep (pure noise for t_0 = T - 1).
        timesteps: t_0 > t_1 > ... in the schedule's native time.
        renoise: `fresh` (LCM / DMD2 / LCMScheduler) or `ddim` (PCM / TCDScheduler, eta = 0).
        generator: source of the fresh noise (`None`: torch's global RNG, as training does).
        boundary: `(sigma_data, timestep_scaling)` of LCM's consistency function, or None for the raw x0.
        guidance_embed: `[B]` guidance w for a w-embedded student (LCM's `time_cond_proj_dim`).
        until: stop before evaluating step `until` and return its input (backward simulation); None: run every
            step and return the clean sample.
    """
    if renoise not in RENOISE:
        raise ValueError(f"renoise={renoise!r}; choose one of {', '.join(RENOISE)}")
    steps = len(timesteps) if until is None else until
    x = noise
    for i in range(steps):
        prediction = denoiser.predict(x, full_time(timesteps[i], x), cond, guidance_embed=guidance_embed)
        last = i + 1 == len(timesteps)
        if renoise == "ddim":  # the last jump lands on the schedule's clean end (t = 0 for VP and flow)
            x = ddim_jump(denoiser, prediction, full_time(denoiser.schedule.t_min if last else timesteps[i + 1], x))
            continue
        denoised = prediction.x0
        if boundary is not None:  # LCM's boundary scalings on the network's timestep scale (identity for VP)
            t_model = denoiser.schedule.model_timestep(full_time(timesteps[i], x))
            denoised = lcm_consistency_function(x, prediction.x0, t_model, *boundary)
        if last:
            return denoised
        # the noise takes the dtype of what it is added to (x_t for LCM, whose f_theta is cast to it; else x0)
        dtype = x.dtype if boundary is not None else denoised.dtype
        fresh = torch.randn(x.shape, generator=generator, device=x.device, dtype=dtype)
        x = denoiser.add_noise(denoised, fresh, full_time(timesteps[i + 1], x))
    return x


def lcm_sample(
    denoiser: Denoiser,
    noise: Tensor,
    cond: Conditioning,
    timesteps: list[int],
    generator: torch.Generator | None,
    guidance_embed: Tensor | None = None,
    sigma_data: float = 0.5,
    timestep_scaling: float = 10.0,
) -> Tensor:
    """LCM multistep sampling (Luo et al. 2023, Algorithm 3; what `LCMScheduler.step` does): at each t_i take the
    consistency function's output, then re-noise it to t_{i+1} with fresh noise drawn from `generator`."""
    return multistep_sample(
        denoiser,
        noise,
        cond,
        timesteps,
        renoise="fresh",
        generator=generator,
        boundary=(sigma_data, timestep_scaling),
        guidance_embed=guidance_embed,
    )


def phased_sample(
    denoiser: Denoiser, noise: Tensor, cond: Conditioning, timesteps: list[int], guidance_embed: Tensor | None = None
) -> Tensor:
    """Deterministic phased sampling (PCM; `TCDScheduler.step` with eta = 0): from each phase start jump to the next
    one with the DDIM map, and from the last to t = 0."""
    return multistep_sample(denoiser, noise, cond, timesteps, renoise="ddim", guidance_embed=guidance_embed)


def few_step_sample(
    denoiser: Denoiser,
    noise: Tensor,
    cond: Conditioning,
    timesteps: list[int],
    generator: torch.Generator | None = None,
    until: int | None = None,
) -> Tensor:
    """A distribution-matching student's chain (DMD2, Yin et al. 2024b, Sec. 4.5; a stock `LCMScheduler` whose
    c_skip is ~0 at these timesteps): x0 at each t_i, re-noised to t_{i+1} with fresh noise. With `until`, the
    backward-simulated input x_{t_until} instead of the clean sample."""
    return multistep_sample(denoiser, noise, cond, timesteps, renoise="fresh", generator=generator, until=until)


# ---------------------------------------------------------------------------------------------------- sCM (TrigFlow)

S_MAX_NETWORK = float(torch.nextafter(torch.tensor(math.pi / 2), torch.tensor(0.0)))
"""The largest time a network is evaluated at. SCMScheduler starts at 1.5708 > pi/2 (where tan s < 0 and the flow
time exceeds 1; float32 pi/2 itself rounds up past it); the step uses the scheduler's s, the network min(s, this),
the largest float32 below pi/2."""


def scm_sampling_times(num_steps: int, max_time: float = 1.5708, intermediate_time: float | None = 1.3) -> Tensor:
    """SCMScheduler.set_timesteps: [max, intermediate, 0] for 2 steps with an intermediate time, else
    linspace(max, 0, k + 1); float32 like the scheduler's."""
    if num_steps == 2 and intermediate_time is not None:
        return torch.tensor([max_time, intermediate_time, 0.0]).float()
    return torch.linspace(max_time, 0.0, num_steps + 1).float()


def scm_sample(
    student: Denoiser,
    noise: Tensor,
    cond: Conditioning,
    times: Tensor,
    generator: torch.Generator | None,
    embed: Tensor | None = None,
    sigma_data: float = SIGMA_DATA,
) -> Tensor:
    """sCM's multistep sampler, as SCMScheduler.step (SanaSprintPipeline): x = sigma_d noise at times[0]; each step
    x0 = cos(s) x - sigma_d sin(s) F(x / sigma_d, s), then x = cos(s') x0 + sin(s') sigma_d n with fresh n (drawn
    at every step, also the last where s' = 0, as the scheduler does). Returns x0 / sigma_d (the teacher's scale)."""
    trig = TrigFlowTeacher(student, sigma_data)
    x = sigma_data * noise.float()
    times = times.to(x.device)
    x0 = x
    for i in range(len(times) - 1):
        s, s_next = times[i], times[i + 1]
        s_net = s.clamp(max=S_MAX_NETWORK).expand(x.shape[0])
        F = trig.F(x, s_net, cond, guidance_embed=embed).float()
        x0 = trigflow_x0(x, F, s.expand(x.shape[0]), sigma_data)
        fresh = torch.randn(x.shape, generator=generator, device=generator.device if generator else x.device)
        x = torch.cos(s_next) * x0 + torch.sin(s_next) * sigma_data * fresh.to(x.device)
    return x0 / sigma_data
