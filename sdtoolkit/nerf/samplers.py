"""Ray samplers (nerfstudio's `model_components/ray_samplers`): stratified uniform samples, importance (PDF) samples
from a coarse pass's weights (Mildenhall et al. 2020, Sec. 5.2), and nerfacc-style pruning of samples that cannot
contribute (Li et al. 2023, "NerfAcc": skip samples with tiny opacity or behind an opaque surface)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from sdtoolkit.nerf.colliders import RayBundle


@dataclass
class RaySamples:
    """Samples along R rays, S per ray, as interval midpoints with their lengths."""

    starts: Float[Tensor, "R S"]
    """Distance along the ray where each interval starts."""
    ends: Float[Tensor, "R S"]
    """Distance along the ray where each interval ends."""

    @property
    def deltas(self) -> Float[Tensor, "R S"]:
        """Interval lengths delta_i = t_{i+1} - t_i."""
        return self.ends - self.starts

    @property
    def midpoints(self) -> Float[Tensor, "R S"]:
        return (self.starts + self.ends) / 2

    def positions(self, rays: RayBundle) -> Float[Tensor, "R S 3"]:
        """World positions of the interval midpoints."""
        return rays.origins[:, None, :] + rays.directions[:, None, :] * self.midpoints[..., None]


class UniformSampler:
    """S equal intervals between near and far; `stratified` jitters every sample inside its interval in training."""

    def __init__(self, num_samples: int, stratified: bool = True):
        self.num_samples, self.stratified = num_samples, stratified

    def __call__(self, rays: RayBundle, generator: torch.Generator | None = None) -> RaySamples:
        bins = torch.linspace(0, 1, self.num_samples + 1, dtype=rays.origins.dtype, device=rays.origins.device)
        if self.stratified:
            jitter = torch.rand(len(rays), self.num_samples + 1, generator=generator).to(rays.origins)
            width = 1.0 / self.num_samples
            bins = (bins[None, :] + (jitter - 0.5) * width).clamp(0, 1)
            bins[:, 0], bins[:, -1] = 0.0, 1.0
            bins = bins.sort(dim=-1).values
        else:
            bins = bins[None, :].expand(len(rays), -1)
        t = rays.nears[:, None] + (rays.fars - rays.nears)[:, None] * bins
        return RaySamples(starts=t[:, :-1], ends=t[:, 1:])


class PDFSampler:
    """Importance samples drawn from the piecewise-constant PDF of a coarse pass's weights (inverse transform
    sampling, Mildenhall et al. 2020, Sec. 5.2), merged with the coarse samples and re-sorted."""

    def __init__(self, num_samples: int, histogram_padding: float = 0.01, stratified: bool = True):
        self.num_samples, self.histogram_padding, self.stratified = num_samples, histogram_padding, stratified

    def __call__(
        self, coarse: RaySamples, weights: Float[Tensor, "R S"], generator: torch.Generator | None = None
    ) -> RaySamples:
        weights = weights.detach() + self.histogram_padding
        pdf = weights / weights.sum(-1, keepdim=True)
        cdf = torch.cat([torch.zeros_like(pdf[:, :1]), pdf.cumsum(-1)], dim=-1).clamp(max=1)  # [R, S+1]
        rays = pdf.shape[0]
        if self.stratified:
            jitter = torch.rand(rays, self.num_samples, generator=generator).to(pdf.device)
            u = (torch.arange(self.num_samples, device=pdf.device) + jitter) / self.num_samples
        else:
            u = ((torch.arange(self.num_samples, device=pdf.device) + 0.5) / self.num_samples).expand(rays, -1)
        u = u.to(cdf.dtype).contiguous()
        edges = torch.cat([coarse.starts, coarse.ends[:, -1:]], dim=-1)  # [R, S+1]
        index = torch.searchsorted(cdf, u, right=True).clamp(1, cdf.shape[-1] - 1)
        cdf_lo, cdf_hi = cdf.gather(-1, index - 1), cdf.gather(-1, index)
        edge_lo, edge_hi = edges.gather(-1, index - 1), edges.gather(-1, index)
        frac = ((u - cdf_lo) / (cdf_hi - cdf_lo).clamp_min(1e-8)).clamp(0, 1)
        new_t = edge_lo + frac * (edge_hi - edge_lo)
        t = torch.cat([edges, new_t], dim=-1).sort(dim=-1).values
        return RaySamples(starts=t[:, :-1], ends=t[:, 1:])


def contributing_samples(
    densities: Float[Tensor, "R S"],
    samples: RaySamples,
    alpha_threshold: float = 1e-4,
    transmittance_threshold: float = 1e-3,
) -> Bool[Tensor, "R S"]:
    """nerfacc's pruning (`alpha_thre`, `early_stop_eps`): keep a sample when its opacity alpha_i = 1 - exp(-sigma_i
    delta_i) exceeds `alpha_threshold` and the transmittance in front of it still exceeds `transmittance_threshold`.

    Evaluated on densities from a no-grad pass; the differentiable pass then runs the field only on the kept samples
    (the others have weight below the thresholds and are treated as empty).
    """
    sigma_delta = densities * samples.deltas
    alpha = 1 - torch.exp(-sigma_delta)
    transmittance = torch.exp(-torch.cumsum(sigma_delta, dim=-1) + sigma_delta)  # T_i excludes sample i itself
    return (alpha > alpha_threshold) & (transmittance > transmittance_threshold)
