"""The visual hull as the image-to-3D field's start (`--nerf.field.sdf-init visual-hull`, issue 22): the projection
against the ray generator, the hull of analytic and rendered silhouettes (a sphere contained, a torus's hole
carved), a symmetric start for a symmetric field, the refusals, and a run that starts from it and resumes."""

from __future__ import annotations

import json

import pytest
import torch

from sdtoolkit.data.cameras import Cameras
from sdtoolkit.data.cameras import orbit_cameras as cams
from sdtoolkit.image_to_3d import ImageTo3DConfig
from sdtoolkit.image_to_3d.inputs import cameras_json, save_rgba, shapes_references
from sdtoolkit.image_to_3d.visual_hull import hull_sdf_grid, project_points, visual_hull
from sdtoolkit.nerf import FieldConfig, NeRFConfig
from sdtoolkit.nerf.sdf_init import sample_grid
from sdtoolkit.text_to_3d import TextTo3DConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def sphere_masks(cameras: Cameras, radius: float, size: int) -> torch.Tensor:
    """Exact silhouettes of a sphere at the origin: pixels whose ray passes within `radius` of it."""
    origins, directions = cameras.generate_rays(size, size)
    along = -(origins * directions).sum(-1, keepdim=True)
    closest = (origins + along * directions).norm(dim=-1)
    return (closest < radius).float()[:, None]


def test_a_point_on_a_pixel_ray_projects_to_that_pixel_centre():
    cameras = cams([0.0, 37.0, -120.0], [15.0, 50.0, -20.0], distance=2.5, fov=35.0)
    size = 16
    origins, directions = cameras.generate_rays(size, size)
    for b in range(len(cameras)):
        for i, j in [(0, 0), (3, 11), (15, 7), (8, 8)]:
            point = origins[b, i, j] + 1.7 * directions[b, i, j]
            uv, in_front = project_points(point[None], cameras[b])
            expected = torch.tensor([(2 * j + 1) / size - 1, (2 * i + 1) / size - 1])
            assert in_front.item()
            assert torch.allclose(uv[0, 0], expected, atol=1e-5), (b, i, j, uv, expected)
    behind = origins[0, 4, 4] - 1.0 * directions[0, 4, 4]
    assert not project_points(behind[None], cameras[0])[1].item()


def test_the_hull_of_a_sphere_contains_it_and_is_close_to_it():
    cameras = cams([0.0, 90.0, 180.0, 270.0, 45.0, 200.0], [0.0, 0.0, 0.0, 0.0, 60.0, -50.0])
    radius, resolution = 0.5, 32
    inside = visual_hull(sphere_masks(cameras, radius, 64), cameras, bound=1.0, resolution=resolution)
    cell = 2.0 / resolution
    axis = torch.linspace(-1 + cell / 2, 1 - cell / 2, resolution)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1)
    distance = points.norm(dim=-1)
    assert inside[distance < radius - cell].all()  # the object is inside its hull (up to a cell at the border)
    assert not inside[distance > radius * 1.3].any()  # and six views leave little more
    truth = distance < radius
    iou = (inside & truth).sum() / (inside | truth).sum()
    assert iou > 0.8, iou
    # one view alone only bounds a cone: much larger than the sphere
    assert visual_hull(sphere_masks(cameras[:1], radius, 64), cameras[:1], 1.0, resolution).sum() > 2 * truth.sum()


def test_the_hull_of_a_torus_seen_from_above_has_its_hole_and_a_symmetric_sdf():
    cameras = cams([0.0, 120.0, 240.0], [15.0, 60.0, 5.0])
    masks = shapes_references("torus", "green", cameras, 64).masks
    sdf = hull_sdf_grid(masks, cameras, bound=1.0, resolution=64)
    # the torus of the shapes world: major radius 0.35, minor 0.15, lying in the xy-plane
    values = sample_grid(sdf, torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.6], [0.35, 0.0, 0.0], [0.0, -0.35, 0.0]]), 1)
    assert values[0] > 0 and values[1] > 0, values  # the hole and the space above are outside
    assert values[2] < 0 and values[3] < 0, values  # the tube is inside


def test_an_impossible_hull_is_refused():
    cameras = cams([0.0], [0.0])
    empty = torch.zeros(1, 1, 32, 32)
    with pytest.raises(ValueError, match="visual-hull.*cameras do not match"):
        hull_sdf_grid(empty, cameras, 1.0, 16)
    with pytest.raises(ValueError, match="2 masks but 1 cameras"):
        visual_hull(torch.ones(2, 1, 32, 32), cameras, 1.0, 16)


def test_visual_hull_is_refused_where_it_cannot_mean_anything():
    with pytest.raises(ValueError, match="needs geometry 'sdf'"):
        FieldConfig(sdf_init="visual-hull")
    with pytest.raises(ValueError, match="needs reference views"):
        TextTo3DConfig(prompt="a red cube", nerf=NeRFConfig(field=FieldConfig(geometry="sdf", sdf_init="visual-hull")))
    with pytest.raises(ValueError, match="'visual-hull' \\(image-to-3D\\)"):
        FieldConfig(geometry="sdf", sdf_init="cube")


@pytest.fixture(scope="module")
def torus_views(tmp_path_factory):
    folder = tmp_path_factory.mktemp("torus")
    cameras = cams([0.0, 120.0, 240.0], [15.0, 60.0, 5.0])
    paths = save_rgba(shapes_references("torus", "green", cameras, 32), folder)
    data = cameras_json(cameras, paths, approximate=True)
    (folder / "cams.json").write_text(json.dumps(data))
    return folder, paths


def _config(paths, cameras_file, **overrides) -> ImageTo3DConfig:
    field = FieldConfig(geometry="sdf", sdf_init="visual-hull", num_levels=4, max_res=32, log2_hashmap_size=12)
    values = dict(
        images=tuple(str(p) for p in paths),
        cameras=str(cameras_file),
        reference_resolution=32,
        start_resolution=16,
        steps=8,
        nerf=NeRFConfig(field=field, num_samples=16, occupancy_resolution=16),
        preview_every=0,
        checkpoint_every=0,
        symmetric_density=True,
        symmetry_planes=4,
        symmetry_method="fold",
    )
    values.update(overrides)
    return ImageTo3DConfig(**values)


def test_a_run_starts_from_the_symmetric_hull_and_resumes_exactly(torus_views, tmp_path):
    from sdtoolkit.image_to_3d.symmetry import rotate_points
    from sdtoolkit.image_to_3d.trainer import setup, train

    folder, paths = torus_views
    config = _config(paths, folder / "cams.json")
    run = setup(config)
    grid = run.nerf.field.sdf_grid
    assert grid.abs().sum() > 0
    points = torch.tensor([[0.3, 0.1, 0.05], [0.5, -0.2, 0.1], [0.0, 0.0, 0.0], [0.35, 0.0, 0.0]])
    bias = run.nerf.field.sdf_bias(points)
    assert bias[2] > 0 and bias[3] < 0  # the hole is out, the tube in
    for angle in (90.0, 180.0, 270.0):  # the start is as symmetric as the folded field (the square's group)
        assert torch.allclose(run.nerf.field.sdf_bias(rotate_points(points, angle)), bias, atol=1e-5)
    full = train(config, tmp_path / "full", progress=False)
    train(config, tmp_path / "split", progress=False, stop_at=5)
    resumed = train(config, tmp_path / "split", progress=False, resume=True)
    for (name, a), b in zip(full.nerf.state_dict().items(), resumed.nerf.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(resumed.nerf.field.sdf_grid, grid)  # carried by the checkpoint, as computed


def test_the_cli_refuses_an_empty_hull_before_writing_anything(tmp_path, capsys):
    """Two views from opposite sides whose object is shifted 7 px left in both (still whole in the frame): the
    silhouettes' cones miss each other, so no point is inside both masks."""
    from sdtoolkit.cli import main
    from sdtoolkit.image_to_3d.inputs import References, cameras_json, save_rgba, shapes_references

    cameras = cams([0.0, 180.0], [0.0, 0.0], distance=4.0)
    views = shapes_references("sphere", "red", cameras, 32)
    shifted = [torch.zeros_like(t) for t in (views.images, views.masks)]
    for moved, original in zip(shifted, (views.images, views.masks)):
        moved[..., :-7] = original[..., 7:]
    assert shifted[1][..., 0].sum() == 0  # the object is whole in the frame
    paths = save_rgba(References(*shifted, cameras), tmp_path / "refs")
    (tmp_path / "cams.json").write_text(json.dumps(cameras_json(cameras, paths)))
    out = tmp_path / "out"
    argv = ["image-to-3d", *map(str, paths), "--cameras", str(tmp_path / "cams.json"), "--output", str(out)]
    argv += ["--reference-resolution", "32", "--nerf.field.geometry", "sdf", "--quiet"]
    capsys.readouterr()
    assert main([*argv, "--nerf.field.sdf-init", "visual-hull"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sdtoolkit image-to-3d:")]
    assert len(err) == 1 and "no point of the field's cube projects inside every reference mask" in err[0]
    assert not out.exists()
