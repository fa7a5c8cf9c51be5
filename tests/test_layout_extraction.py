"""SemanticSDS meshes keep every layout object: per-box iso-levels instead of one global level."""

import numpy as np
import pytest
import torch

pytest.importorskip("trimesh")
pytest.importorskip("mcubes")

from sdtoolkit.text_to_3d.export import extract_layout_mesh, extract_mesh  # noqa: E402
from sdtoolkit.text_to_3d.guidance import parse_layout  # noqa: E402
from sdtoolkit.text_to_3d.mesh_metrics import mesh_scores  # noqa: E402

LAYOUT = parse_layout(
    {
        "scene_bound": 1.0,
        "objects": [
            {"prompt": "a red cube", "box": {"center": [0, -0.45, 0], "size": [0.5, 0.5, 0.5]}},
            {"prompt": "a blue sphere", "box": {"center": [0, 0.45, 0], "size": [0.5, 0.5, 0.5]}},
        ],
    }
)


class TwoBlobField:
    """A stand-in NeRF: a dense red cube in the first box and a faint blue sphere in the second (the case where one
    global iso-level drops the faint object)."""

    def density_grid(self, resolution):
        half = 1.0 / resolution
        axis = torch.linspace(-1 + half, 1 - half, resolution)
        x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
        cube = ((x.abs() < 0.2) & ((y + 0.45).abs() < 0.2) & (z.abs() < 0.2)).float() * 200.0
        sphere = ((x**2 + (y - 0.45) ** 2 + z**2).sqrt() < 0.2).float() * 5.0
        return cube + sphere, torch.tensor([axis[0].item(), axis[-1].item()])

    def colours_at(self, positions):
        red, blue = torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.2, 0.35, 1.0])
        return torch.where((positions[:, 1:2] > 0), blue, red)


def test_global_level_loses_the_faint_object_and_per_box_extraction_keeps_it():
    field = TwoBlobField()
    single = extract_mesh(field, 64)
    assert (single.vertices[:, 1] > 0).sum() == 0  # the sphere is lost under the cube's level
    mesh = extract_layout_mesh(field, LAYOUT, 64)
    blue = mesh.visual.vertex_colors[:, 2] > 200
    assert blue.any() and (mesh.vertices[blue, 1] > 0).all()
    objects = mesh.metadata["objects"]
    assert [o["prompt"] for o in objects] == ["a red cube", "a blue sphere"]
    assert objects[0]["iso_level"] > objects[1]["iso_level"]
    (a0, a1), (b0, b1) = objects[0]["faces"], objects[1]["faces"]
    assert a0 == 0 and a1 == b0 and b1 == len(mesh.faces) and b1 > b0 > 0
    # each box's part of the mesh, scored against its own primitive (the blobs are a cube and a sphere)
    cube = mesh.submesh([np.arange(a0, a1)], append=True)
    sphere = mesh.submesh([np.arange(b0, b1)], append=True)
    assert mesh_scores(cube, "cube", "red").volume_iou > 0.8
    assert mesh_scores(sphere, "sphere", "blue").colour_accuracy == 1.0


def test_iso_level_override_applies_to_every_box():
    mesh = extract_layout_mesh(TwoBlobField(), LAYOUT, 48, level=1.0)
    assert [o["iso_level"] for o in mesh.metadata["objects"]] == [1.0, 1.0]
