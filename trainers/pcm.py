"""Phased consistency distillation (PCM, Wang et al. 2024, "Phased Consistency Model"): `sdtoolkit distill pcm`.

PCM splits the PF-ODE trajectory into N phases and trains the student to map any point of a phase to the phase's
lower edge with the DDIM map x_edge = alpha_edge x0_theta + sigma_edge eps_theta (its parameterisation makes
c_skip = 0 and satisfies the boundary condition at the edge by construction). We place the phase starts exactly
at the N-step schedule of a stock `TCDScheduler(original_inference_steps=50)`, so the exported pipeline samples
one deterministic step per phase (eta = 0) with no hand-typed timesteps. When N divides the 50-step grid (1, 2,
5, 10, ...) these are PCM's own phases; otherwise they differ from PCM's `floor(linspace)` split by one grid step.

The training step is LCM's (`sdtoolkit.trainers.lcm`, which takes `phases > 1` too); this file holds PCM's method
with its defaults. Where the parts live:

- phase edges, the DDIM map and the forward transition: `sdtoolkit.core.consistency`;
- deterministic phased sampling (TCDScheduler, eta = 0): `sdtoolkit.core.sampling.phased_sample`;
- the optional adversarial loss (hinge GAN with heads on the frozen teacher's down/mid features, PCM's released
  SD1.5 script, weight 0.1, alternating updates): `sdtoolkit.distill.adversarial` (`TrunkDiscriminator`,
  `trunk_features`, `phased_adversarial_losses`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sdtoolkit.trainers.lcm import LCM, LCMConfig

from sdtoolkit.core.consistency import forward_transition, phase_edge_of, phase_edges
from sdtoolkit.distill.adversarial import (
    TrunkDiscriminator,
    hinge_discriminator_loss,
    hinge_generator_loss,
    phased_adversarial_losses,
    trunk_features,
)
from sdtoolkit.distill.method import register_method

adversarial_losses = phased_adversarial_losses
"""The name this function had before it moved to `sdtoolkit.distill.adversarial`."""

__all__ = [
    "PCM",
    "PCMConfig",
    "TrunkDiscriminator",
    "adversarial_losses",
    "forward_transition",
    "hinge_discriminator_loss",
    "hinge_generator_loss",
    "phase_edge_of",
    "phase_edges",
    "trunk_features",
]


@dataclass
class PCMConfig(LCMConfig):
    """Phased consistency distillation (Wang et al. 2024): LCM's config with 4 phases and the pseudo-Huber loss of
    PCM's released scripts."""

    phases: int = 4
    """Number of phases N (PCM releases 1-, 2-, 4- and 8-phase models); sampled in N deterministic steps."""
    loss_type: str = "huber"
    """PCM's scripts train with the pseudo-Huber loss."""


@register_method
class PCM(LCM):
    """`sdtoolkit distill pcm`: the phased variant of `lcm` with PCM's defaults."""

    name = "pcm"
    config_class = PCMConfig
    description = (
        "Phased consistency distillation (PCM, Wang et al. 2024): the ODE trajectory is split into N phases "
        "(--phases, default 4) and the student learns to jump to the edge of each; optional adversarial loss "
        "(--adversarial). Same trainer as `lcm`; exported with TCDScheduler (eta=0), N steps."
    )
