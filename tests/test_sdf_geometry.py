"""The 'sdf' field geometry (issue 21, item 2): VolSDF's density of a signed distance, the eikonal term by central
differences, the zero-level extraction, one sphere per layout box, and the options through the CLI at tiny size."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from sdtoolkit.nerf import FieldConfig, NeRF, NeRFConfig
from sdtoolkit.nerf.fields import laplace_cdf, volsdf_density
from sdtoolkit.text_to_3d import TextTo3DConfig
from sdtoolkit.text_to_3d.config import RegularizerConfig
from sdtoolkit.text_to_3d.export import extract_layout_mesh, extract_mesh, zero_level
from sdtoolkit.text_to_3d.guidance.semantic import LayoutPrior, parse_layout
from sdtoolkit.text_to_3d.regularizers import eikonal_loss, regularizer_losses, sdf_gradient


def test_laplace_cdf_and_volsdf_density_against_their_definitions():
    beta = 0.05
    s = torch.linspace(-1, 1, 201, dtype=torch.float64)
    f64 = torch.float64
    reference = torch.distributions.Laplace(torch.tensor(0.0, dtype=f64), torch.tensor(beta, dtype=f64)).cdf(s)
    torch.testing.assert_close(laplace_cdf(s, beta), reference, rtol=0, atol=1e-12)
    sdf = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    density = volsdf_density(sdf, beta)
    # 1/beta deep inside, 1/(2 beta) on the surface, exp(-d/beta)/(2 beta) outside
    e = math.exp(-1 / beta)
    expected = torch.tensor([(1 - 0.5 * e) / beta, 0.5 / beta, 0.5 * e / beta], dtype=f64)
    torch.testing.assert_close(density, expected, rtol=1e-12, atol=0)
    assert torch.isfinite(volsdf_density(torch.tensor([-1e4, 1e4]), 1e-3)).all()  # no overflow in either branch


def _sphere_nerf(radius: float = 0.4, beta: float = 0.02, shading: str = "albedo") -> NeRF:
    """An 'sdf' NeRF whose network outputs zero: d(x) = |x| - radius exactly."""
    field = FieldConfig(geometry="sdf", sdf_beta=beta, sdf_radius=radius)
    config = NeRFConfig(field=field, occupancy_resolution=0, shading=shading)
    nerf = NeRF(config)
    nn.init.zeros_(nerf.field.mlp[-1].weight)
    nn.init.zeros_(nerf.field.mlp[-1].bias)
    return nerf


def test_an_sdf_field_starts_as_a_sphere_and_meshes_at_its_zero_level():
    nerf = _sphere_nerf(radius=0.4, beta=0.02)
    x = torch.randn(100, 3)
    torch.testing.assert_close(nerf.field.signed_distance(x), x.norm(dim=-1) - 0.4)
    assert zero_level(nerf) == pytest.approx(25.0)
    mesh = extract_mesh(nerf, resolution=48)
    radii = torch.as_tensor(mesh.vertices).norm(dim=-1)
    cell = 2.0 / 48
    assert (radii - 0.4).abs().max() < cell / 2, float((radii - 0.4).abs().max())  # the zero level set, not a shell
    assert mesh.is_watertight and len(mesh.split(only_watertight=False)) == 1
    assert zero_level(NeRF(NeRFConfig(occupancy_resolution=0))) is None  # a density field keeps its automatic level


class AnalyticSDF(nn.Module):
    """d(x) = scale (|x| - 0.5): a distance when scale = 1; |grad d| = scale."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))
        self.config = FieldConfig(geometry="sdf")

    def signed_distance(self, positions):
        return self.scale * (positions.norm(dim=-1) - 0.5)


def test_central_difference_gradient_and_eikonal_loss_on_analytic_distances():
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.1
    field = AnalyticSDF(1.0)
    torch.testing.assert_close(sdf_gradient(field, x, 1e-3), x / x.norm(dim=-1, keepdim=True), rtol=0, atol=1e-3)
    assert float(eikonal_loss(field, x, 1e-3).detach()) < 1e-5  # a true distance
    stretched = AnalyticSDF(3.0)
    loss = eikonal_loss(stretched, x, 1e-3)
    assert float(loss.detach()) == pytest.approx(4.0, rel=1e-3)  # (3 - 1)^2
    loss.backward()
    assert float(stretched.scale.grad) == pytest.approx(4.0, rel=1e-3)  # d/ds (s - 1)^2 = 2 (s - 1)


def test_the_eikonal_term_trains_the_field_through_the_regularisers():
    nerf = _sphere_nerf()
    nn.init.normal_(nerf.field.mlp[-1].weight, std=0.5)
    config = RegularizerConfig(lambda_entropy=0.0, lambda_eikonal=2.0, eikonal_points=256)
    out = {"opacity": torch.rand(1, 1, 8, 8), "packed_positions": torch.randn(500, 3) * 0.3}
    losses = regularizer_losses(config, out, 0.5, nerf.field, torch.Generator().manual_seed(0))
    assert set(losses) == {"loss_eikonal"} and float(losses["loss_eikonal"].detach()) > 0
    losses["loss_eikonal"].backward()
    assert nerf.field.mlp[-1].weight.grad.abs().sum() > 0
    assert sum(float(p.grad.abs().sum()) for p in nerf.field.encoding.parameters()) > 0


def test_a_layout_starts_as_one_sphere_per_box_and_keeps_both_objects():
    layout = parse_layout(
        {
            "scene_bound": 1.5,
            "objects": [
                {"prompt": "a red cube", "box": {"center": [0, -0.6, 0], "size": [0.6, 0.6, 0.6]}},
                {"prompt": "a blue sphere", "box": {"center": [0, 0.6, 0], "size": [0.6, 0.6, 0.6]}},
            ],
        }
    )
    prior = LayoutPrior(layout)
    points = torch.tensor([[0.0, -0.6, 0.0], [0.0, 0.6, 0.0], [0.0, 0.0, 0.0]])
    # centres at y = -0.6 and 0.6, radius 0.5 x box side 0.6 = 0.3
    torch.testing.assert_close(prior.sdf_bias(points, 0.5), torch.tensor([-0.3, -0.3, 0.3]))
    field = FieldConfig(geometry="sdf", sdf_beta=0.02, bound=1.5, num_semantic=2)
    nerf = NeRF(NeRFConfig(field=field, occupancy_resolution=0), region_prior=prior)
    nn.init.zeros_(nerf.field.mlp[-1].weight)
    nn.init.zeros_(nerf.field.mlp[-1].bias)
    mesh = extract_layout_mesh(nerf, layout, resolution=48)
    objects = mesh.metadata["objects"]
    assert [o["iso_level"] for o in objects] == [pytest.approx(25.0)] * 2
    assert all(o["faces"][1] > o["faces"][0] for o in objects)  # both boxes hold a surface


def test_config_refusals_name_the_value_and_the_choices():
    with pytest.raises(ValueError, match="geometry='voxels'; choose one of density, sdf"):
        FieldConfig(geometry="voxels")
    with pytest.raises(ValueError, match="lambda_eikonal = 1.0 needs nerf.field.geometry 'sdf'"):
        TextTo3DConfig(prompt="a red cube", regularizers=RegularizerConfig(lambda_eikonal=1.0))


def test_cli_sdf_geometry_trains_and_exports_its_zero_level(tiny_prior, tmp_path):
    from sdtoolkit.cli import main

    out = tmp_path / "sdf"
    args = ["text-to-3d", "a red cube", "--prior", str(tiny_prior), "--steps", "3", "--output", str(out)]
    args += ["--preset", "tiny", "--mesh-resolution", "24", "--video-frames", "2", "--quiet"]
    args += ["--nerf.field.geometry", "sdf", "--nerf.field.sdf-beta", "0.05", "--regularizers.lambda-eikonal", "0.1"]
    assert main([*args, "--sdf-beta-start", "0.2"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["nerf"]["field"]["geometry"] == "sdf" and config["regularizers"]["lambda_eikonal"] == 0.1
    assert config["sdf_beta_start"] == 0.2
    history = json.loads((out / "checkpoint.json").read_text())["history"]
    assert "loss_eikonal" in history[-1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mesh_faces"] > 0 and summary["iso_level"] == pytest.approx(10.0)


def test_cli_refuses_eikonal_without_an_sdf(tiny_prior, tmp_path, capsys):
    from sdtoolkit.cli import main

    out = tmp_path / "bad"
    args = ["text-to-3d", "a red cube", "--prior", str(tiny_prior), "--output", str(out), "--quiet"]
    assert main([*args, "--regularizers.lambda-eikonal", "1"]) == 2
    assert "needs nerf.field.geometry 'sdf'" in capsys.readouterr().err
    assert not out.exists()


def test_beta_decays_geometrically_from_its_start_to_the_field_beta():
    from sdtoolkit.text_to_3d.trainer import current_beta

    nerf = NeRFConfig(field=FieldConfig(geometry="sdf", sdf_beta=0.02))
    config = TextTo3DConfig(prompt="a red cube", steps=100, sdf_beta_start=0.2, sdf_beta_warmup=0.5, nerf=nerf)
    assert current_beta(config, 0) == pytest.approx(0.2)
    assert current_beta(config, 25) == pytest.approx(math.sqrt(0.2 * 0.02))  # halfway: the geometric mean
    assert current_beta(config, 50) == pytest.approx(0.02) and current_beta(config, 99) == pytest.approx(0.02)
    config.sdf_beta_start = None
    assert current_beta(config, 0) == 0.02
    with pytest.raises(ValueError, match="vertex_colours 'delit' divides out a light"):
        TextTo3DConfig(prompt="a red cube", vertex_colours="delit", nerf=NeRFConfig(shading="lambert"))
    with pytest.raises(ValueError, match="sdf_beta_start = 0.2 needs nerf.field.geometry 'sdf'"):
        TextTo3DConfig(prompt="a red cube", sdf_beta_start=0.2)


def test_sdf_normals_of_the_initial_sphere_point_outward():
    from sdtoolkit.nerf.fields import sdf_normals

    nerf = _sphere_nerf()
    x = (torch.randn(50, 3) * 0.4).requires_grad_(True)
    normals = sdf_normals(nerf.field(x)["sdf"], x)
    torch.testing.assert_close(normals, (x / x.norm(dim=-1, keepdim=True)).detach(), rtol=0, atol=1e-5)


def _centre_pixel(nerf, azimuth: float, elevation: float):
    from sdtoolkit.data.cameras import Cameras

    cameras = Cameras(*(torch.tensor([v]) for v in (azimuth, elevation, 2.8, 40.0)))
    with torch.no_grad():
        out = nerf.render(cameras, 17, stratified=False)
    return out["rgb"][0, :, 8, 8], out["opacity"][0, 0, 8, 8]


def test_lambert_shading_uses_the_shapes_world_light_and_the_field_normals():
    """A grey sphere (albedo 0.5, the zeroed network's sigmoid(0)) seen at its centre pixel: from the light's side the
    surface faces the light (n . l = 1: the albedo itself), from the opposite side it is lit by the ambient term only
    (0.35 x the albedo), both composited over white by the same opacity as the unshaded render."""
    from sdtoolkit.data.render import AMBIENT, LIGHT_AZIMUTH_DEG, LIGHT_ELEVATION_DEG

    nerf = _sphere_nerf(radius=0.4, beta=0.01, shading="lambert")
    nerf.config.num_samples, nerf.config.transmittance_threshold = 256, 1e-5
    lit, opacity = _centre_pixel(nerf, LIGHT_AZIMUTH_DEG, LIGHT_ELEVATION_DEG)
    assert float(opacity) > 0.999
    nerf.config.shading = "albedo"
    flat, _ = _centre_pixel(nerf, LIGHT_AZIMUTH_DEG, LIGHT_ELEVATION_DEG)
    nerf.config.shading = "lambert"
    dark, _ = _centre_pixel(nerf, LIGHT_AZIMUTH_DEG + 180, -LIGHT_ELEVATION_DEG)
    torch.testing.assert_close(flat, torch.full((3,), 0.5), rtol=0, atol=2e-3)
    torch.testing.assert_close(lit, flat, rtol=0, atol=5e-3)  # n . l ~ 1 at the point facing the light
    torch.testing.assert_close(dark, AMBIENT * flat, rtol=0, atol=5e-3)  # n . l < 0: ambient only


def test_lambert_shading_trains_the_geometry_through_the_normals():
    from sdtoolkit.data.cameras import Cameras

    nerf = _sphere_nerf(radius=0.4, beta=0.03)
    nerf.config.shading = "lambert"
    nn.init.normal_(nerf.field.mlp[-1].weight, std=0.1)
    cameras = Cameras(*(torch.tensor([v]) for v in (30.0, 20.0, 2.8, 40.0)))
    rgb = nerf.render(cameras, 12, stratified=False)["rgb"]
    # the colour's gradient through the normals alone reaches the network's distance output
    (grad,) = torch.autograd.grad(rgb.sum(), nerf.field.mlp[-1].weight)
    assert grad[0].abs().sum() > 0
    with pytest.raises(ValueError, match="shading='phong'; choose one of albedo, lambert"):
        NeRFConfig(shading="phong")


def test_delit_colours_undo_the_world_light_on_the_mesh_normals():
    """A sphere coloured by the shapes world's Lambert shading of one albedo (what an 'albedo' field bakes in) gets
    that albedo back at every vertex, lit or in shadow (to the 8-bit rounding of the colours)."""
    import numpy as np
    import trimesh

    from sdtoolkit.data.render import lambert
    from sdtoolkit.text_to_3d.export import _rgba, delight_colours

    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    albedo = torch.tensor([0.95, 0.85, 0.1])
    normals = torch.tensor(np.array(mesh.vertex_normals), dtype=torch.float32)
    shaded = lambert(albedo.expand(len(normals), 3), normals.T)
    mesh.visual.vertex_colors = _rgba(shaded.numpy())
    delit = np.asarray(delight_colours(mesh).visual.vertex_colors)[:, :3] / 255.0
    assert np.abs(delit - albedo.numpy()).max() < 3.5 / 255 / 0.35  # rounding, amplified at most 1 / ambient
    assert float(shaded[:, 0].min()) < 0.35  # (the input did have vertices in shadow)


def test_cli_delit_vertex_colours_through_resume_and_refusal(tiny_prior, tmp_path, capsys):
    from sdtoolkit.cli import main

    out = tmp_path / "run"
    args = ["text-to-3d", "a red cube", "--prior", str(tiny_prior), "--steps", "2", "--output", str(out)]
    args += ["--preset", "tiny", "--mesh-resolution", "24", "--video-frames", "2", "--quiet"]
    assert main(args) == 0
    assert main(["text-to-3d", "--resume", str(out), "--vertex-colours", "delit", "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["vertex_colours"] == "delit"
    bad = tmp_path / "bad"
    assert main(["text-to-3d", "a red cube", "--output", str(bad), "--vertex-colours", "albedo", "--quiet"]) == 2
    assert "unknown --vertex-colours 'albedo'; choose one of field, delit" in capsys.readouterr().err
    assert not bad.exists()
