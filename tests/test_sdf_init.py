"""A signed-distance field started from a mesh (`FieldConfig.sdf_init`, threestudio's `shape_init: mesh`; issue 21):
the tabulated distance against a box's exact one, the field's zero level set at the start, the config's checks, the
state round trip, and the CLI chain density run -> its mesh -> an SDF run from it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sdtoolkit.nerf import FieldConfig, NeRF, NeRFConfig
from sdtoolkit.nerf.sdf_init import mesh_sdf_grid, sample_grid

HALF = 0.4  # the shapes world's cube: half side 0.4


def box_sdf(points: torch.Tensor, half: float = HALF) -> torch.Tensor:
    """Exact signed distance of the axis-aligned box [-half, half]^3 (Quilez): |max(q, 0)| + min(max q, 0)."""
    q = points.abs() - half
    return q.clamp_min(0).norm(dim=-1) + q.max(dim=-1).values.clamp_max(0)


@pytest.fixture(scope="module")
def box_file(tmp_path_factory):
    import trimesh

    path = tmp_path_factory.mktemp("mesh") / "box.ply"
    trimesh.creation.box(extents=(2 * HALF,) * 3).export(path)
    return path


def test_the_tabulated_distance_of_a_box_is_its_exact_distance_to_within_a_cell(box_file):
    bound, resolution = 1.0, 64
    cell = 2 * bound / resolution
    grid = mesh_sdf_grid(box_file, bound, resolution)
    assert grid.shape == (resolution,) * 3
    torch.manual_seed(0)
    points = torch.rand(4000, 3) * 1.8 - 0.9
    ours, exact = sample_grid(grid, points, bound), box_sdf(points)
    assert (ours - exact).abs().max() < 1.5 * cell, (ours - exact).abs().max()
    # the sign is right everywhere but within a cell of the surface
    away = exact.abs() > cell
    assert torch.equal(ours[away] < 0, exact[away] < 0)
    # a shifted box is a different distance (the grid is not symmetric by accident)
    assert (ours - box_sdf(points - torch.tensor([0.2, 0.0, 0.0]))).abs().max() > 0.15
    # grid axes: sample_grid reads [x, y, z] in that order (a box stretched along y alone tells them apart)
    import trimesh

    slab = box_file.parent / "slab.obj"
    trimesh.creation.box(extents=(0.4, 1.2, 0.4)).export(slab)
    stretched = mesh_sdf_grid(slab, bound, resolution)
    probe = torch.tensor([[0.0, 0.5, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.5]])
    assert sample_grid(stretched, probe, bound).sign().tolist() == [-1.0, 1.0, 1.0]


def test_a_field_started_from_a_mesh_has_that_mesh_as_its_initial_surface(box_file):
    field = FieldConfig(geometry="sdf", sdf_init=str(box_file), num_levels=4, max_res=32, log2_hashmap_size=12)
    nerf = NeRF(NeRFConfig(field=field, occupancy_resolution=0))
    with torch.no_grad():
        nerf.field.mlp[-1].weight.zero_()
        nerf.field.mlp[-1].bias.zero_()  # the network's output zero: d(x) is the mesh's distance
    torch.manual_seed(1)
    points = torch.rand(20000, 3) * 1.6 - 0.8
    with torch.no_grad():
        d = nerf.field(points)["sdf"]
    assert (d - box_sdf(points)).abs().max() < 1.5 * 2 / 64
    inside, true_inside = d < 0, box_sdf(points) < 0
    iou = (inside & true_inside).sum() / (inside | true_inside).sum()
    assert iou > 0.94  # the cell-centre table puts the faces about a seventh of a cell (0.004) outward
    # the table is a buffer: saved and restored with the field; the sphere's field has none
    state = nerf.state_dict()
    assert "field.sdf_grid" in state
    again = NeRF(NeRFConfig(field=field, occupancy_resolution=0))
    again.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(again.field(points)["sdf"], d)
    assert "field.sdf_grid" not in NeRF(NeRFConfig(field=FieldConfig(geometry="sdf"))).state_dict()


def test_sdf_init_is_checked_before_anything_is_built(box_file, tmp_path, monkeypatch):
    monkeypatch.chdir(box_file.parent)
    assert FieldConfig(geometry="sdf", sdf_init=box_file.name).sdf_init == str(box_file.absolute())  # stored absolute
    with pytest.raises(ValueError, match="needs geometry 'sdf', not 'density'"):
        FieldConfig(sdf_init=str(box_file))
    with pytest.raises(ValueError, match="give 'sphere', 'visual-hull' \\(image-to-3D\\) or a mesh file"):
        FieldConfig(geometry="sdf", sdf_init="cube")
    with pytest.raises(ValueError, match="no such file"):
        FieldConfig(geometry="sdf", sdf_init=str(tmp_path / "missing.glb"))
    import trimesh

    far = tmp_path / "far.ply"
    trimesh.creation.box(extents=(0.2, 0.2, 0.2)).apply_translation((5.0, 0, 0)).export(far)
    with pytest.raises(ValueError, match="encloses no cell"):
        NeRF(NeRFConfig(field=FieldConfig(geometry="sdf", sdf_init=str(far))))


def test_cli_density_run_then_an_sdf_run_from_its_mesh(tiny_prior, tmp_path, capsys):
    """The two-stage recipe: the density run's exported mesh.glb is the SDF run's starting surface."""
    import trimesh

    from sdtoolkit.cli import main

    common = ["--prior", str(tiny_prior), "--steps", "2", "--preset", "tiny", "--mesh-resolution", "24"]
    common += ["--video-frames", "2", "--quiet"]
    coarse = tmp_path / "coarse"
    assert main(["text-to-3d", "a red cube", *common, "--output", str(coarse)]) == 0
    mesh = coarse / "mesh.glb"
    assert len(trimesh.load(mesh, force="mesh").faces) > 0
    fine = tmp_path / "fine"
    args = ["text-to-3d", "a red cube", *common, "--output", str(fine), "--nerf.field.geometry", "sdf"]
    args += ["--nerf.field.sdf-init", str(mesh), "--regularizers.lambda-eikonal", "0.1"]
    assert main(args) == 0
    config = json.loads((fine / "config.json").read_text())
    assert config["nerf"]["field"]["sdf_init"] == str(mesh)
    capsys.readouterr()
    # the mesh shaped step 0 only: the checkpoint carries its grid, so a moved mesh neither stops a resume nor a
    # load as a PVD teacher, and the grid is the one the run started from (not a placeholder)
    from safetensors.torch import load_file

    from sdtoolkit.nerf.convert import load_nerf_asset

    grid = load_file(fine / "checkpoint.safetensors")["nerf.field.sdf_grid"]
    assert grid.abs().max() > 0.1
    moved = mesh.rename(tmp_path / "moved.glb")
    assert main([*args, "--steps", "3", "--resume"]) == 0, capsys.readouterr().err
    assert json.loads((fine / "checkpoint.json").read_text())["step"] == 3
    assert torch.equal(load_file(fine / "checkpoint.safetensors")["nerf.field.sdf_grid"], grid)
    teacher, _ = load_nerf_asset(fine)
    assert torch.equal(teacher.field.sdf_grid, grid)
    with pytest.raises(ValueError, match="no such file"):  # a new run still needs the mesh
        FieldConfig(geometry="sdf", sdf_init=str(mesh))
    moved.rename(mesh)
    bad = tmp_path / "bad"
    wrong = ["text-to-3d", "a red cube", *common, "--output", str(bad), "--nerf.field.sdf-init", str(mesh)]
    assert main(wrong) == 2
    assert "needs geometry 'sdf'" in capsys.readouterr().err
    assert not bad.exists()


def test_the_grid_matches_numpy_trilinear_interpolation_at_cell_centres(box_file):
    grid = mesh_sdf_grid(box_file, 1.0, 16)
    cell = 2 / 16
    centres = torch.tensor(np.linspace(-1 + cell / 2, 1 - cell / 2, 16), dtype=torch.float32)
    i, j, k = 3, 8, 12
    point = torch.stack([centres[i], centres[j], centres[k]])[None]
    assert sample_grid(grid, point, 1.0).item() == pytest.approx(grid[i, j, k].item(), abs=1e-6)
