"""The five procedural shapes: exact signed distance functions (Inigo Quilez's forms), colours and view words.

Every shape is centred at the origin with its axis of symmetry along +z and fits inside a sphere of radius
`BOUNDING_RADIUS` = 0.75, i.e. it is about one unit across:

- sphere: radius 0.5;
- cube: half side 0.4 (side 0.8);
- cylinder: radius 0.4, half height 0.45;
- cone: base radius 0.5 at z = -0.5, apex at z = +0.5;
- torus: lying in the xy-plane, major radius 0.35, minor radius 0.15 (outer radius 0.5).

SDFs are negative inside, positive outside, and exact (the Euclidean distance to the surface), so sphere tracing
may step by the full SDF value. Forms after https://iquilezles.org/articles/distfunctions/ .
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

SHAPES: tuple[str, ...] = ("sphere", "cube", "cylinder", "cone", "torus")
"""Shape names; a shape id is an index into this tuple."""

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "yellow": (0.95, 0.85, 0.10),
    "green": (0.10, 0.75, 0.15),
    "cyan": (0.10, 0.80, 0.85),
    "blue": (0.20, 0.35, 1.00),
    "purple": (0.70, 0.25, 0.95),
}
"""Albedos in linear [0, 1] RGB; hues roughly 60 degrees apart so they stay apart under Lambert shading. Every
name starts with a consonant, so "a <colour> <shape>" is always grammatical."""
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
"""Colour names; a colour id is an index into this tuple."""

VIEWS: tuple[str, ...] = ("front", "side", "back", "overhead")
"""DreamFusion view words (see `sdtoolkit.data.cameras.view_word`); a view id is an index into this tuple."""

BOUNDING_RADIUS = 0.75
"""Every shape lies inside the sphere of this radius around the origin."""

SPHERE_RADIUS = 0.5
CUBE_HALF_SIZE = 0.4
CYLINDER_RADIUS, CYLINDER_HALF_HEIGHT = 0.4, 0.45
CONE_RADIUS, CONE_HEIGHT = 0.5, 1.0
TORUS_MAJOR_RADIUS, TORUS_MINOR_RADIUS = 0.35, 0.15


def _length2(a: Tensor, b: Tensor) -> Tensor:
    return torch.sqrt(a * a + b * b)


def sdf_sphere(x: Tensor, y: Tensor, z: Tensor, radius: float = SPHERE_RADIUS) -> Tensor:
    """Sphere: |p| - r."""
    return torch.sqrt(x * x + y * y + z * z) - radius


def sdf_box(x: Tensor, y: Tensor, z: Tensor, half_size: float = CUBE_HALF_SIZE) -> Tensor:
    """Axis-aligned cube: with q = |p| - b, |max(q, 0)| + min(max(q_x, q_y, q_z), 0)."""
    qx, qy, qz = x.abs() - half_size, y.abs() - half_size, z.abs() - half_size
    outside = torch.sqrt(qx.clamp_min(0).square() + qy.clamp_min(0).square() + qz.clamp_min(0).square())
    return outside + torch.maximum(torch.maximum(qx, qy), qz).clamp_max(0)


def sdf_capped_cylinder(
    x: Tensor, y: Tensor, z: Tensor, radius: float = CYLINDER_RADIUS, half_height: float = CYLINDER_HALF_HEIGHT
) -> Tensor:
    """Capped cylinder along z: with d = (|p_xy| - r, |p_z| - h), min(max(d), 0) + |max(d, 0)|."""
    dr, dz = _length2(x, y) - radius, z.abs() - half_height
    return torch.maximum(dr, dz).clamp_max(0) + _length2(dr.clamp_min(0), dz.clamp_min(0))


def sdf_cone(x: Tensor, y: Tensor, z: Tensor, radius: float = CONE_RADIUS, height: float = CONE_HEIGHT) -> Tensor:
    """Solid cone along z, apex at z = +height/2, base disc of `radius` at z = -height/2 (IQ's exact cone).

    In the (radial, axial) half-plane with the apex at the origin, w = (|p_xy|, p_z - height/2) and the base rim
    is q = (radius, -height). The distance is the smaller of the distances to the slanted segment [0, q] and to
    the base segment {(s, -height): 0 <= s <= radius}; the sign says whether w is inside both half-planes.
    """
    wr, wz = _length2(x, y), z - height / 2
    qr, qz = radius, -height
    # closest point on the slanted segment: q * clamp(<w, q> / <q, q>, 0, 1)
    s = ((wr * qr + wz * qz) / (qr * qr + qz * qz)).clamp(0.0, 1.0)
    ar, az = wr - qr * s, wz - qz * s
    # closest point on the base segment: (q_r * clamp(w_r / q_r, 0, 1), q_z)
    br, bz = wr - qr * (wr / qr).clamp(0.0, 1.0), wz - qz
    distance = torch.sqrt(torch.minimum(ar * ar + az * az, br * br + bz * bz))
    # k = sign(q_z) = -1; inside iff both k (w_r q_z - w_z q_r) < 0 and k (w_z - q_z) < 0
    side = torch.maximum(-(wr * qz - wz * qr), -(wz - qz))
    return distance * side.sign()


def sdf_torus(
    x: Tensor, y: Tensor, z: Tensor, major_radius: float = TORUS_MAJOR_RADIUS, minor_radius: float = TORUS_MINOR_RADIUS
) -> Tensor:
    """Torus in the xy-plane: |(|p_xy| - R, p_z)| - r."""
    return _length2(_length2(x, y) - major_radius, z) - minor_radius


SDF_FUNCTIONS = (sdf_sphere, sdf_box, sdf_capped_cylinder, sdf_cone, sdf_torus)
"""One SDF per entry of `SHAPES`, same order; each takes the x, y, z coordinate tensors (any equal shapes)."""


def shape_id(name: str) -> int:
    """The index of shape `name` in `SHAPES`, or a ValueError naming the valid shapes."""
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; valid shapes: {', '.join(SHAPES)}")
    return SHAPES.index(name)


def sdf_grouped(counts: list[int], x: Tensor, y: Tensor, z: Tensor) -> Tensor:
    """SDF of points laid out as `counts[s]` consecutive points of shape `s`, for every shape in `SHAPES` order.

    The renderer sorts its rays by shape once and calls this every sphere-tracing step: one slice per shape, no
    gather. Coordinates are separate contiguous 1-D tensors (structure of arrays), which is several times faster
    on CPU than reducing over a trailing dimension of 3.
    """
    parts = [
        fn(xs, ys, zs)
        for fn, xs, ys, zs in zip(SDF_FUNCTIONS, x.split(counts), y.split(counts), z.split(counts))
        if xs.numel()
    ]
    return torch.cat(parts) if parts else x.new_empty(0)


def sdf(shape_ids: Int[Tensor, " B"], points: Float[Tensor, "B N 3"]) -> Float[Tensor, "B N"]:
    """Signed distance of each point to the shape of its batch element (negative inside)."""
    if shape_ids.ndim != 1 or points.ndim != 3 or points.shape[0] != shape_ids.shape[0] or points.shape[-1] != 3:
        raise ValueError(
            f"sdf expects shape_ids [B] and points [B, N, 3], got {tuple(shape_ids.shape)} and {tuple(points.shape)}"
        )
    if ((shape_ids < 0) | (shape_ids >= len(SHAPES))).any():
        raise ValueError(f"shape ids must be in [0, {len(SHAPES)}) for {SHAPES}, got {shape_ids.tolist()}")
    out = points.new_empty(points.shape[:2])
    for index, fn in enumerate(SDF_FUNCTIONS):
        mask = shape_ids == index
        if mask.any():
            out[mask] = fn(*points[mask].unbind(-1))
    return out


def inside_mask(shape_ids: Int[Tensor, " B"], points: Float[Tensor, "B N 3"]) -> Bool[Tensor, "B N"]:
    """Whether each point lies inside (or on) its shape."""
    return sdf(shape_ids, points) <= 0


def occupancy(shape_ids: Int[Tensor, " B"], points: Float[Tensor, "B N 3"], sharpness: float = 0.0) -> Tensor:
    """Occupancy in [0, 1]: the hard inside mask as float when `sharpness` is 0, else sigmoid(-sharpness * sdf)."""
    distance = sdf(shape_ids, points)
    if sharpness <= 0:
        return (distance <= 0).to(points.dtype)
    return torch.sigmoid(-sharpness * distance)


def analytic_volume(shape_name: str) -> float:
    """The exact volume of a shape, for checking meshes and occupancy grids."""
    shape_id(shape_name)
    if shape_name == "sphere":
        return 4.0 / 3.0 * math.pi * SPHERE_RADIUS**3
    if shape_name == "cube":
        return (2 * CUBE_HALF_SIZE) ** 3
    if shape_name == "cylinder":
        return math.pi * CYLINDER_RADIUS**2 * 2 * CYLINDER_HALF_HEIGHT
    if shape_name == "cone":
        return math.pi * CONE_RADIUS**2 * CONE_HEIGHT / 3.0
    return 2.0 * math.pi**2 * TORUS_MAJOR_RADIUS * TORUS_MINOR_RADIUS**2
