"""Consistency-model maths shared by LCM, PCM and the multistep samplers: the skipping-step DDIM grid, the LCM/TCD
inference schedules, the boundary scalings c_skip / c_out, the consistency function, the deterministic DDIM map,
PCM's phase edges and the forward transition between two noise levels.

One function per equation, each citing its paper. Nothing here knows about training loops or methods, so
`sdtoolkit.core.sampling`, `sdtoolkit.trainers.lcm` and `sdtoolkit.trainers.pcm` all import it without a cycle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sdtoolkit.core.denoiser import Denoiser, Prediction
from sdtoolkit.core.schedules import NoiseSchedule
from sdtoolkit.core.utils import append_dims

__all__ = [
    "consistency_distance",
    "ddim_grid",
    "ddim_jump",
    "forward_transition",
    "inference_timesteps",
    "lcm_boundary_scalings",
    "lcm_consistency_function",
    "phase_edge_of",
    "phase_edges",
    "pseudo_huber",
]


def ddim_grid(num_train_timesteps: int = 1000, num_ddim_timesteps: int = 50) -> Tensor:
    """The VP skipping-step grid t_i = i k - 1, i = 1..N, k = T // N (LCM Sec. 4.3; diffusers' `DDIMSolver`); the
    trainers ask the teacher's schedule (`NoiseSchedule.grid`), which equals this for VP.

    Returns `[N]` long timesteps, ascending: 19, 39, ..., 999 for T = 1000, N = 50."""
    k = num_train_timesteps // num_ddim_timesteps
    return torch.arange(1, num_ddim_timesteps + 1) * k - 1


def inference_timesteps(num_steps: int, original_steps: int = 50, num_train_timesteps: int = 1000) -> list[int]:
    """The `num_steps`-step schedule of LCMScheduler / TCDScheduler (`original_inference_steps = original_steps`):
    the skipping-step grid, reversed, at indices floor(linspace(0, N, num_steps, endpoint=False))."""
    grid = ddim_grid(num_train_timesteps, original_steps).flip(0)
    if not 1 <= num_steps <= original_steps:
        raise ValueError(f"num_steps={num_steps} must lie in [1, {original_steps}] (the DDIM grid size)")
    indices = torch.floor(torch.arange(num_steps, dtype=torch.float64) * (original_steps / num_steps)).long()
    return grid[indices].tolist()


def lcm_boundary_scalings(t: Tensor, sigma_data: float = 0.5, timestep_scaling: float = 10.0) -> tuple[Tensor, Tensor]:
    """c_skip(t) = sigma_d^2 / ((s t)^2 + sigma_d^2), c_out(t) = s t / sqrt((s t)^2 + sigma_d^2).

    The consistency-model boundary condition f(x, 0) = x (Song et al. 2023, Sec. 3 and App. C) with LCM's
    timestep scaling s (Luo et al. 2023, Sec. 4.1), exactly as `LCMScheduler.get_scalings_for_boundary_condition_
    discrete` computes them, so an exported LCMScheduler samples what was trained."""
    scaled = timestep_scaling * t.float()
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def lcm_consistency_function(x_t: Tensor, x0: Tensor, t: Tensor, sigma_data: float, timestep_scaling: float) -> Tensor:
    """f_theta(x_t, t) = c_skip(t) x_t + c_out(t) x0_theta(x_t, t) (LCM Sec. 4.1)."""
    c_skip, c_out = lcm_boundary_scalings(t, sigma_data, timestep_scaling)
    return append_dims(c_skip, x_t.ndim).to(x_t.dtype) * x_t + append_dims(c_out, x_t.ndim).to(x_t.dtype) * x0


def ddim_jump(denoiser: Denoiser, prediction: Prediction, s: Tensor) -> Tensor:
    """Deterministic DDIM (eta = 0, Song et al. 2021, Eq. 12; the Euler step for flow) from the prediction at t to
    time s: x_s = alpha_s x0 + sigma_s eps (`NoiseSchedule.solver_step`)."""
    s = s.expand(prediction.x0.shape[0]) if s.ndim == 0 else s
    return denoiser.schedule.solver_step(prediction.x0, prediction.eps, s)


def pseudo_huber(a: Tensor, b: Tensor, c: float) -> Tensor:
    """Mean of sqrt((a - b)^2 + c^2) - c, elementwise (the pseudo-Huber metric of Song & Dhariwal 2023, Sec. 3.3, as
    diffusers' LCM scripts apply it)."""
    return (torch.sqrt((a.float() - b.float()) ** 2 + c**2) - c).mean()


def consistency_distance(a: Tensor, b: Tensor, loss_type: str, huber_c: float) -> Tensor:
    """d(a, b): `l2` (mean squared error) or `huber` (pseudo-Huber with constant `huber_c`)."""
    if loss_type == "l2":
        return F.mse_loss(a.float(), b.float())
    if loss_type == "huber":
        return pseudo_huber(a, b, huber_c)
    raise ValueError(f"loss_type={loss_type!r}; choose 'l2' or 'huber'")


def phase_edges(
    num_phases: int,
    num_ddim_timesteps: int = 50,
    num_train_timesteps: int = 1000,
    schedule: NoiseSchedule | None = None,
) -> Tensor:
    """The lower edges of PCM's N phases (Wang et al. 2024, Sec. 3), ascending: the schedule's lowest time and
    every phase start but the first, the phase starts being the N-step TCD/LCM schedule
    (`NoiseSchedule.student_timesteps`; VP with T = 1000, N = 4: starts 999, 759, 499, 259 -> edges 0, 259, 499,
    759). Without `schedule`: the VP integer grid of T = `num_train_timesteps`."""
    if schedule is None:
        starts, lowest = inference_timesteps(num_phases, num_ddim_timesteps, num_train_timesteps), 0.0
    else:
        starts, lowest = schedule.student_timesteps(num_phases, num_ddim_timesteps), float(schedule.t_min)
    return torch.tensor(sorted([lowest, *starts[1:]]), dtype=torch.float32)


def phase_edge_of(t: Tensor, edges: Tensor) -> Tensor:
    """For each time t > 0, the edge of its phase: the largest edge strictly below t. `[B]` -> `[B]`."""
    edges = edges.to(t.device, t.dtype)
    below = edges[None, :] < t[:, None]
    return torch.where(below, edges[None, :], torch.full_like(edges[None, :], -1.0)).amax(dim=1)


def forward_transition(denoiser: Denoiser, x_s: Tensor, s: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """Diffuses x_s forward from time s to t >= s under the denoiser's schedule (`NoiseSchedule.transition`:
    the Gaussian transition of x_t = alpha_t x0 + sigma_t eps, Kingma et al. 2021, Eq. 2-3; PCM's `noise_travel`)."""
    return denoiser.schedule.transition(x_s, s, t, noise)
