"""The opacity iso-level (issue 21): a mesh at the surface the renders show, on analytic density fields."""

import math

import numpy as np
import pytest
import torch

from sdtoolkit.nerf import NeRF, NeRFConfig
from sdtoolkit.text_to_3d.export import auto_iso_threshold, extract_mesh, opacity_iso_level

pytestmark = pytest.mark.usefixtures("one_thread")


def _nerf_with(density_of_radius) -> NeRF:
    """A small NeRF whose density is the analytic function of the distance from the origin (its colours are the
    untrained field's, which extraction does not look at)."""
    torch.manual_seed(0)
    nerf = NeRF(NeRFConfig(num_samples=192, chunk=1 << 16))

    def densities(positions):
        return density_of_radius(positions.norm(dim=-1))

    nerf._densities = densities
    nerf.exact_densities = densities
    return nerf


def _solid_ball(r):
    return 200.0 * torch.sigmoid((0.4 - r) / 0.005)


def _fog_around_a_core(r):
    """Fog whose density ramps from 0 at r = 0.6 to 8 at r = 0.25 (opaque only in sum), around a dense core."""
    fog = 8.0 * ((0.6 - r) / 0.35).clamp(0, 1)
    return fog + 200.0 * torch.sigmoid((0.25 - r) / 0.005)


def _radius(mesh) -> float:
    return float(np.median(np.linalg.norm(mesh.vertices, axis=1)))


def test_a_sharp_surface_gets_the_same_mesh_either_way():
    nerf = _nerf_with(_solid_ball)
    solid, opacity = extract_mesh(nerf, 64), extract_mesh(nerf, 64, iso_mode="opacity")
    densities, (lower, upper) = nerf.density_grid(64)
    cell = float(upper - lower) / 63
    assert abs(_radius(solid) - 0.4) < cell and abs(_radius(opacity) - 0.4) < cell


def test_a_fog_is_meshed_at_its_visible_boundary_not_at_its_core():
    nerf = _nerf_with(_fog_around_a_core)
    densities, (lower, upper) = nerf.density_grid(64)
    cell = float(upper - lower) / 63
    assert auto_iso_threshold(densities, cell) > 50  # the solid rule sees only the core
    level = opacity_iso_level(nerf)
    assert 2.0 < level < 8.0  # a fog density: where the renders turn half opaque
    solid, opacity = extract_mesh(nerf, 64), extract_mesh(nerf, 64, iso_mode="opacity")
    assert abs(_radius(solid) - 0.25) < 2 * cell
    # the half-opaque silhouette of this fog: rays with impact parameter b reach opacity 1/2 up to b ~ 0.47
    assert 0.35 < _radius(opacity) < 0.5 and mesh_is_larger(opacity, solid)
    assert math.isclose(opacity.metadata["iso_level"], level, rel_tol=1e-6)


def mesh_is_larger(a, b) -> bool:
    return _radius(a) > _radius(b) + 0.05


def test_an_empty_render_falls_back_to_the_solid_level():
    nerf = _nerf_with(lambda r: 0.05 * torch.exp(-r) + 5.0 * torch.sigmoid((0.05 - r) / 0.005))  # at most 40 % opaque
    assert opacity_iso_level(nerf) is None  # no ray reaches opacity 1/2
    densities, (lower, upper) = nerf.density_grid(64)
    expected = auto_iso_threshold(densities, float(upper - lower) / 63)
    assert extract_mesh(nerf, 64, iso_mode="opacity").metadata["iso_level"] == pytest.approx(expected)


def test_the_opacity_mesh_takes_its_colours_from_inside():
    """A red core in blue fog: meshed at the fog's visible boundary, the vertices are coloured by the dense interior
    below them (red), not by the fog's own albedo at the surface (blue); the solid mesh keeps its surface albedo."""
    nerf = _nerf_with(_fog_around_a_core)
    red, blue = torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.1, 0.1, 0.9])

    def albedo(positions):
        inside = (positions.norm(dim=-1) < 0.3)[:, None]
        return torch.where(inside, red, blue)

    nerf.colours_at = albedo
    opacity, solid = extract_mesh(nerf, 64, iso_mode="opacity"), extract_mesh(nerf, 64)
    assert _radius(opacity) > 0.35  # the surface is in the blue fog ...
    colours = opacity.visual.vertex_colors[:, :3].astype(float) / 255
    assert (colours[:, 0] > colours[:, 2]).mean() > 0.95  # ... and reads red
    solid_colours = solid.visual.vertex_colors[:, :3].astype(float) / 255
    assert (solid_colours[:, 0] > solid_colours[:, 2]).mean() > 0.95  # the core's own surface is red too


def test_inward_colours_stop_at_the_first_dense_matter():
    """Below the surface the renders see, the never-seen interior may hold any albedo: the colour is the volume
    rendering along the inward ray, so a red shell over a green interior reads red (a density-weighted mean over
    the whole depth would read green)."""
    from sdtoolkit.text_to_3d.export import inward_colours

    nerf = _nerf_with(lambda r: 300.0 * torch.sigmoid((0.45 - r) / 0.005))
    red, green = torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.1, 0.9, 0.1])
    nerf.colours_at = lambda p: torch.where((p.norm(dim=-1) > 0.4)[:, None], red, green)
    vertices = np.array([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]])
    colours = inward_colours(nerf, vertices, vertices / 0.5, depth=0.3)
    assert (colours[:, 0] > 0.8).all() and (colours[:, 1] < 0.2).all()


def test_inward_colours_take_the_solid_surface_albedo_below_the_fog():
    """With `surface_level` (the solid iso-level), a vertex in the fog takes the albedo where its inward ray first
    reaches that density: the dense core's bright colour, not the render's mix with the darker fog above it."""
    from sdtoolkit.text_to_3d.export import inward_colours

    nerf = _nerf_with(_fog_around_a_core)
    dark, bright = torch.tensor([0.3, 0.05, 0.4]), torch.tensor([0.7, 0.25, 0.95])
    nerf.colours_at = lambda p: torch.where((p.norm(dim=-1) > 0.3)[:, None], dark, bright)
    vertices = np.array([[0.45, 0.0, 0.0], [0.0, 0.0, -0.45]])
    normals = vertices / 0.45
    mixed = inward_colours(nerf, vertices, normals, depth=0.3, samples=48)
    below = inward_colours(nerf, vertices, normals, depth=0.3, samples=48, surface_level=100.0)
    assert np.allclose(below, bright.numpy(), atol=1e-6)
    assert (mixed[:, 2] < 0.85).all() and (mixed[:, 2] > 0.45).all()  # the render mixes in the dark fog
    # a ray that never reaches the level keeps the rendered colour
    shallow = inward_colours(nerf, vertices, normals, depth=0.1, samples=16, surface_level=100.0)
    assert np.allclose(shallow, inward_colours(nerf, vertices, normals, depth=0.1, samples=16))
