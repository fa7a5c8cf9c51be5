"""Which view words the renderer can tell apart, per shape, derived from renders (not hand-written).

Every prompt names one of DreamFusion's view words (front, side, back, overhead), but for many shapes some of those
views give the same picture: a sphere looks the same from every direction, a cylinder the same from the front and
from the side. Scoring a view between two such words measures noise. This module derives, for each shape, the
classes of views that renders can distinguish, and `Evaluator.report` scores a view as right when the predicted
view falls in the prompt's class.

Derivation (`derive_view_classes`): for each shape and view word, render `num` cameras drawn from the dataset's own
camera distribution restricted to that view (azimuth uniform in the word's sector, elevation uniform in the
dataset's ordinary or overhead range), as colour-free shading maps (under Lambert shading a render is albedo x
shading, so dividing the albedo out is exact and colour cannot tell views apart). Two views a and b are
indistinguishable when renders of one are as close to renders of the other as to each other: the
cross-neighbour rate (the fraction of renders whose nearest neighbour, among all other renders of a and b, is of
the other view; ties count as the other view) is about 1/2 for identical distributions and near 0 for disjoint
ones. Pairs with a rate at or above `MERGE_RATE` are merged, transitively.

Two cues, one per question:

- `"geometry"` (the headline): shading by a light at the camera (|n . v|), so only the object's shape and pose
  relative to the camera show, what a viewer judges when asked "is this a side view?". Derived result: every
  shape symmetric about z (sphere, cylinder, cone, torus) and the cube (4-fold symmetric) looks the same from
  the front, side and back; overhead differs for all but the sphere, which has one class.
- `"lit"`: the renderer's own world-fixed light (`sdtoolkit.data.render`), which the shipped evaluator's view head
  also reads. Measured with 128 renders per view: every pair of views has a cross-neighbour rate below 0.12 except
  the cube's side and back (0.21 and 0.30 for two seeds: its side view from azimuth -90 shows the same unlit
  faces as its back view), which sits at the merge threshold, so lit classes depend on the sample; scoring uses
  the geometry cue, and the view head's raw 4-way answer is reported beside it.
"""

from __future__ import annotations

import functools

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sdtoolkit.data.cameras import (
    BACK_THRESHOLD_DEG,
    DEFAULT_DISTANCE,
    DEFAULT_FOV_DEG,
    FRONT_THRESHOLD_DEG,
    Cameras,
    view_word,
    wrap_azimuth_deg,
)
from sdtoolkit.data.dataset import ELEVATION_RANGE, OVERHEAD_ELEVATION_RANGE
from sdtoolkit.data.render import AMBIENT, DIFFUSE, light_direction, sdf_normals, sphere_trace
from sdtoolkit.data.shapes import SHAPES, VIEWS

CUES = ("geometry", "lit")
"""Shading cues `derive_view_classes` can compare renders under (see the module docstring)."""
MERGE_RATE = 0.25
"""Views whose cross-neighbour rate reaches this (halfway between disjoint, 0, and identical, 1/2) are merged."""
DERIVATION_NUM = 32
"""Default cameras per (shape, view) in the derivation."""
DERIVATION_RESOLUTION = 32
"""Default side of the shading maps in the derivation, in pixels."""


def view_cameras(view: str, num: int, generator: torch.Generator) -> Cameras:
    """`num` cameras of the dataset's distribution whose DreamFusion view word is `view`.

    Azimuth is uniform in the word's sector (side: either side, equally often); elevation is uniform in the
    dataset's `OVERHEAD_ELEVATION_RANGE` for "overhead", else in its `ELEVATION_RANGE`.
    """
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; valid views: {', '.join(VIEWS)}")
    u = torch.rand(3, num, generator=generator, dtype=torch.float64)
    if view == "overhead":
        azimuth = -180.0 + 360.0 * u[0]
        low, high = OVERHEAD_ELEVATION_RANGE
    else:
        sectors = {
            "front": (-FRONT_THRESHOLD_DEG, FRONT_THRESHOLD_DEG),
            "side": (FRONT_THRESHOLD_DEG, 180.0 - BACK_THRESHOLD_DEG),
            "back": (180.0 - BACK_THRESHOLD_DEG, 180.0 + BACK_THRESHOLD_DEG),
        }
        start, end = sectors[view]
        azimuth = start + (end - start) * u[0]
        if view == "side":
            azimuth = torch.where(u[2] < 0.5, azimuth, -azimuth)
        low, high = ELEVATION_RANGE
    elevation = low + (high - low) * u[1]
    azimuth = wrap_azimuth_deg(azimuth)
    assert all(word == view for word in view_word(azimuth, elevation))
    full = torch.ones(num)
    return Cameras(azimuth.float(), elevation.float(), DEFAULT_DISTANCE * full, DEFAULT_FOV_DEG * full)


@torch.no_grad()
def shading_maps(shape: str, cameras: Cameras, resolution: int, cue: str) -> Float[Tensor, "B P"]:
    """Colour-free shading of `shape` seen by each camera, flattened: 0 on the background, on the object
    `AMBIENT + DIFFUSE max(0, n . l)` (the renderer's world-fixed light, `cue="lit"`) or |n . v| (a light at the
    camera, `cue="geometry"`). One ray per pixel centre, the renderer's own sphere tracing and normals."""
    if cue not in CUES:
        raise ValueError(f"unknown cue {cue!r}; valid cues: {', '.join(CUES)}")
    shape_ids = torch.full((len(cameras),), SHAPES.index(shape))
    trace = sphere_trace(shape_ids, cameras, resolution)
    normals = sdf_normals(trace.counts, trace.points)  # [3, K]
    if cue == "geometry":
        _, directions = cameras.generate_rays(resolution, resolution)
        shade = (normals.T * directions.reshape(-1, 3)[trace.hit_index]).sum(-1).abs()
    else:
        shade = AMBIENT + DIFFUSE * (light_direction(normals.dtype) @ normals).clamp_min(0)
    out = torch.zeros(len(cameras) * resolution * resolution)
    out[trace.hit_index] = shade
    return out.reshape(len(cameras), -1)


def cross_neighbour_rate(a: Float[Tensor, "N P"], b: Float[Tensor, "M P"]) -> float:
    """The fraction of the renders of a and b whose nearest neighbour (Euclidean, among all other renders of both)
    belongs to the other set; a tie counts as the other set. About 1/2 when a and b are drawn from one distribution,
    near 0 when they do not overlap."""
    d_aa, d_bb, d_ab = torch.cdist(a, a), torch.cdist(b, b), torch.cdist(a, b)
    d_aa.fill_diagonal_(float("inf"))
    d_bb.fill_diagonal_(float("inf"))
    cross_a = d_ab.min(1).values <= d_aa.min(1).values
    cross_b = d_ab.min(0).values <= d_bb.min(1).values
    return float(torch.cat([cross_a, cross_b]).double().mean())


def merge_classes(views: tuple[str, ...], rates: dict[tuple[str, str], float], threshold: float) -> list[tuple]:
    """Classes (tuples of views in `views` order) of the transitive closure of "rate >= threshold"."""
    parent = {v: v for v in views}

    def root(v: str) -> str:
        while parent[v] != v:
            v = parent[v]
        return v

    for (a, b), rate in rates.items():
        if rate >= threshold:
            parent[root(b)] = root(a)
    classes: dict[str, list[str]] = {}
    for v in views:
        classes.setdefault(root(v), []).append(v)
    return [tuple(members) for members in classes.values()]


def derive_view_classes(
    cue: str = "geometry",
    num: int = DERIVATION_NUM,
    resolution: int = DERIVATION_RESOLUTION,
    seed: int = 0,
    threshold: float = MERGE_RATE,
) -> dict[str, dict]:
    """Per shape: {"classes": the distinguishable view classes (tuples of view words), "rates": the cross-neighbour
    rate of every pair of views}, from `num` renders per view (see the module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    result = {}
    for shape in SHAPES:
        maps = {view: shading_maps(shape, view_cameras(view, num, generator), resolution, cue) for view in VIEWS}
        rates = {(a, b): cross_neighbour_rate(maps[a], maps[b]) for i, a in enumerate(VIEWS) for b in VIEWS[i + 1 :]}
        result[shape] = {"classes": merge_classes(VIEWS, rates, threshold), "rates": rates}
    return result


@functools.lru_cache(maxsize=8)
def view_classes(cue: str = "geometry") -> tuple[tuple[tuple[str, ...], ...], ...]:
    """The derived view classes of every shape (in `SHAPES` order) at the default derivation settings, computed
    once per process (about a second)."""
    derived = derive_view_classes(cue)
    return tuple(tuple(derived[shape]["classes"]) for shape in SHAPES)


def view_class_table(cue: str = "geometry") -> Int[Tensor, "S V"]:
    """table[shape id, view id] = the index of that view's class among the shape's classes (`view_classes`)."""
    table = torch.empty(len(SHAPES), len(VIEWS), dtype=torch.long)
    for s, classes in enumerate(view_classes(cue)):
        for c, members in enumerate(classes):
            for view in members:
                table[s, VIEWS.index(view)] = c
    return table


def num_view_classes(cue: str = "geometry") -> Int[Tensor, " S"]:
    """How many distinguishable view classes each shape has (1: its view cannot be scored)."""
    return torch.tensor([len(classes) for classes in view_classes(cue)])
