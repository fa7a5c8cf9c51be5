"""Deterministic sphere-tracing renderer for the procedural shapes: Lambert-shaded RGB images and silhouettes.

Rays come from `Cameras.generate_rays`; each ray is clipped to the bounding sphere of the shapes, then marched
by the exact SDF (sphere tracing, Hart 1996) for at most `NUM_STEPS` steps, all rays of the batch at once, grouped
by shape; every `COMPACT_EVERY` steps the rays that converged or left the bounding sphere are set aside, so the
cost falls with the steps while the result stays deterministic. A ray hits when the SDF at its last point is below
`HIT_EPSILON`. Normals are central differences of the SDF. Shading is
Lambert with one directional light fixed in the WORLD frame plus an ambient term, so the shading pattern tells
the front of an object from its back. RGB images are anti-aliased by supersampling (2x2 by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from sdtoolkit.data.cameras import Cameras
from sdtoolkit.data.shapes import BOUNDING_RADIUS, COLOURS, SHAPES, sdf_grouped

LIGHT_AZIMUTH_DEG = 20.0
"""Direction towards the light: azimuth (world frame, same convention as the cameras)."""
LIGHT_ELEVATION_DEG = 45.0
"""Direction towards the light: elevation above the xy-plane."""
AMBIENT = 0.35
"""Ambient term: the albedo fraction every visible point receives."""
DIFFUSE = 0.65
"""Weight of the Lambert term max(0, n . l)."""
NUM_STEPS = 128
"""Most sphere-tracing steps per ray (fixed, so the result is deterministic; converged rays stop early)."""
HIT_EPSILON = 2e-3
"""A ray hits when the SDF at its last point is below this (world units; a 64-pixel frame is ~0.03 per pixel)."""
NORMAL_DELTA = 1e-3
"""Half step of the central differences that give the normals."""
CONVERGED_EPSILON = 1e-4
"""Rays whose SDF falls below this are set aside as converged (checked every `COMPACT_EVERY` steps)."""
COMPACT_EVERY = 6
"""How often (in steps) converged and escaped rays are removed from the working set."""


def light_direction(dtype=torch.float32, device=None) -> Float[Tensor, " 3"]:
    """Unit vector towards the light in world coordinates."""
    azimuth, elevation = math.radians(LIGHT_AZIMUTH_DEG), math.radians(LIGHT_ELEVATION_DEG)
    return torch.tensor(
        [math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth), math.sin(elevation)],
        dtype=dtype,
        device=device,
    )


@dataclass
class TraceResult:
    """Sphere-tracing result for the rays of a batch, flattened to B * P rays (P pixels per image)."""

    hit_index: Int[Tensor, " K"]
    """Flat indices (into B * P) of the rays that hit a surface, grouped by shape."""
    points: Float[Tensor, "3 K"]
    """The surface points those rays hit, as x, y, z rows."""
    counts: list[int]
    """How many of the `hit_index` rays belong to each shape, in `SHAPES` order."""


def ray_sphere_interval(
    origins: Float[Tensor, "R 3"], directions: Float[Tensor, "R 3"], radius: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Entry and exit distances of unit-direction rays through the sphere |x| = radius, and whether they cross it."""
    b = (origins * directions).sum(-1)
    c = (origins * origins).sum(-1) - radius**2
    discriminant = b * b - c
    root = discriminant.clamp_min(0).sqrt()
    t_near, t_far = (-b - root).clamp_min(0), -b + root
    return t_near, t_far, (discriminant > 0) & (t_far > 0)


def _counts(shape_of_ray: Tensor) -> list[int]:
    return torch.bincount(shape_of_ray, minlength=len(SHAPES)).tolist()


def sphere_trace(shape_ids: Int[Tensor, " B"], cameras: Cameras, size: int, num_steps: int = NUM_STEPS) -> TraceResult:
    """Marches one ray per pixel of `size` x `size` images through each camera's shape; returns the hits."""
    if len(cameras) != shape_ids.shape[0]:
        raise ValueError(f"got {shape_ids.shape[0]} shape ids but {len(cameras)} cameras")
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    if ((shape_ids < 0) | (shape_ids >= len(SHAPES))).any():
        raise ValueError(f"shape ids must be in [0, {len(SHAPES)}) for {SHAPES}, got {shape_ids.tolist()}")
    origins, directions = cameras.generate_rays(size, size)
    origins, directions = origins.reshape(-1, 3), directions.reshape(-1, 3)
    pixels = size * size
    t_near, t_far, crosses = ray_sphere_interval(origins, directions, BOUNDING_RADIUS)

    # 1. Keep the rays that cross the bounding sphere, grouped by shape so each SDF runs on one contiguous slice,
    #    with coordinates as separate rows (structure of arrays).
    ray = crosses.nonzero().squeeze(1)
    shape = shape_ids.to(ray.device)[ray // pixels]
    order = torch.sort(shape, stable=True).indices
    ray, shape = ray[order], shape[order]
    o, d = origins[ray].T.contiguous(), directions[ray].T.contiguous()
    t, t_max = t_near[ray], t_far[ray]
    done_rays, done_shapes, done_t, done_distance = [], [], [], []

    # 2. Sphere tracing: step by the exact SDF at most num_steps times, never past the bounding sphere. Every few
    #    steps, rays that converged or left the bounding sphere are set aside (their result no longer changes).
    counts = _counts(shape)
    for step in range(num_steps):
        distance = sdf_grouped(counts, *torch.addcmul(o, d, t[None]))
        if step == num_steps - 1 or step % COMPACT_EVERY == COMPACT_EVERY - 1:
            done = (distance.abs() < CONVERGED_EPSILON) | (t >= t_max) | (step == num_steps - 1)
            done_rays.append(ray[done]), done_shapes.append(shape[done])
            done_t.append(t[done]), done_distance.append(distance[done])
            keep = ~done
            ray, shape, o, d, t, t_max = ray[keep], shape[keep], o[:, keep], d[:, keep], t[keep], t_max[keep]
            distance = distance[keep]
            counts = _counts(shape)
        t = torch.minimum(t + distance, t_max)
    ray, shape = torch.cat(done_rays), torch.cat(done_shapes)
    t_final, distance_final = torch.cat(done_t), torch.cat(done_distance)

    # 3. A ray hits when the SDF at its last point is below HIT_EPSILON.
    hit = distance_final.abs() < HIT_EPSILON
    ray, shape, t_final = ray[hit], shape[hit], t_final[hit]
    order = torch.sort(shape, stable=True).indices
    ray, shape, t_final = ray[order], shape[order], t_final[order]
    points = torch.addcmul(origins[ray], directions[ray], t_final[:, None]).T.contiguous()
    return TraceResult(hit_index=ray, points=points, counts=_counts(shape))


def sdf_normals(counts: list[int], points: Float[Tensor, "3 K"]) -> Float[Tensor, "3 K"]:
    """Unit surface normals by central differences of the SDF: n ~ (f(p + h e_i) - f(p - h e_i))_i."""
    x, y, z = points
    h = NORMAL_DELTA
    gradient = torch.stack(
        [
            sdf_grouped(counts, x + h, y, z) - sdf_grouped(counts, x - h, y, z),
            sdf_grouped(counts, x, y + h, z) - sdf_grouped(counts, x, y - h, z),
            sdf_grouped(counts, x, y, z + h) - sdf_grouped(counts, x, y, z - h),
        ]
    )
    return gradient / gradient.norm(dim=0, keepdim=True).clamp_min(1e-12)


def lambert(albedo: Float[Tensor, "K 3"], normals: Float[Tensor, "3 K"]) -> Float[Tensor, "K 3"]:
    """Lambert shading with ambient: albedo * (AMBIENT + DIFFUSE * max(0, n . l))."""
    n_dot_l = (light_direction(normals.dtype, normals.device) @ normals).clamp_min(0)[:, None]
    return albedo * (AMBIENT + DIFFUSE * n_dot_l)


def colour_table(dtype=torch.float32, device=None) -> Float[Tensor, "C 3"]:
    """The albedo of every colour in `COLOURS` order."""
    return torch.tensor(list(COLOURS.values()), dtype=dtype, device=device)


@torch.no_grad()
def render(
    shape_ids: Int[Tensor, " B"],
    colour_ids: Int[Tensor, " B"],
    cameras: Cameras,
    resolution: int = 64,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    supersample: int = 2,
    num_steps: int = NUM_STEPS,
) -> Float[Tensor, "B 3 H W"]:
    """Renders one shaded shape per camera: RGB images in [0, 1], `supersample`^2 rays per pixel, averaged."""
    if ((colour_ids < 0) | (colour_ids >= len(COLOURS))).any():
        raise ValueError(f"colour ids must be in [0, {len(COLOURS)}) for {tuple(COLOURS)}, got {colour_ids.tolist()}")
    device = cameras.device
    size = resolution * supersample
    batch = len(cameras)
    trace = sphere_trace(shape_ids.to(device), cameras, size, num_steps)
    normals = sdf_normals(trace.counts, trace.points)
    albedo = colour_table(device=device)[colour_ids.to(device)[trace.hit_index // (size * size)]]
    image = torch.tensor(background, dtype=torch.float32, device=device).repeat(batch * size * size, 1)
    image[trace.hit_index] = lambert(albedo, normals)
    image = image.reshape(batch, size, size, 3).permute(0, 3, 1, 2)
    if supersample > 1:
        image = F.avg_pool2d(image, supersample)
    return image.clamp(0, 1).contiguous()


@torch.no_grad()
def render_silhouette(
    shape_ids: Int[Tensor, " B"], cameras: Cameras, resolution: int = 64, num_steps: int = NUM_STEPS
) -> Float[Tensor, "B 1 H W"]:
    """Binary silhouettes: 1 where the ray through the pixel centre hits the shape, else 0."""
    batch = len(cameras)
    trace = sphere_trace(shape_ids.to(cameras.device), cameras, resolution, num_steps)
    mask = torch.zeros(batch * resolution * resolution, device=cameras.device)
    mask[trace.hit_index] = 1.0
    return mask.reshape(batch, 1, resolution, resolution)
