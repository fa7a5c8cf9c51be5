"""Geometric scores of exported meshes against the true primitives, on analytic meshes with known answers."""

import math

import numpy as np
import pytest

trimesh = pytest.importorskip("trimesh")

from sdtoolkit.data.shapes import COLOURS, SHAPES  # noqa: E402
from sdtoolkit.text_to_3d.mesh_metrics import (  # noqa: E402
    Similarity,
    align_to_primitive,
    colour_accuracy,
    inside_grid,
    mesh_scores,
    primitive_mesh,
    volume_iou,
)


def cube(side=0.8):
    return trimesh.creation.box(extents=(side, side, side))


def test_perfect_cube_scores_perfectly():
    scores = mesh_scores(cube(), "cube")
    assert scores.volume_iou == 1.0
    assert scores.chamfer < 0.01  # the reference is marching cubes of the exact SDF: rounded edges, finite samples
    assert scores.components == 1 and scores.largest_component_share == 1.0
    assert scores.watertight and scores.boundary_edges == 0
    assert scores.normal_consistency > 0.98


def test_shifted_cube_scores_less_without_alignment_and_alignment_recovers_a_similarity():
    assert volume_iou(cube(), "cube", Similarity(1.0, 0.0, (0.1, 0.0, 0.0))) == pytest.approx(0.7 / 0.9, abs=0.02)
    moved = cube()
    moved.apply_scale(2.0)
    moved.apply_transform(trimesh.transformations.rotation_matrix(0.3, [0, 0, 1]))
    moved.apply_translation([0.5, 0.2, -0.1])
    transform = align_to_primitive(moved, "cube")
    assert transform.scale == pytest.approx(0.5, rel=0.01)
    # the cube's yaw is defined modulo 90 degrees
    assert (
        min(abs((transform.yaw + 0.3) % (math.pi / 2)), abs((transform.yaw + 0.3) % (math.pi / 2) - math.pi / 2))
        < 0.03
    )
    assert mesh_scores(moved, "cube").volume_iou > 0.97


def test_wrong_shape_scores_low():
    wrong = mesh_scores(trimesh.creation.icosphere(subdivisions=4, radius=0.5), "cube")
    right = mesh_scores(trimesh.creation.icosphere(subdivisions=4, radius=0.5), "sphere")
    assert right.volume_iou > 0.98 and right.chamfer < 0.01
    assert wrong.volume_iou < 0.9 and wrong.chamfer > 2 * right.chamfer


def test_two_pieces_count_as_two_and_an_open_mesh_has_boundary_edges():
    two = trimesh.util.concatenate([cube(), cube(0.2).apply_translation([1.0, 0, 0])])
    scores = mesh_scores(two, "cube")
    assert scores.components == 2
    assert scores.largest_component_share == pytest.approx(0.8**2 / (0.8**2 + 0.2**2), rel=1e-6)
    holed = cube()
    holed.update_faces(np.arange(len(holed.faces)) != 0)
    holed_scores = mesh_scores(holed, "cube")
    assert not holed_scores.watertight and holed_scores.boundary_edges == 3


@pytest.mark.parametrize("shape", SHAPES)
def test_every_primitive_mesh_scores_at_the_top(shape):
    scores = mesh_scores(primitive_mesh(shape), shape)
    assert scores.volume_iou > 0.98 and scores.chamfer < 0.01 and scores.watertight and scores.components == 1


def test_inside_grid_matches_a_box_exactly():
    axis = np.linspace(-1, 1, 20) + 0.01
    inside = inside_grid(cube(1.0).triangles, axis)
    xs = np.abs(axis) < 0.5
    assert np.array_equal(inside, xs[:, None, None] & xs[None, :, None] & xs[None, None, :])


def test_colour_accuracy_on_vertex_colours():
    mesh = cube()
    red = (np.array(COLOURS["red"]) * 255).round().astype(np.uint8)
    blue = (np.array(COLOURS["blue"]) * 255).round().astype(np.uint8)
    mesh.visual.vertex_colors = np.tile(np.append(red, 255), (len(mesh.vertices), 1))
    assert colour_accuracy(mesh, "red") == 1.0 and colour_accuracy(mesh, "blue") == 0.0
    colours = mesh.visual.vertex_colors.copy()
    colours[mesh.vertices[:, 0] > 0, :3] = blue  # the +x half of the vertices: every face touching +x is mixed
    mesh.visual.vertex_colors = colours
    assert 0.0 < colour_accuracy(mesh, "red") < 1.0
    assert colour_accuracy(cube(), "red") is None  # no vertex colours
    with pytest.raises(ValueError, match="unknown colour 'mauve'"):
        colour_accuracy(mesh, "mauve")


def _coloured(mesh, colour):
    mesh = mesh.copy()
    rgba = np.append((np.array(COLOURS[colour]) * 255).round(), 255).astype(np.uint8)
    mesh.visual.vertex_colors = np.tile(rgba, (len(mesh.vertices), 1))
    return mesh


@pytest.mark.parametrize("shape", ["cube", "torus"])
def test_mesh_renders_match_the_data_renderer(shape):
    """The mesh ray caster with the world's cameras and shading reproduces the SDF renders of the same primitive
    (the reference mesh's marching-cubes facets and rounded edges are the only difference)."""
    import torch

    from sdtoolkit.data import COLOUR_NAMES, render, turntable_cameras
    from sdtoolkit.text_to_3d.mesh_render import render_mesh

    cameras = turntable_cameras(4, elevation_deg=15.0)
    mesh = primitive_mesh(shape)
    ours = render_mesh(mesh.vertices, mesh.faces, np.tile(COLOURS["blue"], (len(mesh.vertices), 1)), cameras, 32)
    ids = torch.full((4,), SHAPES.index(shape))
    truth = render(ids, torch.full((4,), COLOUR_NAMES.index("blue")), cameras, 32)
    assert ours.shape == truth.shape == (4, 3, 32, 32)
    assert (ours - truth).abs().mean() < 3e-3


def test_evaluate_mesh_classifies_renders_of_the_mesh():
    from sdtoolkit.text_to_3d.mesh_metrics import evaluate_mesh

    right = evaluate_mesh(_coloured(primitive_mesh("cone"), "green"), "a green cone")
    assert right["render_view_accuracy"] == 1.0 and right["colour_accuracy"] == 1.0 and right["volume_iou"] > 0.98
    wrong = evaluate_mesh(_coloured(primitive_mesh("sphere"), "green"), "a red cube")
    assert wrong["render_view_accuracy"] == 0.0 and wrong["colour_accuracy"] == 0.0 and wrong["volume_iou"] < 0.8
    with pytest.raises(ValueError, match="cannot parse caption 'a teapot'"):
        evaluate_mesh(primitive_mesh("cone"), "a teapot")


def test_layout_mesh_is_scored_per_box_and_a_missing_object_is_named():
    from sdtoolkit.text_to_3d.guidance import parse_layout
    from sdtoolkit.text_to_3d.mesh_metrics import evaluate_layout_mesh

    layout = parse_layout(
        {
            "scene_bound": 1.5,
            "objects": [
                {"prompt": "a red cube", "box": {"center": [0, -0.6, 0], "size": [1.0, 1.0, 1.0]}},
                {"prompt": "a blue sphere", "box": {"center": [0, 0.6, 0], "size": [1.0, 1.0, 1.0]}},
            ],
        }
    )
    cube = _coloured(primitive_mesh("cube"), "red").apply_scale(0.5).apply_translation([0, -0.6, 0])
    sphere = _coloured(primitive_mesh("sphere"), "blue").apply_scale(0.5).apply_translation([0, 0.6, 0])
    results = evaluate_layout_mesh(trimesh.util.concatenate([cube, sphere]), layout)
    assert [r["missing"] for r in results] == [False, False]
    assert all(r["render_view_accuracy"] == 1.0 and r["volume_iou"] > 0.97 for r in results)
    only_cube = evaluate_layout_mesh(cube, layout)
    assert only_cube[1] == {"prompt": "a blue sphere", "missing": True}
