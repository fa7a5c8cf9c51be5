"""DreamCar's mirror-symmetry prior (Du et al. 2024, Sec. 3.2, "Mirror Symmetric Prior"): an object symmetric about
a plane looks, from the reflection of a camera across that plane, like the horizontally flipped image of the
original camera, so every reference view gives a second, mirrored one (DreamCar's `flip: True`); and optionally a
density that is symmetric by construction (the field queried at p and at its mirror image).

The symmetry plane is vertical and goes through the object's centre (the origin); it contains the z axis and the
horizontal direction at azimuth phi (`plane_azimuth_deg`). phi = 0 is the xz-plane: left/right symmetry of an object
facing the front camera (azimuth 0, on +x), like a car seen head-on. Mirroring across it maps a camera at azimuth a
to azimuth 2 phi - a, with the same elevation, distance and field of view.

An object may have more than one such plane (`planes` = n): n vertical planes 180/n degrees apart, the first at
phi, generate the dihedral group D_n of 2n transforms, n rotations about the vertical axis by k 360/n and n
reflections across the planes at phi + k 180/n. A car has one plane (n = 1, DreamCar's case); every primitive of
the shapes world has at least two perpendicular ones (n = 2: left/right and front/back), so one front view also
fixes the unseen back. A rotated camera sees the same image; a reflected one the flipped image.

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


def symmetry_group(planes: int = 1, plane_azimuth_deg: float = 0.0) -> list[tuple[bool, float]]:
    """The dihedral group D_n of n = `planes` vertical mirror planes 180/n degrees apart, the first at azimuth phi,
    as (reflects, angle) pairs: (False, k 360/n) rotates by that angle about z, (True, phi + k 180/n) reflects across
    the plane at that azimuth; k = 0..n-1, identity first."""
    if planes < 1:
        raise ValueError(f"symmetry planes = {planes}; need at least 1")
    rotations = [(False, k * 360.0 / planes) for k in range(planes)]
    reflections = [(True, plane_azimuth_deg + k * 180.0 / planes) for k in range(planes)]
    return rotations + reflections


def rotate_points(points: Float[Tensor, "*N 3"], angle_deg: float) -> Float[Tensor, "*N 3"]:
    """Rotation by `angle_deg` about the vertical (z) axis, counter-clockwise from above (azimuth a -> a + angle)."""
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    x, y, z = points.unbind(-1)
    return torch.stack([c * x - s * y, s * x + c * y, z], dim=-1)


def transform_points(points: Float[Tensor, "*N 3"], element: tuple[bool, float]) -> Float[Tensor, "*N 3"]:
    """One element of `symmetry_group` applied to points about the origin."""
    reflects, angle = element
    return mirror_points(points, angle) if reflects else rotate_points(points, angle)


def transform_cameras(cameras: Cameras, element: tuple[bool, float]) -> Cameras:
    """The cameras moved by one element of `symmetry_group`: a reflection as `mirror_cameras`, a rotation adds its
    angle to the azimuth (elevation, distance and fov unchanged; differentiable)."""
    reflects, angle = element
    if reflects:
        return mirror_cameras(cameras, angle)
    return Cameras(
        wrap_azimuth_deg(cameras.azimuth_deg + angle), cameras.elevation_deg, cameras.distance, cameras.fov_deg
    )


def transform_images(images: Float[Tensor, "*B C H W"], element: tuple[bool, float]) -> Float[Tensor, "*B C H W"]:
    """What the moved camera sees of a symmetric object: flipped for a reflection, the same image for a rotation."""
    return mirror_images(images) if element[0] else images


class _WrappedEncoding(nn.Module):
    """What both symmetric wrappers share: the wrapped encoding as `inner`, its output width and grid flag, and its
    coarse-to-fine level switch (`--start-levels`: `num_levels`, `set_active_levels`), passed through."""

    def __init__(self, encoding: nn.Module, plane_azimuth_deg: float = 0.0, planes: int = 1):
        super().__init__()
        self.inner = encoding
        self.plane_azimuth_deg = plane_azimuth_deg
        self.planes = planes
        self.out_dim = encoding.out_dim
        self.grid = getattr(encoding, "grid", True)  # `TextTo3DField.parameter_groups` reads it

    @property
    def num_levels(self) -> int:
        return self.inner.num_levels

    def set_active_levels(self, levels: int) -> None:
        self.inner.set_active_levels(levels)


class SymmetricEncoding(_WrappedEncoding):
    """A field encoding made symmetric: e_sym(p) = mean over the group G of e(g p) (`symmetry_group`; with one
    plane, (e(p) + e(M p)) / 2 for the reflection M), so the density and colour decoded from it satisfy
    f(g p) = f(p) exactly for every g in G (the "symmetric-density" option). The wrapped encoding takes points of
    the unit cube (`TextTo3DField.normalize`: u = (p / bound + 1) / 2), so G acts on u - 1/2. Multiplies the
    encoding's cost by |G| = 2 n."""

    def __init__(self, encoding: nn.Module, plane_azimuth_deg: float = 0.0, planes: int = 1):
        super().__init__(encoding, plane_azimuth_deg, planes)
        self.group = symmetry_group(planes, plane_azimuth_deg)

    def forward(self, unit_points: Float[Tensor, "*N 3"]) -> Float[Tensor, "*N D"]:
        centred = unit_points - 0.5
        moved = [unit_points] + [transform_points(centred, g) + 0.5 for g in self.group[1:]]
        return self.inner(torch.stack(moved)).mean(0)


AXIS_RADIUS = 1e-4
"""Distance from the vertical axis (in the field's unit-cube coordinates: the hash grid's finest cell is ~1e-2)
within which `fold_points` keeps a point unfolded."""


def fold_points(points: Float[Tensor, "*N 3"], planes: int = 1, plane_azimuth_deg: float = 0.0) -> Tensor:
    """Each point's image in the fundamental wedge of `symmetry_group(planes, phi)`: the azimuth theta - phi about z
    folded into [0, pi / n] (t = (theta - phi) mod 2 pi / n; t -> 2 pi / n - t past pi / n), the radius and height
    kept. f(fold(p)) is invariant under the whole group for any f; with two planes at 0 and 90 it is (|x|, |y|, z)."""
    wedge = math.pi / planes
    phi = math.radians(plane_azimuth_deg)
    x, y, z = points.unbind(-1)
    # within AXIS_RADIUS of the axis the point is kept as it is (every image of it is that close): the azimuth's
    # derivatives grow like 1 / radius^k there, and a render whose normals are differentiated again (Lambert
    # shading with learnable cameras) overflowed to NaN on the axis. The kept points are fed safe values
    # (1, 0) so that no branch of the `where` produces inf or NaN in the backward pass.
    near_axis = x * x + y * y < AXIS_RADIUS**2
    x_safe = torch.where(near_axis, torch.ones_like(x), x)
    y_safe = torch.where(near_axis, torch.zeros_like(y), y)
    radius = torch.sqrt(x_safe * x_safe + y_safe * y_safe)
    t = torch.remainder(torch.atan2(y_safe, x_safe) - phi, 2 * wedge)
    t = torch.where(t > wedge, 2 * wedge - t, t) + phi
    folded = torch.stack([radius * torch.cos(t), radius * torch.sin(t), z], dim=-1)
    return torch.where(near_axis[..., None], points, folded)


class FoldedEncoding(_WrappedEncoding):
    """A field encoding made symmetric by folding: e_fold(p) = e(fold(p)) (`fold_points`), exactly invariant under
    the symmetry group like `SymmetricEncoding` but with one query of the wrapped encoding instead of 2 n. The
    field's derivative across a plane flips sign, so a surface that crosses a plane at an angle other than 90
    degrees shows a crease there (averaging keeps it smooth)."""

    def forward(self, unit_points: Float[Tensor, "*N 3"]) -> Float[Tensor, "*N D"]:
        return self.inner(fold_points(unit_points - 0.5, self.planes, self.plane_azimuth_deg) + 0.5)


SYMMETRY_METHODS = ("average", "fold")
"""How `make_symmetric` makes the field symmetric: `SymmetricEncoding` or `FoldedEncoding`."""


def make_symmetric(nerf, plane_azimuth_deg: float = 0.0, planes: int = 1, method: str = "average"):
    """Wraps `nerf.field.encoding` in a `SymmetricEncoding` ('average') or a `FoldedEncoding` ('fold') (in place;
    returns the NeRF)."""
    if method not in SYMMETRY_METHODS:
        raise ValueError(f"symmetry method {method!r}; choose one of {', '.join(SYMMETRY_METHODS)}")
    if not isinstance(nerf.field.encoding, (SymmetricEncoding, FoldedEncoding)):
        wrapper = SymmetricEncoding if method == "average" else FoldedEncoding
        nerf.field.encoding = wrapper(nerf.field.encoding, plane_azimuth_deg, planes)
    return nerf
