"""A cached density grid for empty-space skipping (Instant-NGP's occupancy grid, Müller et al. 2022, Sec. 4;
nerfacc's `OccGridEstimator`), in plain torch.

The grid holds an exponential moving maximum of the field's density at each cell, refreshed every few steps from
jittered points in every cell. Samplers read it (nearest cell) instead of evaluating the field at every sample, so
only samples in occupied cells reach the differentiable pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor, nn


class OccupancyGrid(nn.Module):
    """Density cache on a `resolution`^3 grid over [-bound, bound]^3.

    Args:
        bound: half size of the cube covered.
        resolution: cells per axis (Instant-NGP: 128).
        decay: each refresh multiplies the cache by `decay` before taking the max with new values (Instant-NGP 0.95).
        update_every: refresh period in optimisation steps (Instant-NGP: 16).
    """

    def __init__(self, bound: float, resolution: int = 64, decay: float = 0.95, update_every: int = 16):
        super().__init__()
        self.bound, self.resolution, self.decay, self.update_every = bound, resolution, decay, update_every
        self.register_buffer("densities", torch.zeros(resolution, resolution, resolution))
        self.register_buffer("initialised", torch.tensor(False))

    def cell_centres(self) -> Float[Tensor, "N N N 3"]:
        n, b = self.resolution, self.bound
        axis = (torch.arange(n, dtype=torch.float32, device=self.densities.device) + 0.5) / n * 2 * b - b
        return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)

    @torch.no_grad()
    def update(
        self,
        density_fn: Callable[[Tensor], Tensor],
        step: int,
        generator: torch.Generator | None = None,
        chunk: int = 1 << 17,
        force: bool = False,
    ) -> bool:
        """Refreshes the cache when `step` is a multiple of `update_every` (or `force`); returns whether it did."""
        if not force and bool(self.initialised) and step % self.update_every != 0:
            return False
        cell = 2 * self.bound / self.resolution
        jitter = (torch.rand(*self.densities.shape, 3, generator=generator) - 0.5).to(self.densities.device) * cell
        points = (self.cell_centres() + jitter).reshape(-1, 3)
        fresh = torch.cat([density_fn(part) for part in points.split(chunk)]).reshape(self.densities.shape)
        decayed = self.densities * self.decay if bool(self.initialised) else self.densities
        self.densities.copy_(torch.maximum(decayed, fresh))
        self.initialised.fill_(True)
        return True

    def query(self, positions: Float[Tensor, "*bs 3"]) -> Float[Tensor, " *bs"]:
        """Cached density of the cell holding each point (0 outside the cube)."""
        n = self.resolution
        index = ((positions / self.bound + 1) / 2 * n).floor().long()
        inside = ((index >= 0) & (index < n)).all(-1)
        index = index.clamp(0, n - 1)
        values = self.densities[index[..., 0], index[..., 1], index[..., 2]]
        return values * inside
