"""Image-to-3D (issue 22): reference inputs and their one-line errors, mirrored poses against hand computations and
the shapes renderer, the symmetric field, pose corrections recovering a known perturbation, the loop and its exact
resume, and the CLI end to end at tiny size."""

from __future__ import annotations

import importlib
import json
import math

import pytest
import torch
from PIL import Image
from torch import nn

from sdtoolkit.data.cameras import Cameras, cat_cameras
from sdtoolkit.data.cameras import orbit_cameras as cams
from sdtoolkit.data.render import render, render_silhouette
from sdtoolkit.data.shapes import SHAPES
from sdtoolkit.image_to_3d import (
    ImageTo3DConfig,
    InputError,
    PoseCorrections,
    SymmetricEncoding,
    angular_errors,
    load_references,
    make_symmetric,
    mirror_azimuth,
    mirror_cameras,
    mirror_images,
    mirror_points,
)
from sdtoolkit.image_to_3d.inputs import cameras_json, save_rgba, shapes_references
from sdtoolkit.image_to_3d.symmetry import (
    fold_points,
    symmetry_group,
    transform_cameras,
    transform_images,
    transform_points,
)
from sdtoolkit.nerf import FieldConfig, NeRF, NeRFConfig

render_module = importlib.import_module("sdtoolkit.data.render")  # (the package re-exports its `render` function)
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_nerf() -> NeRFConfig:
    return NeRFConfig(
        field=FieldConfig(num_levels=4, max_res=32, log2_hashmap_size=12, hidden_dim=16),
        num_samples=16,
        occupancy_resolution=16,
    )


@pytest.fixture(scope="module")
def cube_views(tmp_path_factory):
    """Two RGBA renders of a red cube (front and side, 32 px) and their cameras file."""
    folder = tmp_path_factory.mktemp("refs")
    cameras = cams([0.0, 90.0], [10.0, 20.0])
    references = shapes_references("cube", "red", cameras, 32)
    paths = save_rgba(references, folder)
    (folder / "cams.json").write_text(json.dumps(cameras_json(cameras, paths)))
    return folder, paths, references


# ------------------------------------------------------------------------------------------------- inputs


def test_a_single_rgba_image_is_a_front_view_and_round_trips(cube_views):
    folder, paths, truth = cube_views
    refs = load_references([paths[0]], resolution=32)
    assert refs.cameras.azimuth_deg.tolist() == [0.0] and refs.cameras.elevation_deg.tolist() == [0.0]
    assert refs.cameras.distance.tolist() == pytest.approx([2.8]) and refs.cameras.fov_deg.tolist() == [40.0]
    assert not refs.approximate
    assert torch.allclose(refs.masks, truth.masks[:1], atol=1 / 255)
    covered = truth.masks[:1] > 0.5
    assert torch.allclose(refs.images[:, :, covered[0, 0]], truth.images[:1, :, covered[0, 0]], atol=2 / 255)
    refs = load_references(paths[::-1], folder / "cams.json", resolution=16)  # matched by name, downsampled
    assert refs.cameras.azimuth_deg.tolist() == [90.0, 0.0] and refs.images.shape == (2, 3, 16, 16)


def test_rgb_with_a_mask_file(cube_views, tmp_path):
    _, paths, truth = cube_views
    Image.open(paths[0]).convert("RGB").save(tmp_path / "rgb.png")
    Image.fromarray((truth.masks[0, 0] * 255).round().byte().numpy(), "L").save(tmp_path / "mask.png")
    refs = load_references([tmp_path / "rgb.png"], masks=[tmp_path / "mask.png"], resolution=32)
    assert torch.allclose(refs.masks, truth.masks[:1], atol=1 / 255)


def _error(*args, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        load_references(*args, **kwargs)
    lines = str(info.value).splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_bad_inputs_are_refused_in_one_line(cube_views, tmp_path):
    folder, paths, _ = cube_views
    Image.open(paths[0]).convert("RGB").save(tmp_path / "rgb.png")
    assert "no alpha channel and no mask" in _error([tmp_path / "rgb.png"], resolution=32)
    assert "need a cameras file" in _error(paths, resolution=32)
    one_view = tmp_path / "one.json"
    one_view.write_text(json.dumps([{"azimuth": 0}]))
    assert "describes 1 view(s) but 2 image(s)" in _error(paths, one_view, resolution=32)
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"image": "a.png"}, {"image": paths[1].name}]))
    assert f"image {paths[0].name!r} is named by 0 views" in _error(paths, other, resolution=32)
    for key, value, message in [
        ("elevation", 95, "elevation = 95.0: must be in (-90, 90)"),
        ("distance", 0.5, "distance = 0.5: must be > 0.75"),
        ("fov", 0, "fov = 0.0: must be in [1, 179]"),
        ("azimuth", "front", 'azimuth = "front": expected a finite number'),
    ]:
        bad = tmp_path / f"bad_{key}.json"
        bad.write_text(json.dumps([{key: value}]))
        assert message in _error([paths[0]], bad, resolution=32), key
    assert "must be a multiple of the reference resolution 64" in _error([paths[0]], resolution=64)
    Image.new("RGBA", (32, 24)).save(tmp_path / "wide.png")
    assert "must be square" in _error([tmp_path / "wide.png"], resolution=8)
    Image.new("RGBA", (32, 32)).save(tmp_path / "empty.png")
    assert "mask is empty" in _error([tmp_path / "empty.png"], resolution=32)
    Image.new("L", (16, 16)).save(tmp_path / "small_mask.png")
    assert "they must match" in _error([tmp_path / "rgb.png"], masks=[tmp_path / "small_mask.png"], resolution=32)
    assert "no such file" in _error([paths[0]], tmp_path / "missing.json", resolution=32)


# ------------------------------------------------------------------------------------------------- symmetry


def test_mirrored_poses_against_hand_computation():
    # reflection across the vertical plane at azimuth phi: a -> 2 phi - a (wrapped to [-180, 180))
    assert mirror_azimuth(torch.tensor([30.0, 170.0, -180.0])).tolist() == [-30.0, -170.0, -180.0]
    assert mirror_azimuth(torch.tensor([30.0, 0.0]), 45.0).tolist() == [60.0, 90.0]
    p = torch.tensor([[1.0, 2.0, 3.0]])
    assert mirror_points(p).tolist() == [[1.0, -2.0, 3.0]]  # plane xz: y -> -y
    assert torch.allclose(mirror_points(p, 90.0), torch.tensor([[-1.0, 2.0, 3.0]]), atol=1e-6)  # plane yz
    assert torch.allclose(mirror_points(p, 45.0), torch.tensor([[2.0, 1.0, 3.0]]), atol=1e-6)  # plane x = y
    cameras = cams([30.0, -120.0, 75.0], [10.0, -5.0, 40.0])
    for phi in (0.0, 45.0, -30.0):
        mirrored = mirror_cameras(cameras, phi)
        assert torch.allclose(mirrored.positions(), mirror_points(cameras.positions(), phi), atol=1e-5)
        assert torch.equal(mirrored.elevation_deg, cameras.elevation_deg)
        # the mirrored camera's frame is the reflected frame with its x (right) axis negated: a horizontal flip
        c2w, reflected = cameras.c2w()[:, :3, :3], mirrored.c2w()[:, :3, :3]
        n = torch.tensor([-math.sin(math.radians(phi)), math.cos(math.radians(phi)), 0.0])  # the plane's normal
        m = torch.eye(3) - 2 * torch.outer(n, n)
        expected = m @ c2w @ torch.diag(torch.tensor([-1.0, 1.0, 1.0]))
        assert torch.allclose(reflected, expected, atol=1e-5)


@pytest.mark.parametrize("shape, phi", [("cube", 45.0), ("cone", 20.0)])
def test_the_mirrored_pose_sees_the_flipped_image_of_a_symmetric_primitive(shape, phi, monkeypatch):
    cameras = cams([35.0, -100.0], [20.0, 5.0])
    ids = torch.full((2,), SHAPES.index(shape))
    silhouette = render_silhouette(ids, cameras, 24)
    assert torch.equal(render_silhouette(ids, mirror_cameras(cameras, phi), 24), mirror_images(silhouette))
    # shading is lit from azimuth 20 in the world; a light in the plane makes the lighting symmetric too (up to one
    # pixel at the cone's apex, where the finite-difference normal is not equivariant)
    colours = torch.zeros(4, dtype=torch.long)
    both = cat_cameras(cameras, mirror_cameras(cameras, phi))
    monkeypatch.setattr(render_module, "LIGHT_AZIMUTH_DEG", phi)
    image, mirrored = render(ids.repeat(2), colours, both, 24).chunk(2)
    assert (image - 1).abs().sum() > 100  # the object is in view
    assert (mirrored - mirror_images(image)).abs().max() < 0.02
    monkeypatch.setattr(render_module, "LIGHT_AZIMUTH_DEG", phi + 60.0)  # and a light off the plane breaks it
    image, mirrored = render(ids.repeat(2), colours, both, 24).chunk(2)
    assert (mirrored - mirror_images(image)).abs().max() > 0.1


def test_symmetric_density_is_symmetric_and_trains():
    torch.manual_seed(0)
    nerf = make_symmetric(NeRF(tiny_nerf()), 30.0)
    with torch.no_grad():
        for p in nerf.field.encoding.parameters():
            p.normal_(0, 0.5)  # a random, asymmetric table
    points = torch.rand(256, 3) * 1.6 - 0.8
    out, mirrored = nerf.field(points), nerf.field(mirror_points(points, 30.0))
    assert torch.allclose(out["density"], mirrored["density"], atol=1e-5)
    assert torch.allclose(out["rgb"], mirrored["rgb"], atol=1e-6)
    grid, network = nerf.field.parameter_groups()
    assert len(grid) == 1 and len(network) == 6
    plain = NeRF(tiny_nerf())
    with torch.no_grad():
        plain.field.encoding.tables.copy_(nerf.field.encoding.inner.tables)
        plain.field.mlp.load_state_dict(nerf.field.mlp.state_dict())
    assert not torch.allclose(plain.field(points)["density"], plain.field(mirror_points(points, 30.0))["density"])


def _as_matrix(element) -> torch.Tensor:
    return transform_points(torch.eye(3), element).T  # columns: the images of the basis vectors


def test_symmetry_group_is_the_dihedral_group_of_its_planes():
    # D_2 with planes at 0 and 90: identity, the half turn, and the reflections y -> -y and x -> -x
    group = symmetry_group(2)
    assert group == [(False, 0.0), (False, 180.0), (True, 0.0), (True, 90.0)]
    expected = [torch.diag(torch.tensor(d)) for d in ([1.0, 1, 1], [-1.0, -1, 1], [1.0, -1, 1], [-1.0, 1, 1])]
    for element, matrix in zip(group, expected):
        assert torch.allclose(_as_matrix(element), matrix, atol=1e-6)
    assert symmetry_group(1, 30.0) == [(False, 0.0), (True, 30.0)]  # DreamCar's single plane
    with pytest.raises(ValueError, match="symmetry planes = 0"):
        symmetry_group(0)
    # closed under composition, 2 n distinct elements, for planes that do not start at azimuth 0 too
    for planes, phi in ((2, 0.0), (3, 20.0), (4, -45.0)):
        matrices = [_as_matrix(g) for g in symmetry_group(planes, phi)]
        assert len(matrices) == 2 * planes
        for a in matrices:
            for b in matrices:
                assert any(torch.allclose(a @ b, c, atol=1e-5) for c in matrices)
        distinct = {tuple(m.flatten().round(decimals=4).tolist()) for m in matrices}
        assert len(distinct) == 2 * planes


def test_a_symmetry_moves_the_camera_and_the_image_alike():
    cameras = cams([35.0, -100.0], [20.0, 5.0])
    for element in symmetry_group(2, 0.0) + symmetry_group(3, 20.0):
        moved = transform_cameras(cameras, element)
        assert torch.allclose(moved.positions(), transform_points(cameras.positions(), element), atol=1e-5)
    # the axis-aligned cube has both planes at 0 and 90: every moved camera sees the (flipped) original silhouette
    ids = torch.full((2,), SHAPES.index("cube"))
    silhouette = render_silhouette(ids, cameras, 24)
    for element in symmetry_group(2):
        seen = render_silhouette(ids, transform_cameras(cameras, element), 24)
        assert torch.equal(seen, transform_images(silhouette, element)), element
    # a rotation by 90 degrees is a symmetry of the cube too, but 3 planes 60 degrees apart are not
    assert torch.equal(render_silhouette(ids, transform_cameras(cameras, (False, 90.0)), 24), silhouette)
    assert not torch.equal(render_silhouette(ids, transform_cameras(cameras, (False, 120.0)), 24), silhouette)


@pytest.mark.parametrize("planes", [2, 3, 4])
def test_symmetric_density_with_several_planes_is_invariant_under_the_whole_group(planes):
    torch.manual_seed(0)
    nerf = make_symmetric(NeRF(tiny_nerf()), 10.0, planes)
    with torch.no_grad():
        for p in nerf.field.encoding.parameters():
            p.normal_(0, 0.5)
    points = torch.rand(256, 3) * 1.2 - 0.6
    out = nerf.field(points)
    for element in symmetry_group(planes, 10.0)[1:]:
        moved = nerf.field(transform_points(points, element))
        assert torch.allclose(out["density"], moved["density"], atol=1e-4), element
        assert torch.allclose(out["rgb"], moved["rgb"], atol=1e-5), element
    one_plane = make_symmetric(NeRF(tiny_nerf()), 10.0, 1)
    with torch.no_grad():
        one_plane.field.encoding.inner.tables.copy_(nerf.field.encoding.inner.tables)
        one_plane.field.mlp.load_state_dict(nerf.field.mlp.state_dict())
    half_turn = (False, 360.0 / planes)  # a rotation of the n-plane group is not a symmetry of the one-plane field
    assert not torch.allclose(
        one_plane.field(points)["density"], one_plane.field(transform_points(points, half_turn))["density"]
    )


# ------------------------------------------------------------------------------------------------- pose refinement


class BlobField(nn.Module):
    """A fixed, asymmetric field: four coloured Gaussian blobs (density 30 at their centres)."""

    def __init__(self):
        super().__init__()
        self.config, self.region_prior = FieldConfig(), None
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)  # NeRF.device reads a parameter
        self.register_buffer(
            "centres", torch.tensor([[0.0, 0, 0], [0.3, 0.25, 0.1], [-0.2, -0.3, 0.3], [0.1, -0.1, -0.35]])
        )
        self.register_buffer(
            "colours", torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.2, 0.3, 1.0], [0.9, 0.9, 0.1]])
        )

    def _weights(self, p):
        return 30.0 * torch.exp(-((p[..., None, :] - self.centres) ** 2).sum(-1) / (2 * 0.18**2))

    def get_density(self, p):
        return self._weights(p).sum(-1)

    def forward(self, p):
        w = self._weights(p)
        rgb = (w[..., None] * self.colours).sum(-2) / w.sum(-1, keepdim=True).clamp_min(1e-6)
        return {"density": w.sum(-1), "rgb": rgb}


@pytest.mark.parametrize("shading", ["albedo", "lambert"])
def test_pose_corrections_recover_a_known_perturbation(shading):
    """On a fixed field, the corrections alone bring perturbed cameras back to the ones that rendered the targets;
    with Lambert shading too (its normals need the samples' positions as a leaf of their own graph, which must not
    cut the cameras' gradient: it did until 2026-12-05)."""
    torch.manual_seed(0)
    nerf = NeRF(NeRFConfig(occupancy_resolution=0, num_samples=32, shading=shading))
    nerf.field = BlobField()
    truth = Cameras(
        torch.tensor([20.0, 110.0]), torch.tensor([10.0, 25.0]), torch.tensor([2.8, 2.6]), torch.full((2,), 40.0)
    )
    with torch.no_grad():
        target = nerf.render(truth, 32, stratified=False)
    start = Cameras(
        truth.azimuth_deg + torch.tensor([6.0, -5.0]),
        truth.elevation_deg + torch.tensor([-4.0, 5.0]),
        truth.distance * torch.tensor([1.06, 0.94]),
        truth.fov_deg,
    )
    poses = PoseCorrections(2, anchor=None)
    optimizer = torch.optim.Adam(poses.parameters(), lr=1e-2)
    for _ in range(80):
        out = nerf.render(poses(start), 32, stratified=False)
        loss = (out["rgb"] - target["rgb"]).square().mean() + (out["opacity"] - target["opacity"]).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert angular_errors(start, truth).min() > 6.0
    assert angular_errors(poses(start), truth).max() < 0.5
    assert torch.allclose(poses(start).distance, truth.distance, rtol=5e-3)
    degrees = poses.degrees()
    assert degrees["azimuth_deg"] == pytest.approx([-6.0, 5.0], abs=0.5)
    assert degrees["distance_percent"] == pytest.approx([100 / 1.06 - 100, 100 / 0.94 - 100], abs=0.5)
    anchored = PoseCorrections(2, anchor=0)
    with torch.no_grad():
        anchored.delta.fill_(0.1)
    assert torch.equal(anchored(truth).azimuth_deg[:1], truth.azimuth_deg[:1])  # the anchor view never moves


# ------------------------------------------------------------------------------------------------- the loop


def _config(paths, cameras_file, **overrides) -> ImageTo3DConfig:
    values = dict(
        images=tuple(str(p) for p in paths),
        cameras=str(cameras_file) if cameras_file else None,
        reference_resolution=32,
        start_resolution=16,
        steps=6,
        nerf=tiny_nerf(),
        preview_every=0,
        checkpoint_every=0,
    )
    values.update(overrides)
    return ImageTo3DConfig(**values)


def test_reference_losses_fall_and_resume_is_exact(cube_views, tmp_path):
    from sdtoolkit.image_to_3d.trainer import train

    folder, paths, _ = cube_views
    cams_file = tmp_path / "cams.json"
    data = json.loads((folder / "cams.json").read_text())
    data["approximate"] = True
    data["views"] = [dict(v, image=str(p)) for v, p in zip(data["views"], paths)]
    cams_file.write_text(json.dumps(data))
    options = dict(mirror_views=True, symmetric_density=True, steps=30, resolution_warmup=0.2)
    config = _config(paths, cams_file, **options)
    run = train(config, tmp_path / "full", progress=False)
    assert run.poses is not None and run.poses.free.flatten().tolist() == [0.0, 1.0]  # approximate: refined
    assert isinstance(run.nerf.field.encoding, SymmetricEncoding)
    first, last = run.history[0]["loss_reference"], run.history[-1]["loss_reference"]
    assert last < 0.5 * first, (first, last)
    short = _config(paths, cams_file, **options)
    train(short, tmp_path / "split", progress=False, stop_at=17)
    resumed = train(short, tmp_path / "split", progress=False, resume=True)
    for a, b in zip(run.nerf.state_dict().values(), resumed.nerf.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(run.poses.delta, resumed.poses.delta) and run.poses.delta.abs().sum() > 0


def test_folding_maps_every_image_of_a_point_to_one_point_of_the_wedge():
    torch.manual_seed(0)
    p = torch.randn(500, 3)
    # two planes at 0 and 90: (|x|, |y|, z), as the docstring says
    assert torch.allclose(fold_points(p, 2), torch.stack([p[:, 0].abs(), p[:, 1].abs(), p[:, 2]], -1), atol=1e-5)
    for planes, phi in ((1, 0.0), (1, 30.0), (2, 0.0), (3, 20.0), (4, -45.0)):
        folded = fold_points(p, planes, phi)
        assert torch.allclose(folded.norm(dim=-1), p.norm(dim=-1), atol=1e-5)  # an isometry of each point
        for element in symmetry_group(planes, phi)[1:]:
            assert torch.allclose(fold_points(transform_points(p, element), planes, phi), folded, atol=1e-4)
        # the wedge: azimuth within [phi, phi + 180 / n]
        azimuth = torch.remainder(torch.rad2deg(torch.atan2(folded[:, 1], folded[:, 0])) - phi, 360.0)
        assert (azimuth <= 180.0 / planes + 1e-3).all()
    x = torch.zeros(1, 3, requires_grad=True)  # on the axis: finite values and gradients
    fold_points(x, 2).sum().backward()
    assert torch.isfinite(x.grad).all()
    # and finite second derivatives on and near it (Lambert shading differentiates the normals again when the
    # cameras are learnt; these were inf or NaN within 1e-9 of the axis)
    for r in (0.0, 1e-9, 1e-6, 1e-3):
        q = torch.tensor([[r, 0.5 * r, 0.3]], requires_grad=True)
        (grad,) = torch.autograd.grad(fold_points(q, 4).square().sum(), q, create_graph=True)
        (second,) = torch.autograd.grad(grad.sum(), q)
        assert torch.isfinite(second).all() and second.abs().max() < 10, (r, second)


@pytest.mark.parametrize("planes", [2, 4])
def test_a_folded_field_is_invariant_with_one_encoding_query(planes):
    torch.manual_seed(0)
    nerf = make_symmetric(NeRF(tiny_nerf()), 0.0, planes, method="fold")
    calls = []
    nerf.field.encoding.inner.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    with torch.no_grad():
        for q in nerf.field.encoding.parameters():
            q.normal_(0, 0.5)
    points = torch.rand(256, 3) * 1.2 - 0.6
    out = nerf.field(points)
    assert calls == [torch.Size([256, 3])]  # one query, not 2 n
    for element in symmetry_group(planes)[1:]:
        assert torch.allclose(nerf.field(transform_points(points, element))["density"], out["density"], atol=1e-4)
    with pytest.raises(ValueError, match="choose one of average, fold"):
        make_symmetric(NeRF(tiny_nerf()), 0.0, 2, method="median")


def test_mirror_views_of_two_planes_add_three_moved_copies_of_every_reference(cube_views):
    from sdtoolkit.image_to_3d.trainer import setup

    folder, paths, _ = cube_views
    options = dict(mirror_views=True, symmetric_density=True, symmetry_planes=2)
    config = _config(paths, folder / "cams.json", **options)
    run = setup(config)
    assert run.nerf.field.encoding.planes == 2
    cameras = run.reference_cameras()
    rgb, mask = run.targets(16)
    assert len(cameras.azimuth_deg) == len(rgb) == len(mask) == run.num_reference_views == 8  # 2 refs x |D_2|
    given = run.references.cameras.azimuth_deg
    # order: the references, then the half turn, then the reflections across the planes at 0 and 90
    expected = torch.cat([given, given + 180.0, -given, 180.0 - given])
    assert torch.allclose(torch.cos(torch.deg2rad(cameras.azimuth_deg)), torch.cos(torch.deg2rad(expected)), atol=1e-6)
    assert torch.equal(rgb[2:4], rgb[:2]) and torch.equal(rgb[4:6], rgb[:2].flip(-1))
    folded = setup(_config(paths, folder / "cams.json", **options, symmetry_method="fold"))
    assert type(folded.nerf.field.encoding).__name__ == "FoldedEncoding" and folded.nerf.field.encoding.planes == 2


def test_coarse_to_fine_levels_switch_on_one_by_one_and_all_are_on_at_the_end(cube_views, tmp_path, monkeypatch):
    import sdtoolkit.image_to_3d.trainer as trainer

    folder, paths, _ = cube_views
    seen = []
    original = trainer.set_levels
    monkeypatch.setattr(trainer, "set_levels", lambda nerf, levels: (seen.append(levels), original(nerf, levels)))
    config = _config(paths[:1], None, steps=8, start_levels=1, levels_warmup=0.5)
    run = trainer.train(config, tmp_path / "run", progress=False)
    levels = run.nerf.field.encoding.num_levels
    assert levels == 4 and seen == [1, 1, 2, 3, 4, 4, 4, 4]  # 1 at first, all from half the steps on
    assert run.nerf.field.encoding.active_levels == levels  # the export sees every level
    with pytest.raises(ValueError, match="start_levels .* applies to the 'hash' representation, not 'mlp'"):
        _config(paths[:1], None, start_levels=1, nerf=NeRFConfig(representation="mlp"))


@pytest.mark.parametrize("method", ["average", "fold"])
def test_coarse_to_fine_levels_reach_the_hash_grid_inside_a_symmetric_field(cube_views, tmp_path, method):
    """--start-levels with --symmetric-density: the wrapper passes the level switch to the hash grid it wraps (it
    raised AttributeError at step 0 before), and a field with only the coarsest level differs from the full one."""
    import sdtoolkit.image_to_3d.trainer as trainer

    folder, paths, _ = cube_views
    options = dict(symmetric_density=True, symmetry_planes=4, symmetry_method=method)
    config = _config(paths[:1], None, steps=4, start_levels=1, levels_warmup=0.5, **options)
    run = trainer.train(config, tmp_path / "run", progress=False)
    wrapper = run.nerf.field.encoding
    assert type(wrapper).__name__ == ("FoldedEncoding" if method == "fold" else "SymmetricEncoding")
    assert wrapper.num_levels == wrapper.inner.num_levels == 4 and wrapper.inner.active_levels == 4
    points = torch.rand(64, 3, generator=torch.Generator().manual_seed(0))
    full = wrapper(points)
    trainer.set_levels(run.nerf, 1)
    assert wrapper.inner.active_levels == 1 and not torch.allclose(wrapper(points), full)


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_end_to_end_at_tiny_size(cube_views, tmp_path, capsys):
    import trimesh

    from sdtoolkit.cli import main
    from sdtoolkit.testing import tiny_sd_pipeline

    folder, paths, _ = cube_views
    prior = tmp_path / "prior"
    tiny_sd_pipeline().save_pretrained(prior)
    out = tmp_path / "asset"
    base = ["image-to-3d", str(paths[0]), str(paths[1]), "--cameras", str(folder / "cams.json"), "--output", str(out)]
    Image.open(paths[0]).convert("RGB").save(tmp_path / "rgb.png")
    for argv, message in [
        (["image-to-3d", str(tmp_path / "rgb.png"), "--output", str(out)], "no alpha channel and no mask"),
        ([*base[:3], "--output", str(out)], "need a cameras file"),
        ([*base, "--reference-resolution", "24"], "multiple of the reference resolution 24"),
        ([*base, "--lambda-rgb", "-1"], "--lambda-rgb -1.0: must be >= 0"),
        ([*base, "--symmetry-planes", "0"], "--symmetry-planes 0: must be in [1, 8]"),
        ([*base, "--symmetry-planes", "2"], "symmetry_planes = 2 needs symmetric_density or mirror_views"),
        ([*base, "--symmetry-method", "fold"], "symmetry_method = 'fold' needs symmetric_density"),
    ]:
        capsys.readouterr()
        assert main(argv) == 2, argv
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines and all(message in line for line in lines), lines  # one line per problem (per image)
        assert not out.exists()
    tiny = ["--preset", "tiny", "--reference-resolution", "32", "--start-resolution", "16", "--quiet"]
    tiny += ["--prior", str(prior), "--resolution", "32", "--mesh-resolution", "24", "--video-frames", "2"]
    assert main([*base, *tiny, "--steps", "3", "--prompt", "a red cube", "--mirror-views"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 3 and len(summary["reference_psnr"]) == 2 and summary["poses"]["refined"] is None
    assert trimesh.load(out / "mesh.glb", force="mesh").vertices.shape[0] > 0
    assert (out / "references.png").is_file() and (out / "views.png").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["images"] == [str(p.absolute()) for p in paths[:2]] and config["mirror_views"] is True
    assert main(base + tiny + ["--steps", "3"]) != 0  # a previous asset is never overwritten silently
    capsys.readouterr()
    scores = tmp_path / "scores.json"
    truth = ["--true-cameras", str(folder / "cams.json")]
    (tmp_path / "loose.glb").write_bytes((out / "mesh.glb").read_bytes())
    assert main(["eval-3d", str(tmp_path / "loose.glb"), "--prompt", "a red cube", *truth]) == 2  # no run beside it
    assert "needs an image-to-3d output folder" in capsys.readouterr().err
    assert main(["eval-3d", str(out), *truth, "--out", str(scores)]) == 0
    poses = json.loads(scores.read_text())["poses"]
    assert poses["median_over_views"] == [0, 1] and max(poses["angle_deg"]) < 1e-3  # no refinement: the truth
    assert "poses, median over views [0, 1]: angle 0.00 deg (0.00 modulo symmetry)" in capsys.readouterr().out
    capsys.readouterr()
    resume = ["image-to-3d", "--resume", str(out), "--steps", "5", "--quiet", "--video-frames", "2"]
    assert main([*resume, "--vertex-colours", "shaded"]) == 2
    assert "choose one of field, delit" in capsys.readouterr().err
    # export settings may change on resume: floater removal keeps one piece (at most one holds half the surface)
    assert main([*resume, "--min-component-share", "0.5", "--vertex-colours", "delit"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 5
    assert len(trimesh.load(out / "mesh.ply").split(only_watertight=False)) == 1
    config = json.loads((out / "config.json").read_text())
    assert config["min_component_share"] == 0.5 and config["vertex_colours"] == "delit"
    assert main(["image-to-3d", "--resume", str(out), "--lambda-rgb", "5"]) == 2
    # the README's four-plane recipe: a folded signed-distance field started from the references' visual hull,
    # shaded by the world's light (its albedo is the mesh colour)
    d4 = tmp_path / "d4"
    symmetric = ["--symmetric-density", "--symmetry-planes", "4", "--symmetry-method", "fold"]
    hull = ["--nerf.field.geometry", "sdf", "--nerf.field.sdf-init", "visual-hull", "--nerf.shading", "lambert"]
    argv = [*base[:-1], str(d4), *tiny, "--steps", "2", *symmetric, *hull]
    assert main([*argv, "--vertex-colours", "delit"]) == 2  # delit divides out a light Lambert does not bake in
    assert main(argv) == 0
    config = json.loads((d4 / "config.json").read_text())
    assert config["symmetry_planes"] == 4 and config["nerf"]["shading"] == "lambert"
    assert config["nerf"]["field"]["sdf_init"] == "visual-hull"
    assert trimesh.load(d4 / "mesh.glb", force="mesh").vertices.shape[0] > 0
    # and from references with approximate poses (the README's three-reference line, its signed distance started
    # from the references' visual hull): the cameras are refined
    approximate = dict(json.loads((folder / "cams.json").read_text()), approximate=True)
    (tmp_path / "approx.json").write_text(json.dumps(approximate))
    references = [str(paths[0]), str(paths[1]), "--cameras", str(tmp_path / "approx.json")]
    argv = ["image-to-3d", *references, "--output", str(tmp_path / "d4-3"), *tiny, "--steps", "2", *symmetric]
    capsys.readouterr()
    assert main([*argv, *hull]) == 0
    poses = json.loads(capsys.readouterr().out)["poses"]
    assert poses["refined"] is not None and len(poses["corrections"]["azimuth_deg"]) == 2
    assert json.loads((tmp_path / "d4-3" / "config.json").read_text())["nerf"]["field"]["sdf_init"] == "visual-hull"
    assert main(["text-to-3d", "a red cube", "--output", str(tmp_path / "t"), *hull]) == 2  # no references there
    assert "needs reference views" in capsys.readouterr().err and not (tmp_path / "t").exists()


def test_pose_errors_against_hand_computation():
    from sdtoolkit.image_to_3d.pose_errors import pose_errors, rotation_angle_deg, symmetric_angle_deg

    truth = cams([0.0, 120.0, 240.0], [15.0, 30.0, 5.0])
    # view 1: azimuth +7 (a rotation about z: 7 degrees); view 2: elevation -4 and azimuth +93, distance +10 %
    refined = Cameras(
        torch.tensor([0.0, 127.0, -27.0]),
        torch.tensor([15.0, 30.0, 1.0]),
        torch.tensor([2.8, 2.8, 3.08]),
        torch.full((3,), 40.0),
    )
    errors = pose_errors(refined, truth, "cube")
    assert errors["angle_deg"][:2] == pytest.approx([0.0, 7.0], abs=1e-3)
    assert errors["azimuth_deg"] == pytest.approx([0.0, 7.0, 93.0], abs=1e-3)
    assert errors["elevation_deg"] == pytest.approx([0.0, 0.0, -4.0], abs=1e-4)
    assert errors["distance_percent"] == pytest.approx([0.0, 0.0, 10.0], abs=1e-3)

    # a cube's quarter turns: view 2 is 3 degrees of azimuth and 4 of elevation from the true camera turned by 90
    def c2w(azimuth, elevation):
        return Cameras(*(torch.tensor([v], dtype=torch.float64) for v in (azimuth, elevation, 2.8, 40.0))).c2w()[
            0, :3, :3
        ]

    expected = float(rotation_angle_deg(c2w(-27, 1), c2w(-30, 5)))
    assert errors["symmetric_angle_deg"][2] == pytest.approx(expected, abs=1e-3)
    assert 4.0 < errors["symmetric_angle_deg"][2] < 5.0 and errors["symmetric_angle_deg"][1] == pytest.approx(7.0)
    # the median leaves out the anchor (view 0) and takes absolute values
    assert errors["median_over_views"] == [1, 2]
    assert errors["median"]["azimuth_deg"] == pytest.approx(50.0, abs=1e-3)
    # a solid of revolution: only the elevation counts; a sphere: nothing
    assert symmetric_angle_deg(refined, truth, "cone").tolist() == pytest.approx([0.0, 0.0, 4.0], abs=1e-3)
    assert symmetric_angle_deg(refined, truth, "sphere").tolist() == [0.0, 0.0, 0.0]
    # an elevation change alone is a rotation by that angle
    assert float(rotation_angle_deg(c2w(40, 10), c2w(40, 16))) == pytest.approx(6.0, abs=1e-3)
    with pytest.raises(ValueError, match="unknown shape 'teapot'"):
        symmetric_angle_deg(refined, truth, "teapot")


def test_zero123_relative_camera_against_hand_computation():
    from sdtoolkit.image_to_3d.novel_view import relative_camera

    reference = Cameras(torch.tensor([30.0]), torch.tensor([10.0]), torch.tensor([2.8]), torch.tensor([40.0]))
    target = Cameras(
        torch.tensor([-60.0, 170.0, 30.0]),
        torch.tensor([40.0, 10.0, -5.0]),
        torch.tensor([3.0, 2.8, 2.5]),
        torch.full((3,), 40.0),
    )
    # (polar: 90 - elevation, so -30 deg / 0 / +15 deg), azimuth -90 / 140 (= -220) / 0, distance +0.2 / 0 / -0.3
    expected = torch.tensor(
        [
            [-math.pi / 6, -1.0, 0.0, 0.2],
            [0.0, math.sin(math.radians(140)), math.cos(math.radians(140)), 0.0],
            [math.pi / 12, 0.0, 1.0, -0.3],
        ]
    )
    assert torch.allclose(relative_camera(reference, target), expected, atol=1e-6)
    seam = Cameras(torch.tensor([-175.0]), torch.tensor([10.0]), torch.tensor([2.8]), torch.tensor([40.0]))
    across = Cameras(torch.tensor([175.0]), torch.tensor([10.0]), torch.tensor([2.8]), torch.tensor([40.0]))
    assert torch.allclose(
        relative_camera(seam, across)[0, 1:3],
        torch.tensor([math.sin(math.radians(-10)), math.cos(math.radians(-10))]),
        atol=1e-6,
    )
