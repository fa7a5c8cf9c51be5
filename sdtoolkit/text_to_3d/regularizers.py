"""The regularisers of a text-to-3D render (threestudio's DreamFusion / Magic3D systems), as functions of the
render's outputs: opacity sparsity and entropy on the accumulated opacity, the depth variance along the rays, and the
orientation and normal-smoothness losses on the density-gradient normals of the samples that rendered it
(`NeRF.render(..., compute_normals=True)` returns them packed: one row per contributing sample), and the eikonal
term of an 'sdf' field."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

OPACITY_EPS = 1e-5
"""Opacity is clamped to [eps, 1 - eps] before the entropy's logarithms."""


def opacity_sparsity(opacity: Tensor) -> Tensor:
    """mean sqrt(o^2 + 0.01) over pixels (threestudio `lambda_sparsity`)."""
    return (opacity**2 + 0.01).sqrt().mean()


def opacity_entropy(opacity: Tensor) -> Tensor:
    """Mean binary entropy -o log o - (1 - o) log(1 - o) over pixels: zero for pixels that are empty or solid."""
    o = opacity.clamp(OPACITY_EPS, 1 - OPACITY_EPS)
    return -(o * o.log() + (1 - o) * (1 - o).log()).mean()


def depth_variance_loss(depth_variance: Tensor, opacity: Tensor) -> Tensor:
    """Mean depth variance (`sdtoolkit.nerf.renderers.render_depth_variance`) over the pixels whose opacity exceeds
    0.5 (threestudio's `z_variance[opacity > 0.5].mean()`); zero when no pixel is that opaque."""
    solid = opacity > 0.5
    return depth_variance[solid].mean() if bool(solid.any()) else depth_variance.sum() * 0


def orientation_loss(
    normals: Float[Tensor, "S 3"], directions: Float[Tensor, "S 3"], weights: Float[Tensor, " S"], num_pixels: int
) -> Tensor:
    """sum_i sg(w_i) max(0, n_i . d_i)^2 / pixels (DreamFusion, Appendix A.2; Ref-NeRF, Eq. 10): a sample whose
    normal faces away from the camera (along the ray direction d_i, which points away from it) is penalised in
    proportion to its rendering weight; normals facing the camera cost nothing."""
    facing_away = (normals * directions).sum(-1).clamp_min(0)
    return (weights.detach() * facing_away**2).sum() / num_pixels


def normal_smoothness_loss(
    field,
    positions: Float[Tensor, "S 3"],
    normals: Float[Tensor, "S 3"],
    weights: Float[Tensor, " S"],
    eps: float,
    num_pixels: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """sum_i sg(w_i) |n(x_i) - n(x_i + delta_i)|^2 / pixels with delta_i ~ N(0, eps^2 I): the field's normals at
    each sample and at a random neighbour agree (threestudio's 3D normal smoothness, here weighted by the rendering
    weights so that only the visible surface is smoothed). `field` gives the neighbours' normals (`normals(x)`)."""
    if not len(positions):
        return normals.sum() * 0
    offset = torch.randn(positions.shape, generator=generator, dtype=positions.dtype).to(positions.device) * eps
    neighbours = field.normals(positions.detach() + offset)
    return (weights.detach() * (normals - neighbours).pow(2).sum(-1)).sum() / num_pixels


def sdf_gradient(field, positions: Float[Tensor, "N 3"], step: float) -> Float[Tensor, "N 3"]:
    """grad d(x) by central differences, (d(x + h e_i) - d(x - h e_i)) / 2h per axis (Neuralangelo's numerical
    gradients, Li et al. 2023, Sec. 3.1: one backward instead of a double backward, and smooth across hash cells)."""
    eye = torch.eye(3, dtype=positions.dtype, device=positions.device) * step
    shifted = torch.cat([positions[:, None, :] + eye, positions[:, None, :] - eye], dim=1)  # [N, 6, 3]
    d = field.signed_distance(shifted.reshape(-1, 3)).reshape(-1, 6)
    return (d[:, :3] - d[:, 3:]) / (2 * step)


def eikonal_loss(field, positions: Float[Tensor, "N 3"], step: float) -> Tensor:
    """mean (|grad d(x)| - 1)^2 (IGR, Gropp et al. 2020, Eq. 2; VolSDF's and NeuS's eikonal term): a signed distance
    has unit gradient everywhere, which keeps an 'sdf' field a distance and its surface's transition beta wide
    instead of flattening into a wide fog."""
    return (sdf_gradient(field, positions, step).norm(dim=-1) - 1).pow(2).mean()


def eikonal_points(
    field, out: dict[str, Tensor], n: int, generator: torch.Generator | None = None
) -> Float[Tensor, "M 3"]:
    """Where the eikonal term is taken: `n` points uniform in the field's cube and up to `n` of the render's
    contributing samples (near the surface, where the shape is decided)."""
    bound = field.config.bound
    device = next(field.parameters()).device
    uniform = (torch.rand(n, 3, generator=generator) * 2 - 1).to(device) * bound
    samples = out.get("packed_positions", uniform[:0]).detach().reshape(-1, 3)
    if len(samples) > n:
        samples = samples[torch.randperm(len(samples), generator=generator)[:n].to(samples.device)]
    return torch.cat([uniform, samples.to(device)])


def regularizer_losses(
    config, out: dict[str, Tensor], progress: float = 0.0, field=None, generator: torch.Generator | None = None
) -> dict[str, Tensor]:
    """The enabled regularisers of a `RegularizerConfig` on a render's outputs, each weighted by its (scheduled)
    weight at training progress in [0, 1]. The normal losses need the render's packed normals (and the field, for
    the neighbours of the smoothness loss); a render without them skips those losses."""
    losses: dict[str, Tensor] = {}
    opacity = out["opacity"]
    num_pixels = opacity.numel()
    weight = config.weight("opacity", progress)
    if weight:
        losses["loss_opacity"] = weight * opacity_sparsity(opacity)
    weight = config.weight("entropy", progress)
    if weight:
        losses["loss_entropy"] = weight * opacity_entropy(opacity)
    weight = config.weight("z_variance", progress)
    if weight:
        losses["loss_z_variance"] = weight * depth_variance_loss(out["depth_variance"], opacity)
    if config.lambda_eikonal and field is not None:
        points = eikonal_points(field, out, config.eikonal_points, generator)
        losses["loss_eikonal"] = config.lambda_eikonal * eikonal_loss(field, points, config.eikonal_step)
    if "packed_normals" not in out:
        return losses
    normals, weights = out["packed_normals"], out["packed_weights"]
    weight = config.weight("orient", progress)
    if weight:
        losses["loss_orient"] = weight * orientation_loss(normals, out["packed_directions"], weights, num_pixels)
    if config.lambda_normal_smooth and field is not None:
        smooth = normal_smoothness_loss(
            field, out["packed_positions"], normals, weights, config.normal_smooth_eps, num_pixels, generator
        )
        losses["loss_normal_smooth"] = config.lambda_normal_smooth * smooth
    return losses
