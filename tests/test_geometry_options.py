"""Cleaner text-to-3D geometry (issue 21): orientation and normal-smoothness regularisers on density-gradient
normals, depth variance, weight schedules, coarse-to-fine hash-grid levels, floater removal at extraction, Interval
Score Matching, and each option through the CLI at tiny size."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from sdtoolkit.core.denoiser import Denoiser
from sdtoolkit.nerf import FieldConfig, HashEncoding, NeRF, NeRFConfig
from sdtoolkit.nerf.fields import density_normals
from sdtoolkit.testing import tiny_sd_pipeline
from sdtoolkit.text_to_3d import TextTo3DConfig, from_dict, to_dict
from sdtoolkit.text_to_3d.config import RegularizerConfig, schedule_value
from sdtoolkit.text_to_3d.regularizers import (
    normal_smoothness_loss,
    orientation_loss,
    regularizer_losses,
)
from sdtoolkit.text_to_3d.trainer import current_levels


class BallField(nn.Module):
    """An analytic density: a solid ball of radius r (sigma = 50 sigmoid((r - |x|) / 0.05)), or its complement
    (`hollow`: density outside the ball, as if the surface were inside out). Outward normals of the ball are x/|x|."""

    def __init__(self, radius: float = 0.5, hollow: bool = False):
        super().__init__()
        self.radius, self.sign = radius, -1.0 if hollow else 1.0

    def get_density(self, positions):
        return 50 * torch.sigmoid(self.sign * (self.radius - positions.norm(dim=-1)) / 0.05)

    def normals(self, positions):
        positions = positions.detach().requires_grad_(True)
        return density_normals(self.get_density(positions), positions)


class SlabField(BallField):
    """Density rising along -z only (a planar surface z = 0 facing +z): every normal is (0, 0, 1)."""

    def get_density(self, positions):
        return 50 * torch.sigmoid(-positions[..., 2] / 0.05)


def _front_points(n: int = 64, radius: float = 0.5, generator=None):
    """Points on the half of the ball's surface that faces a camera on +z, and the rays' direction (-z)."""
    g = generator or torch.Generator().manual_seed(0)
    v = torch.randn(n, 3, generator=g)
    v[:, 2] = v[:, 2].abs() + 0.2
    points = radius * v / v.norm(dim=-1, keepdim=True)
    return points, torch.tensor([0.0, 0.0, -1.0]).expand(n, 3)


# ------------------------------------------------------------------------------------------------- regularisers


def test_density_normals_of_a_ball_point_outward():
    points, _ = _front_points()
    normals = BallField().normals(points)
    torch.testing.assert_close(normals, points / points.norm(dim=-1, keepdim=True), rtol=1e-4, atol=1e-4)


def test_orientation_loss_is_zero_facing_the_camera_and_positive_facing_away():
    points, directions = _front_points()
    weights = torch.full((len(points),), 0.5)
    facing = BallField().normals(points)  # the front of a solid ball: normals toward the camera
    assert orientation_loss(facing, directions, weights, num_pixels=4).item() == 0.0
    away = BallField(hollow=True).normals(points)  # the same surface inside out: normals away from the camera
    dots = (away * directions).sum(-1)
    expected = (weights * dots.clamp_min(0) ** 2).sum() / 4
    value = orientation_loss(away, directions, weights, num_pixels=4)
    assert value.item() > 0.1
    torch.testing.assert_close(value, expected)
    # weights are stop-gradient (DreamFusion: sg(w_i)); the normals carry the gradient
    w = weights.clone().requires_grad_(True)
    n = away.detach().clone().requires_grad_(True)
    orientation_loss(n, directions, w, 4).backward()
    assert w.grad is None and n.grad.abs().sum() > 0


def test_normal_smoothness_is_zero_on_a_plane_and_grows_with_curvature():
    points, _ = _front_points()
    weights = torch.ones(len(points))
    plane = SlabField()
    g = torch.Generator().manual_seed(1)
    flat = normal_smoothness_loss(plane, points, plane.normals(points), weights, 0.05, 1, g)
    assert flat.item() < 1e-8
    losses = []
    for radius in (0.8, 0.3):  # same offsets, smaller ball = more curvature = neighbours disagree more
        ball = BallField(radius)
        on_surface = radius * points / points.norm(dim=-1, keepdim=True)
        g = torch.Generator().manual_seed(1)
        losses.append(normal_smoothness_loss(ball, on_surface, ball.normals(on_surface), weights, 0.05, 1, g).item())
    assert 0 < losses[0] < losses[1]


def test_depth_variance_is_zero_for_a_hard_surface_and_grows_with_fog():
    from sdtoolkit.nerf.renderers import render_depth_variance, render_weights
    from sdtoolkit.nerf.samplers import RaySamples
    from sdtoolkit.text_to_3d.regularizers import depth_variance_loss

    starts = torch.linspace(0, 1.9, 20).expand(3, 20)
    samples = RaySamples(starts, starts + 0.1)
    sigma = torch.zeros(3, 20)
    sigma[0, 10] = 1e4  # a hard surface: all the weight in one interval
    sigma[1, 5:15] = 2.0  # fog over a unit of depth
    sigma[2, 2:18] = 2.0  # thinner fog over more depth
    weights = render_weights(sigma, samples)
    variance = render_depth_variance(weights, samples)
    assert variance[0].item() < 1e-6 and 0 < variance[1] < variance[2]
    mids = samples.midpoints[1]
    depth = (weights[1] * mids).sum() / weights[1].sum()
    torch.testing.assert_close(variance[1], (weights[1] * (mids - depth) ** 2).sum())
    # the loss averages over the pixels more than half opaque only
    opacity = weights.sum(-1)
    assert opacity[0] > 0.5 and opacity[1] > 0.5
    expected = variance[opacity > 0.5].mean()
    torch.testing.assert_close(depth_variance_loss(variance, opacity), expected)
    assert depth_variance_loss(variance, torch.zeros(3)).item() == 0.0


def _tiny_nerf_config() -> NeRFConfig:
    return NeRFConfig(
        field=FieldConfig(num_levels=4, max_res=32, log2_hashmap_size=12, hidden_dim=16),
        num_samples=16,
        occupancy_resolution=16,
    )


def test_normal_regularisers_train_the_hash_grid_through_a_render():
    """The orientation and smoothness losses of a real render reach the hash tables (a double backward through the
    torch hash grid) and the MLP."""
    from sdtoolkit.data.cameras import turntable_cameras

    torch.manual_seed(0)
    nerf = NeRF(_tiny_nerf_config())
    out = nerf.render(turntable_cameras(1), 12, compute_normals=True, generator=torch.Generator().manual_seed(0))
    assert out["packed_normals"].shape == out["packed_positions"].shape
    config = RegularizerConfig(lambda_entropy=0.0, lambda_orient=1.0, lambda_normal_smooth=1.0)
    losses = regularizer_losses(config, out, 0.5, nerf.field, torch.Generator().manual_seed(0))
    assert set(losses) == {"loss_orient", "loss_normal_smooth"}
    assert out["depth_variance"].shape == out["opacity"].shape
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert nerf.field.encoding.tables.grad.abs().sum() > 0
    assert nerf.field.mlp[0].weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------- schedules


def test_schedule_values_at_given_steps():
    ramp = (0.1, 0.0, 2.0, 0.5)  # [start, start value, end value, end], start/end as fractions of the steps
    assert schedule_value(ramp, 0.0) == 0.0
    assert schedule_value(ramp, 0.1) == 0.0
    assert schedule_value(ramp, 0.3) == pytest.approx(1.0)
    assert schedule_value(ramp, 0.5) == 2.0
    assert schedule_value(ramp, 1.0) == 2.0
    assert schedule_value((0.5, 1.0, 3.0, 0.5), 0.49) == 1.0  # a step at 0.5
    assert schedule_value((0.5, 1.0, 3.0, 0.5), 0.5) == 3.0
    config = RegularizerConfig(lambda_opacity=0.7, entropy_schedule=(0.0, 0.0, 0.1, 1.0))
    assert config.weight("opacity", 0.9) == 0.7  # no schedule: the constant
    assert config.weight("entropy", 0.25) == pytest.approx(0.025)
    assert config.weight("entropy", 0.0) == 0.0
    assert not config.needs_normals(0.0)
    assert RegularizerConfig(orient_schedule=(0.5, 0.0, 1.0, 1.0)).needs_normals(0.6)
    assert not RegularizerConfig(orient_schedule=(0.5, 0.0, 1.0, 1.0)).needs_normals(0.2)
    with pytest.raises(ValueError, match="start <= end"):
        RegularizerConfig(opacity_schedule=(0.8, 0.0, 1.0, 0.2))


def test_scheduled_weights_scale_the_losses():
    out = {"opacity": torch.full((1, 1, 4, 4), 0.3)}
    config = RegularizerConfig(lambda_entropy=0.0, opacity_schedule=(0.0, 0.0, 1.0, 1.0))
    assert "loss_opacity" not in regularizer_losses(config, out, 0.0)  # weight 0 at the start: not even computed
    half = regularizer_losses(config, out, 0.5)["loss_opacity"]
    full = regularizer_losses(config, out, 1.0)["loss_opacity"]
    torch.testing.assert_close(full, 2 * half)
    torch.testing.assert_close(full, torch.tensor((0.09 + 0.01) ** 0.5))


def test_coarse_to_fine_levels_at_given_steps():
    config = TextTo3DConfig(prompt="x", prior="tiny", steps=400, start_levels=2, levels_warmup=0.5)
    assert [current_levels(config, s, 6) for s in (0, 49, 50, 100, 150, 199, 200, 399)] == [2, 2, 3, 4, 5, 5, 6, 6]
    assert current_levels(TextTo3DConfig(prompt="x", prior="tiny"), 0, 6) == 6  # off: every level
    assert current_levels(TextTo3DConfig(prompt="x", prior="tiny", start_levels=9), 0, 6) == 6
    with pytest.raises(ValueError, match="'hash' representation"):
        TextTo3DConfig(prompt="x", prior="tiny", start_levels=2, nerf=NeRFConfig(representation="mlp"))


def test_masked_hash_levels_encode_to_zero_and_get_no_gradient():
    encoding = HashEncoding(num_levels=4, features_per_level=2, log2_hashmap_size=10, min_res=4, max_res=32)
    encoding.tables.data.uniform_(-1, 1)
    x = torch.rand(50, 3)
    full = encoding(x).reshape(50, 4, 2)
    encoding.set_active_levels(2)
    coarse = encoding(x).reshape(50, 4, 2)
    torch.testing.assert_close(coarse[:, :2], full[:, :2])
    assert torch.equal(coarse[:, 2:], torch.zeros_like(coarse[:, 2:]))
    coarse.sum().backward()
    assert encoding.tables.grad[2:].abs().sum() == 0 and encoding.tables.grad[:2].abs().sum() > 0
    encoding.set_active_levels(99)
    assert encoding.active_levels == 4
    assert "active_levels" not in str(list(encoding.state_dict()))  # a schedule's state, not a weight


# ------------------------------------------------------------------------------------------------- floaters


def _two_piece_mesh():
    import trimesh

    big = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    small = trimesh.creation.box(extents=(0.2, 0.2, 0.2))
    small.apply_translation((2.0, 0.0, 0.0))
    mesh = trimesh.util.concatenate([big, small])
    colours = np.tile(np.array([[200, 10, 10, 255]], dtype=np.uint8), (len(mesh.vertices), 1))
    colours[len(big.vertices) :] = (10, 10, 200, 255)
    mesh.visual.vertex_colors = colours
    mesh.metadata["iso_level"] = 1.5
    return mesh


def test_floater_removal_keeps_the_big_piece():
    pytest.importorskip("trimesh")
    from sdtoolkit.text_to_3d.export import remove_floaters

    mesh = _two_piece_mesh()
    assert len(mesh.split(only_watertight=False)) == 2
    cleaned = remove_floaters(mesh, 0.05)  # the small cube is 0.24 / 6.24 = 3.8 % of the surface
    assert len(cleaned.split(only_watertight=False)) == 1
    assert cleaned.area == pytest.approx(6.0)
    assert cleaned.metadata["removed_components"] == 1 and cleaned.metadata["iso_level"] == 1.5
    assert (cleaned.visual.vertex_colors[:, :3] == (200, 10, 10)).all()  # the colours of the piece kept
    kept = remove_floaters(mesh, 0.01)  # below the small piece's share: both stay
    assert len(kept.split(only_watertight=False)) == 2 and kept.metadata["removed_components"] == 0
    only = remove_floaters(mesh, 1.0)  # the largest piece always stays
    assert only.area == pytest.approx(6.0)


def test_layout_extraction_removes_floaters_per_box():
    pytest.importorskip("mcubes")
    from sdtoolkit.text_to_3d.export import extract_layout_mesh, extract_mesh
    from sdtoolkit.text_to_3d.guidance import parse_layout

    layout = parse_layout(
        {
            "scene_bound": 1.0,
            "objects": [
                {"prompt": "a red cube", "box": {"center": [0, -0.5, 0], "size": [0.8, 0.8, 0.8]}},
                {"prompt": "a blue sphere", "box": {"center": [0, 0.5, 0], "size": [0.8, 0.8, 0.8]}},
            ],
        }
    )

    class FloaterField:
        """A cube and a small floater in the first box; a smaller sphere and its own floater in the second. The
        sphere holds about 26 % of the whole surface, so a share of 30 % against the whole mesh would drop it:
        removal is per box."""

        def density_grid(self, resolution):
            half = 1.0 / resolution
            axis = torch.linspace(-1 + half, 1 - half, resolution)
            x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
            cube = (x.abs() < 0.2) & ((y + 0.5).abs() < 0.2) & (z.abs() < 0.2)
            floater_a = ((x - 0.32) ** 2 + (y + 0.5) ** 2 + (z - 0.32) ** 2).sqrt() < 0.06
            sphere = (x**2 + (y - 0.5) ** 2 + z**2).sqrt() < 0.15
            floater_b = ((x + 0.32) ** 2 + (y - 0.5) ** 2 + (z + 0.32) ** 2).sqrt() < 0.06
            density = (cube | floater_a | sphere | floater_b).float() * 100.0
            return density, torch.tensor([axis[0].item(), axis[-1].item()])

        def colours_at(self, positions):
            red, blue = torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.2, 0.35, 1.0])
            return torch.where((positions[:, 1:2] > 0), blue, red)

    field = FloaterField()
    assert len(extract_mesh(field, 64).split(only_watertight=False)) == 4
    raw = extract_layout_mesh(field, layout, 64)
    assert len(raw.split(only_watertight=False)) == 4
    areas = sorted(p.area for p in raw.split(only_watertight=False))
    assert areas[2] / sum(areas) < 0.3  # the sphere
    mesh = extract_layout_mesh(field, layout, 64, min_component_share=0.3)
    pieces = mesh.split(only_watertight=False)
    assert len(pieces) == 2  # each box keeps its own object, the sphere too
    assert sorted(round(float(p.centroid[1]), 1) for p in pieces) == [-0.5, 0.5]
    assert [o["removed_components"] for o in mesh.metadata["objects"]] == [1, 1]


# ------------------------------------------------------------------------------------------------- ISM


@pytest.fixture(scope="module")
def pipe_and_denoiser():
    pipe = tiny_sd_pipeline()
    return pipe, Denoiser.from_pipeline(pipe).freeze()


def test_ism_gradient_matches_an_independent_computation(pipe_and_denoiser):
    """ISM's gradient against LucidDreamer's algorithm written out with the raw U-Net and alphas_cumprod: DDIM
    inversion of x0 with the empty prompt from timestep max(s - 5 * 200, 0) in strides of 200 to s = t - 80, one
    more step to t, then sqrt((1 - a_t) / a_t) (eps_u + 7.5 (eps_c - eps_u) at x_t - eps_u(x_s, s))."""
    from sdtoolkit.distill.score_distillation import sample_timesteps
    from sdtoolkit.text_to_3d.guidance import ISMConfig, build

    pipe, denoiser = pipe_and_denoiser
    guidance = build("ism", denoiser, ISMConfig(guidance_scale=7.5))
    latents = torch.randn(2, 4, 8, 8, requires_grad=True)
    cond, uncond = denoiser.encode_prompt(["a red cube, front view"])
    cond, uncond = cond.repeat_interleave(2), uncond.repeat_interleave(2)
    generator = torch.Generator().manual_seed(5)
    replay = copy.deepcopy(generator)
    out = guidance(latents, [(cond, uncond)], 0.4, generator=generator)
    (autograd,) = torch.autograd.grad(out.loss, latents)

    ac = pipe.scheduler.alphas_cumprod.double()
    t = sample_timesteps(denoiser.schedule, 2, 0.02, 0.98, generator=replay).long()
    eps = torch.randn(latents.shape, generator=replay)
    assert torch.equal(out.t.long(), t)

    def unet(x, step, text):
        steps = torch.full((len(x),), float(step))
        return pipe.unet(x.float(), steps, encoder_hidden_states=text).sample.double()

    expected = []
    for i in range(2):
        x0, e = latents[i : i + 1].detach().double(), eps[i : i + 1].double()
        u, c = uncond.encoder_hidden_states[i : i + 1], cond.encoder_hidden_states[i : i + 1]
        s = max(int(t[i]) - 80, 0)
        current = max(s - 5 * 200, 0)
        x = ac[current].sqrt() * x0 + (1 - ac[current]).sqrt() * e
        while True:
            eps_u = unet(x, current, u)
            x0_hat = (x - (1 - ac[current]).sqrt() * eps_u) / ac[current].sqrt()
            if current == s:
                break
            following = min(current + 200, s)
            x = ac[following].sqrt() * x0_hat + (1 - ac[following]).sqrt() * eps_u
            current = following
        target = eps_u
        ti = int(t[i])
        x_t = ac[ti].sqrt() * x0_hat + (1 - ac[ti]).sqrt() * target
        eps_hat = unet(x_t, ti, u) + 7.5 * (unet(x_t, ti, c) - unet(x_t, ti, u))
        expected.append(((1 - ac[ti]) / ac[ti]).sqrt() * (eps_hat - target))
    expected = torch.cat(expected).float()
    # the loss averages over the batch: B * dL/dz is the per-sample gradient
    torch.testing.assert_close(autograd * 2, expected, rtol=1e-3, atol=1e-4)


def test_ism_target_is_not_sds_noise(pipe_and_denoiser):
    """ISM with a zero interval and no inversion steps beyond s is still not SDS: its target is the teacher's
    unconditional prediction at x_s, not the drawn noise."""
    from sdtoolkit.text_to_3d.guidance import ISMConfig, build

    _, denoiser = pipe_and_denoiser
    cond, uncond = denoiser.encode_prompt(["a red cube, front view"])
    latents = torch.randn(1, 4, 8, 8, requires_grad=True)
    ism = build("ism", denoiser, ISMConfig(guidance_scale=1.0, weighting="uniform"))
    out = ism(latents, [(cond, uncond)], 0.5, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and out.grad_norm > 0
    with pytest.raises(ValueError, match="weighting"):
        ISMConfig(weighting="magic")


def test_ism_defaults_per_prior():
    """LucidDreamer's settings for a Stable Diffusion prior; SDS's builtin tuning for the builtin teacher (measured:
    LucidDreamer's lost the blue sphere there)."""
    from sdtoolkit.text_to_3d.config import default_guidance

    hub = default_guidance("ism", "org/model")
    assert (hub.guidance_scale, hub.weighting, hub.timesteps.anneal) == (7.5, "ism", "none")
    assert (hub.interval, hub.inversion_stride, hub.inversion_steps) == (0.08, 0.2, 5)
    builtin = default_guidance("ism", "builtin:shapes")
    assert (builtin.guidance_scale, builtin.weighting, builtin.timesteps.anneal) == (20.0, "sds", "sqrt")


# ------------------------------------------------------------------------------------------------- CLI


def _run_cli(tiny_prior, out, extra):
    from sdtoolkit.cli import main

    args = ["text-to-3d", "a red cube", "--prior", str(tiny_prior), "--steps", "3", "--output", str(out)]
    args += ["--preset", "tiny", "--mesh-resolution", "24", "--video-frames", "2", "--quiet", *extra]
    return main(args)


def test_cli_geometry_options_reach_the_run(tiny_prior, tmp_path):
    import trimesh

    out = tmp_path / "run"
    extra = [
        "--lambda-orient", "0.1",
        "--regularizers.lambda-normal-smooth", "0.1",
        "--regularizers.normal-smooth-eps", "0.02",
        "--regularizers.opacity-schedule", "0", "0", "0.5", "1",
        "--regularizers.entropy-schedule", "0", "0.01", "0.1", "0.5",
        "--regularizers.orient-schedule", "0", "0", "1", "0.5",
        "--regularizers.z-variance-schedule", "0", "1", "2", "1",
        "--start-levels", "2",
        "--levels-warmup", "0.6",
        "--min-component-share", "0.05",
    ]  # fmt: skip
    assert _run_cli(tiny_prior, out, extra) == 0
    config = json.loads((out / "config.json").read_text())
    r = config["regularizers"]
    assert r["lambda_normal_smooth"] == 0.1 and r["normal_smooth_eps"] == 0.02 and r["lambda_orient"] == 0.1
    assert r["opacity_schedule"] == [0, 0, 0.5, 1] and r["entropy_schedule"] == [0, 0.01, 0.1, 0.5]
    assert r["orient_schedule"] == [0, 0, 1, 0.5] and r["z_variance_schedule"] == [0, 1, 2, 1]
    assert config["start_levels"] == 2 and config["levels_warmup"] == 0.6 and config["min_component_share"] == 0.05
    assert from_dict(config).regularizers.opacity_schedule == (0, 0, 0.5, 1)
    history = json.loads((out / "checkpoint.json").read_text())["history"]
    assert {"loss_orient", "loss_normal_smooth", "loss_opacity", "loss_entropy", "loss_z_variance"} <= set(history[-1])
    mesh = trimesh.load(out / "mesh.glb", force="mesh")
    pieces = mesh.split(only_watertight=False)
    areas = np.array([p.area for p in pieces])
    assert len(faces := mesh.faces) > 0 and (areas >= 0.05 * areas.sum() - 1e-9).all(), len(faces)


def test_cli_iso_mode_opacity_trains_and_re_extracts(tiny_prior, tmp_path):
    """`--iso-mode opacity` end to end: a run with it records the mode and exports a mesh; `--resume` of a finished
    solid run with it re-extracts without training (same step count) and records the new mode."""
    out = tmp_path / "iso"
    assert _run_cli(tiny_prior, out, ["--iso-mode", "opacity"]) == 0
    assert json.loads((out / "config.json").read_text())["iso_mode"] == "opacity"
    assert json.loads((out / "summary.json").read_text())["mesh_faces"] > 0
    solid = tmp_path / "solid"
    assert _run_cli(tiny_prior, solid, []) == 0
    before = json.loads((solid / "summary.json").read_text())
    from sdtoolkit.cli import main

    assert main(["text-to-3d", "--resume", str(solid), "--iso-mode", "opacity", "--quiet"]) == 0
    after = json.loads((solid / "summary.json").read_text())
    assert after["steps"] == before["steps"] == 3 and after["mesh_faces"] > 0
    assert json.loads((solid / "config.json").read_text())["iso_mode"] == "opacity"


def test_cli_ism_runs_end_to_end(tiny_prior, tmp_path):
    out = tmp_path / "ism"
    assert _run_cli(tiny_prior, out, ["--method", "ism", "--guidance.interval", "0.1"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "ism" and config["guidance_type"] == "ISMConfig"
    assert config["guidance"]["interval"] == 0.1 and config["guidance"]["inversion_steps"] == 5
    assert json.loads((out / "summary.json").read_text())["mesh_faces"] > 0
    assert to_dict(from_dict(config))["guidance"] == config["guidance"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--start-levels", "2", "--representation", "mlp"], "'hash' representation"),
        (["--regularizers.opacity-schedule", "0.8", "0", "1", "0.2"], "start <= end"),
        (["--min-component-share", "1.5"], "--min-component-share"),
        (["--method", "ism", "--weighting", "magic"], "--weighting"),
        (["--method", "sds", "--guidance.interval", "0.1"], "applies to ism"),
        (["--iso-mode", "foggy"], "unknown --iso-mode 'foggy'; choose one of solid, opacity"),
    ],
)
def test_cli_refuses_bad_geometry_options(tiny_prior, tmp_path, capsys, extra, message):
    out = tmp_path / "bad"
    assert _run_cli(tiny_prior, out, extra) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written
