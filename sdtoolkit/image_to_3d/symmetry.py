"""DreamCar's mirror-symmetry prior (Du et al. 2024, Sec. 3.2, "Mirror Symmetric Prior"): an object symmetric about
a plane looks, from the reflection of a camera across that plane, like the horizontally flipped image of the
original camera, so every reference view gives a second, mirrored one (DreamCar's `flip: True`); and optionally a
density that is symmetric by construction (the field queried at p and at its mirror image).

The symmetry plane is vertical and goes through the object's centre (the origin); it contains the z axis and the
horizontal direction at azimuth phi (`plane_azimuth_deg`). phi = 0 is the xz-plane: left/right symmetry of an object
facing the front camera (azimuth 0, on +x), like a car seen head-on. Mirroring across it maps a camera at azimuth a
to azimuth 2 phi - a, with the same elevation, distance and field of view.

The flipped image is exactly the mirrored camera's view only when the lighting is symmetric too: baked-in shading
lit from one side is flipped with the image (a limitation DreamCar shares).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor, nn

from sdtoolkit.data.cameras import Cameras, wrap_azimuth_deg


def mirror_azimuth(azimuth_deg: Tensor, plane_azimuth_deg: float = 0.0) -> Tensor:
    """a' = 2 phi - a: the azimuth of a camera reflected across the vertical plane at azimuth phi (wrapped)."""
    return wrap_azimuth_deg(2 * plane_azimuth_deg - azimuth_deg)


def mirror_cameras(cameras: Cameras, plane_azimuth_deg: float = 0.0) -> Cameras:
    """The cameras reflected across the symmetry plane: azimuth 2 phi - a; elevation, distance and fov unchanged.
    Differentiable (pose refinement moves a view and its mirror together)."""
    return Cameras(
        mirror_azimuth(cameras.azimuth_deg, plane_azimuth_deg),
        cameras.elevation_deg,
        cameras.distance,
        cameras.fov_deg,
    )


def mirror_images(images: Float[Tensor, "*B C H W"]) -> Float[Tensor, "*B C H W"]:
    """The horizontally flipped images: what the mirrored camera sees of a symmetric object."""
    return images.flip(-1)


def plane_normal(plane_azimuth_deg: float = 0.0, dtype=torch.float32, device=None) -> Float[Tensor, " 3"]:
    """Unit normal n = (-sin phi, cos phi, 0) of the vertical plane containing the z axis and azimuth phi."""
    phi = math.radians(plane_azimuth_deg)
    return torch.tensor([-math.sin(phi), math.cos(phi), 0.0], dtype=dtype, device=device)


def mirror_points(points: Float[Tensor, "*N 3"], plane_azimuth_deg: float = 0.0) -> Float[Tensor, "*N 3"]:
    """Householder reflection across the plane through the origin: p - 2 (p . n) n."""
    n = plane_normal(plane_azimuth_deg, points.dtype, points.device)
    return points - 2 * (points @ n)[..., None] * n


class SymmetricEncoding(nn.Module):
    """A field encoding made symmetric: e_sym(p) = (e(p) + e(M p)) / 2 for the reflection M across the plane, so the
    density and colour decoded from it satisfy f(M p) = f(p) exactly (the "symmetric-density" option). The wrapped
    encoding takes points of the unit cube (`TextTo3DField.normalize`: u = (p / bound + 1) / 2), so M acts on
    u - 1/2. Doubles the encoding's cost."""

    def __init__(self, encoding: nn.Module, plane_azimuth_deg: float = 0.0):
        super().__init__()
        self.inner = encoding
        self.plane_azimuth_deg = plane_azimuth_deg
        self.out_dim = encoding.out_dim
        self.grid = getattr(encoding, "grid", True)  # `TextTo3DField.parameter_groups` reads it

    def forward(self, unit_points: Float[Tensor, "*N 3"]) -> Float[Tensor, "*N D"]:
        mirrored = mirror_points(unit_points - 0.5, self.plane_azimuth_deg) + 0.5
        return self.inner(torch.stack([unit_points, mirrored])).mean(0)


def make_symmetric(nerf, plane_azimuth_deg: float = 0.0):
    """Wraps `nerf.field.encoding` in a `SymmetricEncoding` (in place; returns the NeRF)."""
    if not isinstance(nerf.field.encoding, SymmetricEncoding):
        nerf.field.encoding = SymmetricEncoding(nerf.field.encoding, plane_azimuth_deg)
    return nerf
