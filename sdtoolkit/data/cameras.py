"""Orbit cameras around the origin, shared by the shapes renderer and the 3D code.

Conventions (every renderer and NeRF in sdtoolkit uses these):

- The world is right-handed with +z up; the object sits at the origin.
- A camera sits on a sphere of radius `distance` around the origin and looks at the origin.
- `azimuth_deg = 0` puts the camera on the +x axis ("front"); azimuth increases counter-clockwise seen from above
  (azimuth 90 puts the camera on the +y axis). Azimuths are reported in [-180, 180).
- `elevation_deg` is the angle of the camera above the xy-plane (90 would be straight overhead; it is kept below
  90 so the up vector is defined).
- Camera-to-world matrices follow OpenGL: the camera looks down its own -z axis, +x is right, +y is up in the image.
- Pinhole cameras with square pixels; `fov_deg` is the vertical field of view (for a square image, both).
- Pixel (row i, column j) is sampled at its centre; row 0 is the top of the image.

View words follow DreamFusion (Poole et al., 2022, "View-dependent text conditioning"): elevation above 60 degrees
is "overhead", otherwise |azimuth| < 45 is "front", |azimuth| > 135 is "back", the rest "side". The thresholds are
the ones threestudio's `PromptProcessor` uses (`overhead_threshold=60`, `front_threshold=45`, `back_threshold=45`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

OVERHEAD_THRESHOLD_DEG = 60.0
"""DreamFusion: cameras with elevation above this are "overhead" (threestudio `overhead_threshold`)."""
FRONT_THRESHOLD_DEG = 45.0
"""DreamFusion: |azimuth| below this is "front" (threestudio `front_threshold`)."""
BACK_THRESHOLD_DEG = 45.0
"""DreamFusion: |azimuth| above 180 minus this is "back" (threestudio `back_threshold`)."""

DEFAULT_DISTANCE = 2.8
"""Default camera distance. With `DEFAULT_FOV_DEG` the frame is 2.04 units wide at the origin, so a unit-size
object (see `sdtoolkit.data.shapes`) fills roughly half of it."""
DEFAULT_FOV_DEG = 40.0
"""Default vertical field of view in degrees."""


def wrap_azimuth_deg(azimuth_deg: Tensor) -> Tensor:
    """Wraps azimuths in degrees to [-180, 180)."""
    return torch.remainder(azimuth_deg + 180.0, 360.0) - 180.0


@dataclass
class Cameras:
    """A batch of pinhole cameras orbiting the origin; every field has shape [B]."""

    azimuth_deg: Float[Tensor, " B"]
    """Azimuth in degrees: 0 = on the +x axis (front), counter-clockwise seen from above."""
    elevation_deg: Float[Tensor, " B"]
    """Elevation above the xy-plane in degrees, in (-90, 90)."""
    distance: Float[Tensor, " B"]
    """Distance from the camera centre to the origin."""
    fov_deg: Float[Tensor, " B"]
    """Vertical field of view in degrees."""

    def __post_init__(self) -> None:
        fields = (self.azimuth_deg, self.elevation_deg, self.distance, self.fov_deg)
        shapes = {tuple(f.shape) for f in fields}
        if len(shapes) != 1 or len(next(iter(shapes))) != 1:
            raise ValueError(
                f"Cameras fields must all have the same shape [B], got {[tuple(f.shape) for f in fields]}"
            )

    def __len__(self) -> int:
        return self.azimuth_deg.shape[0]

    def __getitem__(self, index) -> Cameras:
        if isinstance(index, int):
            index = slice(index, index + 1) if index != -1 else slice(index, None)
        return Cameras(self.azimuth_deg[index], self.elevation_deg[index], self.distance[index], self.fov_deg[index])

    @property
    def device(self) -> torch.device:
        return self.azimuth_deg.device

    def to(self, device: torch.device | str) -> Cameras:
        return Cameras(*(f.to(device) for f in (self.azimuth_deg, self.elevation_deg, self.distance, self.fov_deg)))

    def positions(self) -> Float[Tensor, "B 3"]:
        """Camera centres in world coordinates."""
        azimuth, elevation = torch.deg2rad(self.azimuth_deg), torch.deg2rad(self.elevation_deg)
        return self.distance[:, None] * torch.stack(
            [elevation.cos() * azimuth.cos(), elevation.cos() * azimuth.sin(), elevation.sin()], dim=-1
        )

    def c2w(self) -> Float[Tensor, "B 4 4"]:
        """Camera-to-world matrices (OpenGL: the camera looks down its -z, +y is up, +x is right)."""
        position = self.positions()
        backward = position / position.norm(dim=-1, keepdim=True)  # camera +z points away from the origin
        up_world = torch.tensor([0.0, 0.0, 1.0], dtype=position.dtype, device=position.device).expand_as(position)
        right = torch.linalg.cross(up_world, backward, dim=-1)
        right = right / right.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        up = torch.linalg.cross(backward, right, dim=-1)
        c2w = torch.zeros(len(self), 4, 4, dtype=position.dtype, device=position.device)
        c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, up, backward, position
        c2w[:, 3, 3] = 1.0
        return c2w

    def generate_rays(self, height: int, width: int) -> tuple[Float[Tensor, "B H W 3"], Float[Tensor, "B H W 3"]]:
        """Rays through every pixel centre: origins (the camera centres) and unit directions, in world space."""
        c2w = self.c2w()
        tan_half_fov = torch.tan(torch.deg2rad(self.fov_deg) / 2)  # [B]
        rows = (torch.arange(height, dtype=c2w.dtype, device=c2w.device) + 0.5) / height * 2 - 1
        cols = (torch.arange(width, dtype=c2w.dtype, device=c2w.device) + 0.5) / width * 2 - 1
        y = -rows[None, :, None] * tan_half_fov[:, None, None]  # [B, H, 1]
        x = cols[None, None, :] * tan_half_fov[:, None, None] * (width / height)  # [B, 1, W]
        y, x = torch.broadcast_tensors(y, x)
        directions_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # [B, H, W, 3]
        directions = torch.einsum("bij,bhwj->bhwi", c2w[:, :3, :3], directions_cam)
        directions = directions / directions.norm(dim=-1, keepdim=True)
        origins = c2w[:, None, None, :3, 3].expand_as(directions)
        return origins, directions


def cat_cameras(*parts: Cameras) -> Cameras:
    """The cameras of several batches, one after the other."""
    fields = ("azimuth_deg", "elevation_deg", "distance", "fov_deg")
    return Cameras(*(torch.cat([getattr(p, name) for p in parts]) for name in fields))


def orbit_cameras(
    azimuth: list[float], elevation: list[float], distance: float = DEFAULT_DISTANCE, fov: float = DEFAULT_FOV_DEG
) -> Cameras:
    """Cameras on the world's orbit from lists of azimuths and elevations (degrees), at one distance and field of
    view."""
    n = len(azimuth)
    return Cameras(
        torch.tensor(azimuth, dtype=torch.float32),
        torch.tensor(elevation, dtype=torch.float32),
        torch.full((n,), float(distance)),
        torch.full((n,), float(fov)),
    )


def _full(n: int, value: float, device=None) -> Tensor:
    return torch.full((n,), float(value), device=device)


def sample_cameras(
    n: int,
    generator: torch.Generator | None = None,
    azimuth_range: tuple[float, float] = (-180.0, 180.0),
    elevation_range: tuple[float, float] = (-10.0, 60.0),
    distance: float = DEFAULT_DISTANCE,
    fov_deg: float = DEFAULT_FOV_DEG,
) -> Cameras:
    """Samples `n` cameras, azimuth and elevation uniform in their ranges (degrees), at one distance and fov."""
    u = torch.rand(2, n, generator=generator)
    azimuth = azimuth_range[0] + (azimuth_range[1] - azimuth_range[0]) * u[0]
    elevation = elevation_range[0] + (elevation_range[1] - elevation_range[0]) * u[1]
    return Cameras(wrap_azimuth_deg(azimuth), elevation, _full(n, distance), _full(n, fov_deg))


def turntable_cameras(
    n_views: int,
    elevation_deg: float = 15.0,
    distance: float = DEFAULT_DISTANCE,
    fov_deg: float = DEFAULT_FOV_DEG,
) -> Cameras:
    """`n_views` cameras evenly spaced in azimuth starting at the front (azimuth 0), at one elevation."""
    azimuth = torch.arange(n_views, dtype=torch.float32) * (360.0 / n_views)
    return Cameras(
        wrap_azimuth_deg(azimuth), _full(n_views, elevation_deg), _full(n_views, distance), _full(n_views, fov_deg)
    )


def view_word(azimuth_deg: Tensor | float, elevation_deg: Tensor | float) -> list[str]:
    """DreamFusion's view word for each camera: "overhead", "front", "side" or "back" (see module docstring)."""
    azimuth = wrap_azimuth_deg(torch.as_tensor(azimuth_deg, dtype=torch.float64).reshape(-1))
    elevation = torch.as_tensor(elevation_deg, dtype=torch.float64).reshape(-1)
    azimuth, elevation = torch.broadcast_tensors(azimuth, elevation)
    words = []
    for a, e in zip(azimuth.abs().tolist(), elevation.tolist()):
        if e > OVERHEAD_THRESHOLD_DEG:
            words.append("overhead")
        elif a < FRONT_THRESHOLD_DEG:
            words.append("front")
        elif a > 180.0 - BACK_THRESHOLD_DEG:
            words.append("back")
        else:
            words.append("side")
    return words


def focal_length_px(fov_deg: float, size: int) -> float:
    """Focal length in pixels of a pinhole with vertical field of view `fov_deg` over `size` pixels."""
    return size / (2 * math.tan(math.radians(fov_deg) / 2))
