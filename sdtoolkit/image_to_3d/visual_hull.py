"""The reference masks' visual hull as the signed-distance field's starting shape (`--nerf.field.sdf-init
visual-hull`).

A signed distance that starts as a sphere must carve away whatever the object lacks, and holes are the hardest:
the torus's hole stayed filled and was painted with the background's colour instead (benchmarks/RESULTS.md, issue
22's three-reference table: reference PSNR 21-24 dB on the tori). Shape from silhouettes gives a start whose
topology is right wherever a view sees through a hole: the visual hull (Laurentini, "The visual hull concept for
silhouette-based image understanding", TPAMI 1994) is the set of points whose projection falls inside the object's
mask in every view,

    H = { x : m_v(pi_v(x)) > 1/2 for every view v },

the largest shape consistent with the silhouettes; it contains the object (with exact cameras and masks), and a
hole seen through in one view is a tunnel in it. threestudio's and Magic123's image-to-3D start from a sphere.

Three things make it a start here rather than an answer: it is computed from the cameras as given (approximate
poses erode it, the pose refinement and the reference losses then grow the surface back, which is easy for a signed
distance, unlike carving a hole); a symmetric field's hull is taken over every view moved by the symmetry group
(`symmetry.symmetry_group`: the intersection of the moved hulls, so the start is symmetric as the field is); and a
point outside a view's frame counts as outside (the object is whole in every reference, as `inputs` expects).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from sdtoolkit.data.cameras import Cameras, cat_cameras
from sdtoolkit.image_to_3d.symmetry import symmetry_group, transform_cameras, transform_images
from sdtoolkit.nerf.fields import VISUAL_HULL
from sdtoolkit.nerf.sdf_init import occupancy_sdf_grid


def project_points(
    points: Float[Tensor, "N 3"], cameras: Cameras
) -> tuple[Float[Tensor, "B N 2"], Bool[Tensor, "B N"]]:
    """Pinhole projection of world `points` into every camera (`Cameras.generate_rays`' model): normalised image
    coordinates (u, v) in [-1, 1], u to the right and v downwards (row 0 at v = -1, grid_sample's convention), and
    whether each point is in front of the camera. A point on the ray of pixel (i, j) of an H x W image projects to
    u = (2 j + 1) / W - 1, v = (2 i + 1) / H - 1."""
    w2c = torch.linalg.inv(cameras.c2w().to(points.dtype))
    local = torch.einsum("bij,nj->bni", w2c[:, :3, :3], points) + w2c[:, None, :3, 3]  # camera frame
    depth = -local[..., 2]  # the camera looks down its -z
    tan_half_fov = torch.tan(torch.deg2rad(cameras.fov_deg.to(points.dtype)) / 2)[:, None]
    safe = depth.clamp_min(1e-8)
    u = local[..., 0] / safe / tan_half_fov
    v = -local[..., 1] / safe / tan_half_fov
    return torch.stack([u, v], dim=-1), depth > 1e-8


def grid_points(bound: float, resolution: int) -> Float[Tensor, "N 3"]:
    """The cell centres of a `resolution`^3 grid over [-bound, bound]^3, flattened in indexing ij ([x, y, z]): the
    grid of a mesh `sdf_init` (`sdtoolkit.nerf.sdf_init`) and of `visual_hull`."""
    cell = 2 * bound / resolution
    axis = torch.linspace(-bound + cell / 2, bound - cell / 2, resolution)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


@torch.no_grad()
def visual_hull(
    masks: Float[Tensor, "V 1 H W"], cameras: Cameras, bound: float, resolution: int = 64, threshold: float = 0.5
) -> Bool[Tensor, "R R R"]:
    """Whether each cell centre of a `resolution`^3 grid over [-bound, bound]^3 (indexing ij: [x, y, z]) lies in
    the visual hull of the square `masks` seen by `cameras` (one per mask): in front of every camera, inside every
    frame, and on a mask value (bilinear) above `threshold` in every view."""
    if len(masks) != len(cameras):
        raise ValueError(f"visual_hull: {len(masks)} masks but {len(cameras)} cameras")
    points = grid_points(bound, resolution)
    masks = masks.detach().float().cpu()
    cameras = Cameras(
        *(
            f.detach().float().cpu()
            for f in (cameras.azimuth_deg, cameras.elevation_deg, cameras.distance, cameras.fov_deg)
        )
    )
    inside = torch.ones(len(points), dtype=torch.bool)
    for view in range(len(cameras)):  # one view at a time: V x R^3 points at once would not fit a small machine
        uv, in_front = project_points(points, cameras[view])
        uv, in_front = uv[0], in_front[0]
        in_frame = in_front & (uv.abs() < 1).all(-1)
        value = F.grid_sample(masks[view : view + 1], uv.reshape(1, -1, 1, 2), mode="bilinear", align_corners=False)
        inside &= in_frame & (value.reshape(-1) > threshold)
    return inside.reshape(resolution, resolution, resolution)


def hull_sdf_grid(
    masks: Float[Tensor, "V 1 H W"], cameras: Cameras, bound: float, resolution: int = 64
) -> Float[Tensor, "R R R"]:
    """The signed distance (world units, negative inside) of the `visual_hull`, tabulated on the same grid as a mesh
    `sdf_init` (`sdtoolkit.nerf.sdf_init.sample_grid` reads it). An empty hull (masks and cameras that disagree
    everywhere) is refused: it would start the field with nothing."""
    inside = visual_hull(masks, cameras, bound, resolution)
    if not inside.any():
        raise ValueError(
            "sdf_init 'visual-hull': no point of the field's cube projects inside every reference mask; the "
            "cameras do not match the images (check the cameras file) or the object is not whole in every view"
        )
    return occupancy_sdf_grid(np.asarray(inside.numpy()), 2 * bound / resolution)


def moved_views(
    masks: Float[Tensor, "V 1 H W"], cameras: Cameras, planes: int, plane_azimuth_deg: float = 0.0
) -> tuple[Float[Tensor, "G*V 1 H W"], Cameras]:
    """Every view moved by every element of the symmetry group of `planes` mirror planes (identity first): the
    views whose hull is symmetric under the group."""
    group = symmetry_group(planes, plane_azimuth_deg)
    moved_masks = torch.cat([transform_images(masks, g) for g in group])
    return moved_masks, cat_cameras(*(transform_cameras(cameras, g) for g in group))


def reference_hull_grid(config, references) -> Float[Tensor, "R R R"]:
    """The start an image-to-3D run with `config` takes from its `references` (`ImageTo3DConfig`, `References`):
    the hull of the cameras as given, before any refinement, over every symmetry-moved view when the field is
    symmetric or the mirrored views are references (so the start is symmetric too), on the field's grid. Raises
    ValueError for an empty hull; the CLI calls it before the output folder is claimed (about 0.3 s at 64^3 with 24
    views on one CPU thread), the run again when it builds its field."""
    field = config.nerf.field
    references = references.resized(config.reference_resolution)
    masks, cameras = references.masks, references.cameras
    if config.symmetric_density or config.mirror_views:  # the references the run fits, mirrors included
        masks, cameras = moved_views(masks, cameras, config.symmetry_planes, config.symmetry_plane_azimuth)
    return hull_sdf_grid(masks, cameras, field.bound, field.sdf_init_resolution)


def uses_hull(config) -> bool:
    """Whether an image-to-3D `config` starts its signed distance from the references' hull."""
    return config.nerf.field.geometry == "sdf" and config.nerf.field.sdf_init == VISUAL_HULL


def start_from_hull(run) -> None:
    """Fills an image-to-3D run's field's `sdf_grid` with `reference_hull_grid`."""
    grid = run.nerf.field.sdf_grid
    grid.copy_(reference_hull_grid(run.config, run.references).to(grid))


__all__ = [
    "grid_points",
    "hull_sdf_grid",
    "moved_views",
    "project_points",
    "reference_hull_grid",
    "start_from_hull",
    "uses_hull",
    "visual_hull",
]
