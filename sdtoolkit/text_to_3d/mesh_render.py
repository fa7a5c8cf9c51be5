"""Renders of an exported mesh with the shapes world's own cameras and shading, so the shapes evaluator can judge the
mesh the user downloads (not the NeRF it came from).

A small vectorised ray caster: each triangle is projected to the image, every (triangle, pixel) pair inside the
triangle's pixel bounding box is intersected with that pixel's ray (Möller & Trumbore 1997), and the nearest hit per
pixel wins. Shading is the data renderer's (`sdtoolkit.data.render.lambert`: albedo x (ambient + diffuse n.l), the
light fixed in the world frame), the albedo is the interpolated vertex colour, faces are two-sided, the background
white, and `supersample`^2 rays per pixel are averaged, as `sdtoolkit.data.render.render` does.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sdtoolkit.data.cameras import Cameras
from sdtoolkit.data.render import lambert


def _pairs(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """All (face, row, col) with row in [lo_r, hi_r] and col in [lo_c, hi_c] per face (inclusive, int64)."""
    n_rows, n_cols = (hi[:, 0] - lo[:, 0] + 1).clamp_min(0), (hi[:, 1] - lo[:, 1] + 1).clamp_min(0)
    counts = n_rows * n_cols
    face = torch.repeat_interleave(torch.arange(len(lo)), counts)
    offset = torch.arange(int(counts.sum())) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    cols = n_cols[face].clamp_min(1)
    return face, lo[face, 0] + offset // cols, lo[face, 1] + offset % cols


@torch.no_grad()
def render_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    vertex_colours: np.ndarray,
    cameras: Cameras,
    resolution: int = 64,
    supersample: int = 2,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> Tensor:
    """`[B, 3, resolution, resolution]` images in [0, 1] of the mesh (vertices `[V, 3]` world, faces `[F, 3]`,
    vertex colours `[V, 3]` in [0, 1]) from every camera."""
    size = resolution * supersample
    v = torch.as_tensor(np.asarray(vertices), dtype=torch.float64)
    f = torch.as_tensor(np.asarray(faces), dtype=torch.int64)
    colours = torch.as_tensor(np.asarray(vertex_colours), dtype=torch.float64)
    tri = v[f]  # [F, 3, 3]
    edge1, edge2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    normals = torch.linalg.cross(edge1, edge2, dim=-1)
    normals = normals / normals.norm(dim=-1, keepdim=True).clamp_min(1e-20)
    c2w = cameras.c2w().double()
    tan_half = torch.tan(torch.deg2rad(cameras.fov_deg.double()) / 2)
    origins_all, directions_all = cameras.generate_rays(size, size)
    images = []
    for b in range(len(cameras)):
        origin, directions = origins_all[b, 0, 0].double(), directions_all[b].double().reshape(-1, 3)
        # project the vertices: camera space (x, y, z), z < 0 in front; pixel centres as in Cameras.generate_rays
        cam = (v - c2w[b, :3, 3]) @ c2w[b, :3, :3]
        depth = (-cam[:, 2]).clamp_min(1e-9)
        col = (cam[:, 0] / depth / tan_half[b] + 1) / 2 * size - 0.5
        row = (-cam[:, 1] / depth / tan_half[b] + 1) / 2 * size - 0.5
        pix = torch.stack([row, col], -1)[f]  # [F, 3, 2]
        in_front = (cam[f][:, :, 2] < 0).all(1)
        lo = pix.amin(1).floor().clamp(0, size - 1).long()
        hi = pix.amax(1).ceil().clamp(0, size - 1).long()
        hi[~in_front] = lo[~in_front] - 1  # no pairs for faces behind the camera
        face, r, c = _pairs(lo, hi)
        ray = r * size + c
        d = directions[ray]
        # Möller-Trumbore: origin + t d = a + u e1 + w e2
        p = torch.linalg.cross(d, edge2[face], dim=-1)
        det = (edge1[face] * p).sum(-1)
        ok = det.abs() > 1e-12
        inv = 1.0 / torch.where(ok, det, torch.ones_like(det))
        s = origin - tri[face, 0]
        u = (s * p).sum(-1) * inv
        q = torch.linalg.cross(s, edge1[face], dim=-1)
        w = (d * q).sum(-1) * inv
        t = (edge2[face] * q).sum(-1) * inv
        hit = ok & (u >= 0) & (w >= 0) & (u + w <= 1) & (t > 0)
        face, ray, u, w, t = face[hit], ray[hit], u[hit], w[hit], t[hit]
        nearest = torch.full((size * size,), float("inf"), dtype=torch.float64)
        nearest.scatter_reduce_(0, ray, t, reduce="amin")
        win = t == nearest[ray]
        face, ray, u, w = face[win], ray[win], u[win], w[win]
        image = torch.tensor(background, dtype=torch.float64).repeat(size * size, 1)
        albedo = (
            (1 - u - w)[:, None] * colours[f[face, 0]]
            + u[:, None] * colours[f[face, 1]]
            + w[:, None] * colours[f[face, 2]]
        )
        n = normals[face]
        n = torch.where(((n * directions[ray]).sum(-1) > 0)[:, None], -n, n)  # two-sided: face the camera
        image[ray] = lambert(albedo, n.T)
        images.append(image.reshape(size, size, 3).permute(2, 0, 1))
    out = torch.stack(images).float()
    out = F.avg_pool2d(out, supersample) if supersample > 1 else out
    return out.clamp(0, 1).contiguous()
