"""Colliders: the [near, far] interval of each ray through the scene bound (nerfstudio's `model_components/colliders`).

Rays that miss the bound get near = far and `hit = False`; samplers put no weight on them and the renderer shows the
background there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor


@dataclass
class RayBundle:
    """A flat batch of rays with their [near, far] interval (nerfstudio's `RayBundle`, reduced to what we use)."""

    origins: Float[Tensor, "R 3"]
    """Ray origins in world coordinates."""
    directions: Float[Tensor, "R 3"]
    """Unit ray directions."""
    nears: Float[Tensor, " R"] | None = None
    """Distance along the ray where sampling starts (set by a collider)."""
    fars: Float[Tensor, " R"] | None = None
    """Distance along the ray where sampling stops (set by a collider)."""
    hit: Bool[Tensor, " R"] | None = None
    """Whether the ray crosses the scene bound at all."""

    def __len__(self) -> int:
        return self.origins.shape[0]


class NearFarCollider:
    """Fixed near and far planes for every ray."""

    def __init__(self, near: float, far: float):
        self.near, self.far = near, far

    def __call__(self, rays: RayBundle) -> RayBundle:
        ones = torch.ones(len(rays), dtype=rays.origins.dtype, device=rays.origins.device)
        rays.nears, rays.fars = ones * self.near, ones * self.far
        rays.hit = torch.ones(len(rays), dtype=torch.bool, device=rays.origins.device)
        return rays


class SphereCollider:
    """The interval where each ray is inside the sphere |x| <= radius (solving |o + t d|^2 = r^2 for t)."""

    def __init__(self, radius: float, near_plane: float = 0.05):
        self.radius, self.near_plane = radius, near_plane

    def __call__(self, rays: RayBundle) -> RayBundle:
        b = (rays.origins * rays.directions).sum(-1)
        c = (rays.origins * rays.origins).sum(-1) - self.radius**2
        discriminant = b * b - c
        root = discriminant.clamp_min(0).sqrt()
        nears = (-b - root).clamp_min(self.near_plane)
        fars = (-b + root).clamp_min(self.near_plane)
        rays.hit = (discriminant > 0) & (fars > nears)
        rays.nears, rays.fars = nears, torch.where(rays.hit, fars, nears)
        return rays


class AABBCollider:
    """The interval where each ray is inside the axis-aligned box [-bound, bound]^3 (slab method)."""

    def __init__(self, bound: float, near_plane: float = 0.05):
        self.bound, self.near_plane = bound, near_plane

    def __call__(self, rays: RayBundle) -> RayBundle:
        inv = 1.0 / torch.where(rays.directions.abs() < 1e-9, torch.full_like(rays.directions, 1e-9), rays.directions)
        t0 = (-self.bound - rays.origins) * inv
        t1 = (self.bound - rays.origins) * inv
        nears = torch.minimum(t0, t1).amax(-1).clamp_min(self.near_plane)
        fars = torch.maximum(t0, t1).amin(-1).clamp_min(self.near_plane)
        rays.hit = fars > nears
        rays.nears, rays.fars = nears, torch.where(rays.hit, fars, nears)
        return rays


COLLIDERS = {"sphere": SphereCollider, "aabb": AABBCollider}
