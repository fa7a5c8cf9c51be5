"""Volume rendering (Max 1995; Mildenhall et al. 2020, Eq. 3): weights from densities, then RGB, accumulation, depth
and semantic maps as weighted sums (nerfstudio's `model_components/renderers`)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from sdtoolkit.nerf.samplers import RaySamples


def render_weights(densities: Float[Tensor, "R S"], samples: RaySamples) -> Float[Tensor, "R S"]:
    """w_i = T_i (1 - exp(-sigma_i delta_i)) with transmittance T_i = exp(-sum_{j<i} sigma_j delta_j)."""
    sigma_delta = densities * samples.deltas
    alpha = 1 - torch.exp(-sigma_delta)
    transmittance = torch.exp(-(torch.cumsum(sigma_delta, dim=-1) - sigma_delta))
    return alpha * transmittance


def render_rgb(
    rgb: Float[Tensor, "R S 3"], weights: Float[Tensor, "R S"], background: Float[Tensor, "R 3"] | Float[Tensor, 3]
) -> Float[Tensor, "R 3"]:
    """C = sum_i w_i c_i + (1 - sum_i w_i) c_bg: the colour composited over the background."""
    accumulation = weights.sum(-1, keepdim=True)
    return (weights[..., None] * rgb).sum(-2) + (1 - accumulation) * background


def render_accumulation(weights: Float[Tensor, "R S"]) -> Float[Tensor, " R"]:
    """Opacity of each ray, sum_i w_i in [0, 1]."""
    return weights.sum(-1)


def render_depth(weights: Float[Tensor, "R S"], samples: RaySamples) -> Float[Tensor, " R"]:
    """Expected termination distance sum_i w_i t_i / sum_i w_i (far where the ray is empty)."""
    accumulation = weights.sum(-1)
    depth = (weights * samples.midpoints).sum(-1) / accumulation.clamp_min(1e-8)
    return torch.where(accumulation > 1e-8, depth, samples.ends[:, -1])


def render_depth_variance(weights: Float[Tensor, "R S"], samples: RaySamples) -> Float[Tensor, " R"]:
    """Spread of the termination distance, sum_i w_i (t_i - d)^2 with d = sum_i w_i t_i / sum_i w_i (threestudio's
    `z_variance`): zero when all the weight sits at one depth (a hard surface), large for fog spread along the ray."""
    accumulation = weights.sum(-1, keepdim=True)
    depth = (weights * samples.midpoints).sum(-1, keepdim=True) / accumulation.clamp_min(1e-8)
    return (weights * (samples.midpoints - depth) ** 2).sum(-1)


def render_semantics(probabilities: Float[Tensor, "R S K"], weights: Float[Tensor, "R S"]) -> Float[Tensor, "R K"]:
    """Semantic map: the region probabilities composited like colours, plus the ray's unweighted mean for the empty
    remainder (1 - sum w), so a background pixel still belongs to the region its ray passes through."""
    accumulation = weights.sum(-1, keepdim=True)
    return (weights[..., None] * probabilities).sum(-2) + (1 - accumulation) * probabilities.mean(-2)
