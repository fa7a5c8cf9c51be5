"""Phased consistency (PCM, Wang et al. 2024, "Phased Consistency Model"): phase edges and the optional adversarial
loss, used by `sdtoolkit.trainers.lcm` when `phases > 1`.

PCM splits the PF-ODE trajectory into N phases and trains the student to map any point of a phase to the phase's
lower edge with the DDIM map x_edge = alpha_edge x0_theta + sigma_edge eps_theta (its parameterisation makes
c_skip = 0 and satisfies the boundary condition at the edge by construction). We place the phase starts exactly
at the N-step schedule of a stock `TCDScheduler(original_inference_steps=50)`, so the exported pipeline samples
one deterministic step per phase (eta = 0) with no hand-typed timesteps. When N divides the 50-step grid (1, 2,
5, 10, ...) these are PCM's own phases; otherwise they differ from PCM's `floor(linspace)` split by one grid step.

The adversarial loss follows PCM's released SD1.5 script: both the student's phase-edge prediction ("fake") and the
target ("real") are diffused forward to a random time in [edge, edge + T/N), the frozen teacher's down and mid
blocks give features, small heads score them, hinge loss for the discriminator, relu(1 - D(fake)) for the student
with weight 0.1, and the two are updated on alternating steps.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdtoolkit.core.denoiser import Conditioning, Denoiser

if TYPE_CHECKING:
    from sdtoolkit.trainers.lcm import ConsistencyStep

__all__ = ["TrunkDiscriminator", "adversarial_losses", "forward_transition", "phase_edge_of", "phase_edges"]


def phase_edges(num_phases: int, num_ddim_timesteps: int = 50, num_train_timesteps: int = 1000) -> Tensor:
    """The lower edges of the N phases, ascending: 0 and every phase start but the first, the phase starts being
    the N-step TCD/LCM schedule (e.g. N = 4: starts 999, 759, 499, 259 -> edges 0, 259, 499, 759)."""
    from sdtoolkit.trainers.lcm import inference_timesteps

    starts = inference_timesteps(num_phases, num_ddim_timesteps, num_train_timesteps)
    return torch.tensor(sorted([0, *starts[1:]]), dtype=torch.float32)


def phase_edge_of(t: Tensor, edges: Tensor) -> Tensor:
    """For each time t > 0, the edge of its phase: the largest edge strictly below t. `[B]` -> `[B]`."""
    edges = edges.to(t.device, t.dtype)
    below = edges[None, :] < t[:, None]
    return torch.where(below, edges[None, :], torch.full_like(edges[None, :], -1.0)).amax(dim=1)


def forward_transition(denoiser: Denoiser, x_s: Tensor, s: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """Diffuses x_s forward from time s to t >= s: x_t = (alpha_t / alpha_s) x_s + sqrt(sigma_t^2 - (alpha_t /
    alpha_s)^2 sigma_s^2) eps, the Gaussian transition of x_t = alpha_t x0 + sigma_t eps (Kingma et al. 2021,
    Eq. 2-3; PCM's `noise_travel`)."""
    c_s, c_t = denoiser.coefficients(s, x_s), denoiser.coefficients(t, x_s)
    ratio = c_t.alpha_t / c_s.alpha_t
    std = (c_t.sigma_t**2 - ratio**2 * c_s.sigma_t**2).clamp(min=0).sqrt()
    return ratio * x_s + std * noise


class _StopForward(Exception):
    """Raised by the mid-block hook: the discriminator needs no up-block."""


def trunk_features(teacher: Denoiser, x_t: Tensor, t: Tensor, cond: Conditioning, context: Any) -> list[Tensor]:
    """Outputs of the frozen teacher UNet's down blocks and mid block at (x_t, t) (the up blocks are skipped)."""
    unet = teacher.base_model
    features: list[Tensor] = []

    def keep(module, args, output):
        features.append(output[0] if isinstance(output, tuple) else output)

    def stop(module, args, output):
        keep(module, args, output)
        raise _StopForward

    handles = [block.register_forward_hook(keep) for block in unet.down_blocks]
    handles.append(unet.mid_block.register_forward_hook(stop))
    embed = torch.zeros(x_t.shape[0], device=x_t.device) if teacher.time_cond_proj_dim is not None else None
    try:
        with context():
            teacher.model_output(x_t, t, cond, guidance_embed=embed)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return [f.float() for f in features]


class TrunkDiscriminator(nn.Module):
    """One small head per teacher feature map (down blocks, mid block): conv3x3 -> GroupNorm -> LeakyReLU ->
    conv1x1 -> a logit map. PCM uses four 2-layer heads per block; one 1-layer head keeps it small."""

    def __init__(self, channels: list[int]):
        super().__init__()
        self.heads = nn.ModuleList(
            nn.Sequential(
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

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        return [head(f) for head, f in zip(self.heads, features)]


def hinge_discriminator_loss(real_logits: list[Tensor], fake_logits: list[Tensor]) -> Tensor:
    """mean relu(1 - D(real)) + mean relu(1 + D(fake)), averaged over heads (Lim & Ye 2017; PCM's d_loss)."""
    terms = [F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real_logits, fake_logits)]
    return torch.stack(terms).mean()


def hinge_generator_loss(fake_logits: list[Tensor]) -> Tensor:
    """mean relu(1 - D(fake)), averaged over heads (PCM's g_loss)."""
    return torch.stack([F.relu(1 - f).mean() for f in fake_logits]).mean()


def adversarial_losses(
    method: Any, out: ConsistencyStep, cond: Conditioning, train_discriminator: bool, num_phases: int
) -> dict[str, Tensor]:
    """PCM's adversarial terms for one consistency step: `{"d_loss"}` when training the discriminator (fake and
    real detached), else `{"g_loss"}` (gradient into the student's phase-edge prediction)."""
    teacher: Denoiser = method.teacher
    discriminator = method.models["discriminator"]
    num_train = getattr(teacher.schedule, "num_train_timesteps", 1000)
    edge = out.edge
    width = num_train // num_phases
    t_adv = (edge + torch.floor(torch.rand(edge.shape, device=edge.device) * width)).clamp(max=num_train - 1)
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
