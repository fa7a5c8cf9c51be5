"""The mesh stage (sdtoolkit.text_to_3d.mesh_refine): the soft rasteriser's gradient against finite differences, its
hard limit against the mesh ray caster, the regularisers on analytic meshes, the stage fitting a target, one step
with a tiny SDS prior, and the CLI flag end to end."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sdtoolkit.data.cameras import Cameras, turntable_cameras
from sdtoolkit.text_to_3d.mesh_refine import (
    MeshRefineConfig,
    edge_length_loss,
    face_adjacency,
    guidance_image_loss,
    laplacian_loss,
    mesh_edges,
    normal_consistency_loss,
    refine_mesh,
    soft_render,
)
from sdtoolkit.text_to_3d.mesh_render import render_mesh

OCTAHEDRON_V = [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]]
OCTAHEDRON_F = [[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]]


def _icosphere(radius: float, subdivisions: int = 2):
    import trimesh

    return trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)


def test_soft_render_gradient_matches_finite_differences():
    torch.manual_seed(0)
    vertices = torch.tensor([[0.3, -0.2, -0.25], [-0.25, 0.35, -0.2], [-0.2, -0.3, 0.1], [0.1, 0.05, 0.4]])
    vertices = vertices.double().requires_grad_(True)
    faces = torch.tensor([[0, 1, 2], [0, 3, 1], [1, 3, 2], [2, 3, 0]])
    colours = torch.rand(4, 3, dtype=torch.float64, requires_grad=True)
    cameras = Cameras(*(torch.tensor([v]) for v in (25.0, 20.0, 2.0, 40.0)))
    weights = torch.randn(1, 3, 10, 10, dtype=torch.float64)

    def loss(v, c):
        out = soft_render(v, faces, c, cameras, resolution=10, sigma=2.0, gamma=0.05)
        return (out["rgb"] * weights).sum() + (out["alpha"] * weights[:, :1]).sum()

    grad_v, grad_c = torch.autograd.grad(loss(vertices, colours), (vertices, colours))
    numeric = torch.zeros_like(vertices)
    h = 1e-6
    with torch.no_grad():
        for index in np.ndindex(*vertices.shape):
            plus, minus = vertices.clone(), vertices.clone()
            plus[index] += h
            minus[index] -= h
            numeric[index] = (loss(plus, colours) - loss(minus, colours)) / (2 * h)
    assert grad_v.abs().max() > 1e-2  # the silhouette and the shading move with the vertices
    torch.testing.assert_close(grad_v, numeric, rtol=1e-5, atol=1e-6)
    # the image is linear in the colours: the gradient is exact
    with torch.no_grad():
        step = torch.zeros_like(colours)
        step[1, 0] = 1.0
        assert abs(float(loss(vertices, colours + step) - loss(vertices, colours)) - float(grad_c[1, 0])) < 1e-9


def test_hard_limit_is_the_mesh_ray_casters_image():
    mesh = _icosphere(0.5)
    mesh.vertices[:, 0] *= 1.3
    colours = np.random.default_rng(0).uniform(0.2, 0.9, (len(mesh.vertices), 3))
    cameras = turntable_cameras(2, elevation_deg=20)
    reference = render_mesh(mesh.vertices, mesh.faces, colours, cameras, 32, supersample=4)
    v, f, c = (torch.tensor(np.asarray(x)) for x in (mesh.vertices, mesh.faces, colours))
    hard = soft_render(v, f, c, cameras, 32, sigma=1e-5, gamma=1e-4, supersample=4)["rgb"].float()
    soft = soft_render(v, f, c, cameras, 32, sigma=0.5, gamma=0.01, supersample=4)["rgb"].float()
    error = (hard - reference).abs()
    assert error.mean() < 2e-4 and (error.amax(1) > 0.02).float().mean() < 0.01
    assert (soft - reference).abs().mean() > 10 * error.mean()  # the soft default differs: the limit is what matches


def test_regularisers_on_analytic_meshes():
    import trimesh

    v = torch.tensor(OCTAHEDRON_V, dtype=torch.float64)
    f = torch.tensor(OCTAHEDRON_F)
    edges, adjacency = mesh_edges(f), face_adjacency(f)
    assert len(edges) == 12 and len(adjacency) == 12  # a closed mesh: 3F/2 edges, each between two faces
    # each vertex's 4 neighbours average to the origin: |delta| = 1; edge length sqrt 2
    assert float(laplacian_loss(v, edges)) == pytest.approx(1.0)
    assert float(laplacian_loss(v, edges, scale=2**0.5)) == pytest.approx(0.5)
    # adjacent octant normals (+-1, +-1, +-1)/sqrt 3 differ in one sign: cos = 1/3
    assert float(normal_consistency_loss(v, f, adjacency)) == pytest.approx(2 / 3)
    rest = (v[edges[:, 0]] - v[edges[:, 1]]).norm(dim=-1)
    assert float(edge_length_loss(v, edges, rest)) == pytest.approx(0.0)
    assert float(edge_length_loss(1.5 * v, edges, rest)) == pytest.approx(0.25)
    # a cube of 12 triangles: 12 right-angle edges, 6 flat diagonals; a flat grid: 0
    box = trimesh.creation.box()
    bv, bf = torch.tensor(box.vertices), torch.tensor(box.faces)
    assert float(normal_consistency_loss(bv, bf, face_adjacency(bf))) == pytest.approx(12 / 18)
    grid = trimesh.creation.box(extents=(1, 1, 1)).subdivide().subdivide()
    top = grid.faces[(grid.vertices[grid.faces][:, :, 2] > 0.49).all(1)]
    gv, gf = torch.tensor(grid.vertices), torch.tensor(top)
    assert float(normal_consistency_loss(gv, gf, face_adjacency(gf))) == pytest.approx(0.0, abs=1e-12)


def test_mesh_stage_fits_a_target_silhouette_and_colour():
    target_mesh, start = _icosphere(0.5), _icosphere(0.35)
    cameras = turntable_cameras(4, elevation_deg=20)
    red = torch.tensor([[0.9, 0.1, 0.1]]).repeat(len(target_mesh.vertices), 1)
    v, f = torch.tensor(target_mesh.vertices, dtype=torch.float32), torch.tensor(target_mesh.faces)
    targets = soft_render(v, f, red, cameras, 24)["rgb"]
    calls = []

    def next_cameras():  # the four views in turn
        calls.append(len(calls) % 4)
        return cameras[calls[-1]]

    def image_loss(rgb, cams, progress):
        return ((rgb - targets[calls[-1]][None]) ** 2).mean()

    config = MeshRefineConfig(steps=30, lr_vertices=0.02, lr_colours=0.2)
    config.lambda_laplacian = config.lambda_normal = config.lambda_edge = 0.01
    grey = np.full((len(start.vertices), 3), 0.5)
    result = refine_mesh(start.vertices, start.faces, grey, config, image_loss, next_cameras, 24)
    first = np.mean([h["loss_image"] for h in result.history[:4]])
    last = np.mean([h["loss_image"] for h in result.history[-4:]])
    assert last < 0.1 * first
    radius = np.linalg.norm(result.vertices, axis=1).mean()
    assert 0.45 < radius < 0.55  # grew from 0.35 to the target's 0.5
    assert result.colours[:, 0].mean() > 0.7 and result.colours[:, 1:].mean() < 0.3
    np.testing.assert_array_equal(result.faces, start.faces)


def test_one_step_with_a_tiny_sds_prior():
    from sdtoolkit.core.denoiser import Denoiser
    from sdtoolkit.testing import tiny_sd_pipeline
    from sdtoolkit.text_to_3d.guidance import SDSConfig, ViewDependentPrompts, build

    denoiser = Denoiser.from_pipeline(tiny_sd_pipeline()).freeze()
    run = SimpleNamespace(
        denoiser=denoiser,
        guidance=build("sds", denoiser, SDSConfig(guidance_scale=7.5)),
        prompts=[ViewDependentPrompts(denoiser, "a red cube")],
        generator=torch.Generator().manual_seed(0),
    )
    mesh = _icosphere(0.4, 1)
    colours = np.full((len(mesh.vertices), 3), 0.5)
    config = MeshRefineConfig(steps=1)
    result = refine_mesh(
        mesh.vertices, mesh.faces, colours, config, guidance_image_loss(run), lambda: turntable_cameras(1), 32
    )
    (logs,) = result.history
    assert "skipped" not in logs and np.isfinite(logs["loss_image"]) and logs["loss_image"] > 0
    moved = np.abs(result.vertices - mesh.vertices).max()
    assert 0 < moved <= 1.01 * config.lr_vertices  # Adam's first step moves each coordinate by at most lr
    assert 0 < np.abs(result.colours - colours).max()


def test_cli_mesh_stage_end_to_end(tiny_prior, tmp_path):
    import trimesh

    from sdtoolkit.cli import main

    common = ["text-to-3d", "a red cube", "--prior", str(tiny_prior), "--steps", "2", "--preset", "tiny"]
    common += ["--mesh-resolution", "24", "--video-frames", "2", "--quiet"]
    assert main([*common, "--output", str(tmp_path / "plain")]) == 0
    assert main([*common, "--output", str(tmp_path / "refined"), "--mesh_refine.steps", "2"]) == 0
    plain = json.loads((tmp_path / "plain" / "summary.json").read_text())
    refined = json.loads((tmp_path / "refined" / "summary.json").read_text())
    assert plain["mesh_refine"] is None
    assert refined["mesh_refine"]["steps"] == 2 and refined["mesh_refine"]["skipped"] == 0
    assert refined["mesh_faces"] == plain["mesh_faces"]  # same seed, same NeRF, same extraction; fixed topology
    before = trimesh.load(tmp_path / "plain" / "mesh.glb", force="mesh")
    after = trimesh.load(tmp_path / "refined" / "mesh.glb", force="mesh")
    assert after.visual.vertex_colors.shape[0] == len(after.vertices)
    assert not np.allclose(np.sort(before.vertices, 0), np.sort(after.vertices, 0))
    config = json.loads((tmp_path / "refined" / "config.json").read_text())
    assert config["mesh_refine"]["steps"] == 2
    # a finished run's mesh refined without training again: --resume may change the mesh stage
    assert main([*common, "--resume", str(tmp_path / "plain"), "--mesh_refine.steps", "1"]) == 0
    resumed = json.loads((tmp_path / "plain" / "summary.json").read_text())
    assert resumed["steps"] == 2 and resumed["mesh_refine"]["steps"] == 1


def test_cli_refuses_the_mesh_stage_for_layouts_before_writing(tmp_path, capsys):
    from sdtoolkit.cli import main

    layout = {"objects": [{"prompt": "a red cube", "box": [-0.4, -0.4, -0.4, 0.4, 0.4, 0.4]}]}
    (tmp_path / "scene.json").write_text(json.dumps(layout))
    out = tmp_path / "run"
    args = ["text-to-3d", "--method", "semantic-sds", "--layout", str(tmp_path / "scene.json"), "--output", str(out)]
    assert main([*args, "--mesh_refine.steps", "3"]) == 2
    assert "semantic-sds" in capsys.readouterr().err and not out.exists()
