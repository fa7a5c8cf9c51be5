"""A signed-distance field's starting shape taken from a mesh (threestudio's implicit-sdf `shape_init: mesh:PATH`).

Magic3D-style coarse-to-fine in one command pair: a density run finds the topology (a torus's hole, a cone's apex),
its exported mesh becomes the signed distance an 'sdf' run starts from, instead of a sphere that the guidance would
have to carve. The distance is tabulated once on a grid over the field's cube and read by trilinear interpolation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

MESH_SUFFIXES = (".glb", ".obj", ".ply")
"""Mesh files `sdf_init` reads (what text-to-3D and image-to-3D export)."""


def mesh_sdf_grid(path: str | Path, bound: float, resolution: int = 64) -> Float[Tensor, "R R R"]:
    """Signed distance (negative inside) of the closed mesh at `path` at the centres of a `resolution`^3 grid over
    [-bound, bound]^3 (indexing ij: [x, y, z]), in world units. Inside = the parity of ray crossings along z
    (`mesh_metrics.inside_grid`); the distance is the Euclidean distance transform of the inside and outside cells,
    each minus half a cell (the surface lies between a cell and its neighbour), so its error is about one cell."""
    import trimesh

    from sdtoolkit.text_to_3d.mesh_metrics import inside_grid

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sdf_init mesh {str(path)!r} does not exist (give a .glb, .obj or .ply file)")
    mesh = trimesh.load(path, force="mesh")
    if len(mesh.faces) == 0:
        raise ValueError(f"sdf_init mesh {str(path)!r} has no faces")
    cell = 2 * bound / resolution
    axis = np.linspace(-bound + cell / 2, bound - cell / 2, resolution)
    inside = inside_grid(np.asarray(mesh.triangles), axis)
    if not inside.any():
        raise ValueError(f"sdf_init mesh {str(path)!r} encloses no cell of the field's cube [-{bound}, {bound}]^3")
    return occupancy_sdf_grid(inside, cell)


def occupancy_sdf_grid(inside: np.ndarray, cell: float) -> Float[Tensor, "R R R"]:
    """Signed distance (negative inside, world units) of a boolean cell-centred occupancy grid with cell side
    `cell`: the Euclidean distance transform of the inside and outside cells, each minus half a cell (the surface
    lies between a cell and its neighbour), so its error is about one cell."""
    from scipy.ndimage import distance_transform_edt

    inside = np.asarray(inside, dtype=bool)
    outside_distance = distance_transform_edt(~inside)  # in cells, 0 inside
    inside_distance = distance_transform_edt(inside)  # in cells, 0 outside
    sdf = np.where(inside, -(inside_distance - 0.5), outside_distance - 0.5) * cell
    return torch.from_numpy(sdf.astype(np.float32))


def sample_grid(grid: Float[Tensor, "R R R"], positions: Float[Tensor, "*bs 3"], bound: float) -> Tensor:
    """Trilinear interpolation of a cell-centred `[x, y, z]` grid over [-bound, bound]^3 at world `positions`
    (clamped to the border outside the cube)."""
    shape = positions.shape[:-1]
    coords = (positions.reshape(1, -1, 1, 1, 3) / bound).to(grid.dtype)
    # grid_sample's last coordinate indexes the input's first spatial axis: (x, y, z) -> (z, y, x)
    values = F.grid_sample(
        grid[None, None], coords.flip(-1), mode="bilinear", padding_mode="border", align_corners=False
    )
    return values.reshape(shape)
