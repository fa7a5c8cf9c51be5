"""Exact geometric measures of an exported mesh against the true primitive of the shapes world.

The prompt fixes the shape and colour but neither the yaw, the scale nor the exact position of the asset, so the
mesh is first aligned to the primitive by a similarity transform restricted to those (`align_to_primitive`: a
yaw grid search with ICP refinement, Umeyama's closed form restricted to rotations about z). Then:

- `chamfer`: the symmetric Chamfer distance (mean nearest-neighbour distance, averaged over both directions) of
  area-uniform surface samples, as a fraction of the primitive's bounding-box diagonal;
- `volume_iou`: volumetric IoU of the solid mesh and the solid primitive on a regular grid (the primitive's inside
  test is its exact SDF, the mesh's is ray parity along z, so the primitive's own mesh scores 1 up to its facets);
- `components`: the number of connected pieces and the share of the surface area in the largest;
- `watertight`, `boundary_edges`: whether the surface is closed, and how many edges border a hole;
- `normal_consistency`: mean |n_mesh · n_true| between nearest surface samples, both ways (Mescheder et al.
  2019, "Occupancy Networks", Sec. 4);
- `colour_accuracy`: the share of the surface whose vertex colour is nearest to the prompt's colour in the
  palette of `sdtoolkit.data.shapes.COLOURS`.

Everything is deterministic for a given `seed`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from sdtoolkit.data.shapes import BOUNDING_RADIUS, COLOUR_NAMES, COLOURS, SDF_FUNCTIONS, shape_id

PRIMITIVE_RESOLUTION = 128
"""Grid size of the marching-cubes mesh of a primitive's exact SDF (cell 1.6 / 127 ≈ 0.013 units)."""


@dataclass
class Similarity:
    """x -> scale * R_z(yaw) x + translation: how a mesh is placed onto the primitive."""

    scale: float
    yaw: float
    """Radians about +z."""
    translation: tuple[float, float, float]

    def apply(self, points: np.ndarray) -> np.ndarray:
        return self.scale * points @ _rot_z(self.yaw).T + np.asarray(self.translation)

    def invert(self, points: np.ndarray) -> np.ndarray:
        return (points - np.asarray(self.translation)) @ _rot_z(self.yaw) / self.scale


@dataclass
class MeshScores:
    """The geometric scores of one mesh against one primitive (see the module docstring)."""

    shape: str
    chamfer: float
    volume_iou: float
    components: int
    largest_component_share: float
    watertight: bool
    boundary_edges: int
    normal_consistency: float
    colour_accuracy: float | None
    alignment: Similarity

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def primitive_sdf(shape: str, points: np.ndarray) -> np.ndarray:
    """The exact signed distance of `points` `[N, 3]` to `shape` (negative inside)."""
    fn = SDF_FUNCTIONS[shape_id(shape)]
    p = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float64))
    return fn(p[:, 0], p[:, 1], p[:, 2]).numpy()


@functools.lru_cache(maxsize=16)
def primitive_mesh(shape: str, resolution: int = PRIMITIVE_RESOLUTION):
    """A `trimesh.Trimesh` of the primitive: marching cubes of its exact SDF on a grid over the bounding cube."""
    import mcubes
    import trimesh

    bound = BOUNDING_RADIUS + 0.05
    axis = np.linspace(-bound, bound, resolution)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    volume = -primitive_sdf(shape, grid).reshape(resolution, resolution, resolution)
    vertices, faces = mcubes.marching_cubes(np.pad(volume, 1, constant_values=-1.0), 0.0)
    vertices = (vertices - 1) * (2 * bound / (resolution - 1)) - bound
    mesh = trimesh.Trimesh(vertices, faces, process=True)
    if mesh.volume < 0:
        mesh.invert()
    return mesh


def primitive_diagonal(shape: str) -> float:
    """The length of the primitive's axis-aligned bounding-box diagonal."""
    return float(np.linalg.norm(primitive_mesh(shape).extents))


def sample_surface(mesh, count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`count` area-uniform surface points of `mesh` with their face normals and face indices (seeded)."""
    rng = np.random.default_rng(seed)
    areas = mesh.area_faces
    faces = rng.choice(len(areas), size=count, p=areas / areas.sum())
    u, v = rng.random(count), rng.random(count)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    tri = mesh.triangles[faces]
    points = tri[:, 0] + u[:, None] * (tri[:, 1] - tri[:, 0]) + v[:, None] * (tri[:, 2] - tri[:, 0])
    return points, mesh.face_normals[faces], faces


def _yaw_umeyama(p: np.ndarray, q: np.ndarray) -> Similarity:
    """argmin over (s, yaw, t) of sum |s R_z(yaw) p_i + t - q_i|^2 (Umeyama 1991 restricted to rotations about z)."""
    p_mean, q_mean = p.mean(0), q.mean(0)
    pc, qc = p - p_mean, q - q_mean
    yaw = math.atan2(
        np.sum(pc[:, 0] * qc[:, 1] - pc[:, 1] * qc[:, 0]), np.sum(pc[:, 0] * qc[:, 0] + pc[:, 1] * qc[:, 1])
    )
    rotated = pc @ _rot_z(yaw).T
    scale = float(np.sum(rotated * qc) / max(np.sum(pc * pc), 1e-12))
    translation = q_mean - scale * _rot_z(yaw) @ p_mean
    return Similarity(scale, yaw, tuple(float(x) for x in translation))


def align_to_primitive(mesh, shape: str, samples: int = 2000, yaw_steps: int = 36, iterations: int = 8, seed: int = 0):
    """The similarity (scale, yaw about z, translation) that best places `mesh` on the primitive `shape`: every
    start yaw of a grid is refined by ICP (nearest neighbours mesh -> primitive, then the closed form), and the
    start with the smallest symmetric Chamfer distance wins."""
    from scipy.spatial import cKDTree

    target = sample_surface(primitive_mesh(shape), samples, seed + 1)[0]
    source = sample_surface(mesh, samples, seed)[0]
    target_tree = cKDTree(target)
    p_centred = source - source.mean(0)
    scale0 = math.sqrt(
        np.mean(np.sum((target - target.mean(0)) ** 2, 1)) / max(np.mean(np.sum(p_centred**2, 1)), 1e-12)
    )
    best, best_cost = None, math.inf
    for k in range(yaw_steps):
        yaw = 2 * math.pi * k / yaw_steps
        transform = Similarity(scale0, yaw, tuple(target.mean(0) - scale0 * _rot_z(yaw) @ source.mean(0)))
        for _ in range(iterations):
            moved = transform.apply(source)
            _, index = target_tree.query(moved)
            transform = _yaw_umeyama(source, target[index])
        moved = transform.apply(source)
        cost = target_tree.query(moved)[0].mean() + cKDTree(moved).query(target)[0].mean()
        if cost < best_cost:
            best, best_cost = transform, cost
    return best


def inside_grid(triangles: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Whether each cell centre of the grid `axis` x `axis` x `axis` (indexing ij) lies inside the triangle soup
    `triangles` `[F, 3, 3]`, by the parity of its crossings along a ray in +z (one ray per (x, y) column; exact for
    closed meshes, and an open mesh counts only what its surfaces enclose along z)."""
    n = len(axis)
    xy_jitter = np.array([1.234567e-7, 2.345678e-7])  # keep the rays off edges and vertices shared by two faces
    tri = triangles.astype(np.float64)
    tri_xy = tri[:, :, :2] - xy_jitter
    lo, hi = tri_xy.min(1), tri_xy.max(1)
    i0, i1 = np.searchsorted(axis, lo[:, 0]), np.searchsorted(axis, hi[:, 0], side="right")
    j0, j1 = np.searchsorted(axis, lo[:, 1]), np.searchsorted(axis, hi[:, 1], side="right")
    ni, nj = np.maximum(i1 - i0, 0), np.maximum(j1 - j0, 0)
    counts = ni * nj
    face = np.repeat(np.arange(len(tri)), counts)
    offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    i = i0[face] + offset // np.maximum(nj[face], 1)
    j = j0[face] + offset % np.maximum(nj[face], 1)
    a, b, c = tri_xy[face, 0], tri_xy[face, 1], tri_xy[face, 2]
    px, py = axis[i], axis[j]
    det = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])
    nonzero = np.abs(det) > 1e-18
    det = np.where(nonzero, det, 1.0)
    w1 = ((px - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (py - a[:, 1])) / det
    w2 = ((b[:, 0] - a[:, 0]) * (py - a[:, 1]) - (px - a[:, 0]) * (b[:, 1] - a[:, 1])) / det
    hit = nonzero & (w1 >= 0) & (w2 >= 0) & (w1 + w2 <= 1)
    z = tri[face, 0, 2] + w1 * (tri[face, 1, 2] - tri[face, 0, 2]) + w2 * (tri[face, 2, 2] - tri[face, 0, 2])
    # a crossing at height z adds one to every cell centre of its column below z: a difference array along k
    diff = np.zeros((n, n, n + 1), dtype=np.int64)
    np.add.at(diff, (i[hit], j[hit], np.zeros(hit.sum(), dtype=np.int64)), 1)
    np.add.at(diff, (i[hit], j[hit], np.searchsorted(axis, z[hit])), -1)
    return np.cumsum(diff, axis=2)[:, :, :n] % 2 == 1


def volume_iou(mesh, shape: str, transform: Similarity, resolution: int = 64) -> float:
    """IoU of the solid primitive and the solid aligned mesh on a `resolution`^3 grid of cell centres over the
    union of both bounding boxes."""
    triangles = transform.apply(mesh.triangles.reshape(-1, 3)).reshape(-1, 3, 3)
    bound = max(BOUNDING_RADIUS, float(np.abs(triangles).max())) * 1.02
    cell = 2 * bound / resolution
    axis = -bound + cell * (np.arange(resolution) + 0.5)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    truth = primitive_sdf(shape, grid).reshape(resolution, resolution, resolution) < 0
    ours = inside_grid(triangles, axis)
    union = np.count_nonzero(truth | ours)
    return float(np.count_nonzero(truth & ours) / union) if union else 0.0


def colour_accuracy(mesh, colour: str, seed: int = 0, samples: int = 4000) -> float | None:
    """The share of the surface (area-uniform samples, vertex colours interpolated at the nearest vertex of the
    sampled face) whose colour is nearest to `colour` among the palette. None for a mesh without vertex colours."""
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; valid colours: {', '.join(COLOUR_NAMES)}")
    colours = getattr(mesh.visual, "vertex_colors", None)
    if colours is None or len(colours) != len(mesh.vertices) or mesh.visual.kind != "vertex":
        return None
    _, _, faces = sample_surface(mesh, samples, seed)
    rgb = colours[mesh.faces[faces]][:, :, :3].astype(np.float64).mean(1) / 255.0
    palette = np.array([COLOURS[name] for name in COLOUR_NAMES])
    nearest = np.argmin(((rgb[:, None, :] - palette[None]) ** 2).sum(-1), axis=1)
    return float(np.mean(nearest == COLOUR_NAMES.index(colour)))


def mesh_scores(mesh, shape: str, colour: str | None = None, seed: int = 0, samples: int = 20000) -> MeshScores:
    """All geometric scores of `mesh` against the primitive `shape` (and its vertex colours against `colour`)."""
    from scipy.spatial import cKDTree

    shape_id(shape)
    if len(mesh.faces) == 0:
        raise ValueError("the mesh has no faces")
    transform = align_to_primitive(mesh, shape, seed=seed)
    truth = primitive_mesh(shape)
    p, pn, _ = sample_surface(mesh, samples, seed)
    q, qn, _ = sample_surface(truth, samples, seed + 1)
    p = transform.apply(p)
    pn = pn @ _rot_z(transform.yaw).T
    dist_pq, index_pq = cKDTree(q).query(p)
    dist_qp, index_qp = cKDTree(p).query(q)
    chamfer = 0.5 * (dist_pq.mean() + dist_qp.mean()) / primitive_diagonal(shape)
    normals = 0.5 * (np.abs(np.sum(pn * qn[index_pq], 1)).mean() + np.abs(np.sum(qn * pn[index_qp], 1)).mean())
    pieces = mesh.split(only_watertight=False)
    areas = np.array([piece.area for piece in pieces]) if len(pieces) else np.array([mesh.area])
    edges = mesh.edges_sorted
    _, edge_counts = np.unique(edges, axis=0, return_counts=True)
    return MeshScores(
        shape=shape,
        chamfer=float(chamfer),
        volume_iou=volume_iou(mesh, shape, transform),
        components=max(len(pieces), 1),
        largest_component_share=float(areas.max() / areas.sum()),
        watertight=bool(mesh.is_watertight),
        boundary_edges=int(np.count_nonzero(edge_counts == 1)),
        normal_consistency=float(normals),
        colour_accuracy=None if colour is None else colour_accuracy(mesh, colour, seed),
        alignment=transform,
    )


# ----------------------------------------------------------------------------------------------------------------
# the whole evaluation of an exported mesh: geometry and the 2D evaluator on renders of the mesh itself
# ----------------------------------------------------------------------------------------------------------------

EVAL_VIEWS = 8
"""Azimuths of the mesh-render evaluation (0, 45, ..., 315 degrees), at `EVAL_ELEVATION`."""
EVAL_ELEVATION = 15.0
"""Elevation of the evaluation cameras (degrees); distance and fov are the shapes world's defaults."""


def vertex_colours(mesh) -> np.ndarray:
    """The mesh's vertex colours in [0, 1] `[V, 3]` (mid grey when it has none)."""
    visual = mesh.visual
    if getattr(visual, "kind", None) == "vertex":
        return np.asarray(visual.vertex_colors)[:, :3].astype(np.float64) / 255.0
    return np.full((len(mesh.vertices), 3), 0.5)


def evaluate_mesh(mesh, prompt: str, evaluator=None, seed: int = 0, resolution: int = 64) -> dict:
    """Geometry (`mesh_scores`) and the shapes evaluator on `EVAL_VIEWS` renders of the aligned mesh, for an asset
    whose prompt is 'a <colour> <shape>'. `evaluator` None: the shipped one."""
    from sdtoolkit.data import parse_caption, turntable_cameras
    from sdtoolkit.data.shapes import SHAPES
    from sdtoolkit.text_to_3d.mesh_render import render_mesh

    shape, colour, _ = parse_caption(prompt)  # a clear ValueError for a prompt outside the shapes world
    scores = mesh_scores(mesh, shape, colour, seed=seed)
    if evaluator is None:
        from sdtoolkit.eval import Evaluator

        evaluator = Evaluator.load()
    cameras = turntable_cameras(EVAL_VIEWS, elevation_deg=EVAL_ELEVATION)
    images = render_mesh(scores.alignment.apply(mesh.vertices), mesh.faces, vertex_colours(mesh), cameras, resolution)
    predicted = evaluator.classify(images)
    shape_ok = predicted["shape"] == SHAPES.index(shape)
    colour_ok = predicted["colour"] == COLOUR_NAMES.index(colour)
    result = scores.to_dict()
    result.update(
        prompt=prompt,
        render_view_accuracy=float((shape_ok & colour_ok).float().mean()),
        render_shape_accuracy=float(shape_ok.float().mean()),
        render_colour_accuracy=float(colour_ok.float().mean()),
        predicted=[f"{COLOUR_NAMES[c]} {SHAPES[s]}" for s, c in zip(predicted["shape"], predicted["colour"])],
    )
    result["images"] = images
    return result


def split_by_boxes(mesh, layout) -> list:
    """Each layout object's part of a merged mesh: the faces whose centroid lies in its box (boxes are disjoint in
    a valid layout), as separate meshes in layout order (an empty mesh where a box holds nothing)."""
    centroids = mesh.triangles_center
    parts = []
    for obj in layout.objects:
        inside = np.all((centroids >= np.asarray(obj.box_min)) & (centroids <= np.asarray(obj.box_max)), axis=1)
        parts.append(mesh.submesh([np.flatnonzero(inside)], append=True) if inside.any() else None)
    return parts


def evaluate_layout_mesh(mesh, layout, evaluator=None, seed: int = 0) -> list[dict]:
    """`evaluate_mesh` for every layout object on its own part of the mesh (`split_by_boxes`); an object with no
    faces in its box gets `{"prompt": ..., "missing": True}`."""
    results = []
    for obj, part in zip(layout.objects, split_by_boxes(mesh, layout)):
        if part is None or len(part.faces) == 0:
            results.append({"prompt": obj.prompt, "missing": True})
        else:
            results.append({**evaluate_mesh(part, obj.prompt, evaluator, seed), "missing": False})
    return results


__all__ = [
    "MeshScores",
    "Similarity",
    "align_to_primitive",
    "colour_accuracy",
    "evaluate_layout_mesh",
    "evaluate_mesh",
    "inside_grid",
    "mesh_scores",
    "primitive_mesh",
    "primitive_sdf",
    "sample_surface",
    "split_by_boxes",
    "vertex_colours",
    "volume_iou",
]
