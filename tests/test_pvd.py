"""Progressive Volume Distillation (`sdtoolkit.nerf.pvd`, `sdtoolkit convert-nerf`) and the representation registry
(`sdtoolkit.nerf.representations`), on tiny fields."""

import json

import pytest
import torch
from safetensors.torch import save_file

from sdtoolkit.cli.config_cli import to_dict
from sdtoolkit.nerf import NeRF, NeRFConfig
from sdtoolkit.nerf.colliders import RayBundle
from sdtoolkit.nerf.convert import TeacherError, convert, load_nerf_asset, setup, teacher_config, training_step
from sdtoolkit.nerf.pvd import (
    PVDConfig,
    build_student,
    clip_log_density,
    interval_points,
    point_weights,
    pvd_losses,
    random_rays,
    stage_of,
    teacher_points,
    teacher_ray_colours,
)
from sdtoolkit.nerf.representations import REPRESENTATIONS, MLPConfig, TensoRFConfig, VoxelConfig

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_FRONTS = {
    "mlp": MLPConfig(num_frequencies=3, width=16, depth=2),
    "tensorf": TensoRFConfig(resolution=12, components=4),
    "voxel": VoxelConfig(resolution=12, features=4),
}


def tiny_nerf_config(representation: str = "hash") -> NeRFConfig:
    config = NeRFConfig(num_samples=16, occupancy_resolution=16, representation=representation)
    config.field.num_levels, config.field.max_res, config.field.log2_hashmap_size = 4, 32, 12
    config.field.hidden_dim = 16
    config.mlp, config.tensorf, config.voxel = TINY_FRONTS["mlp"], TINY_FRONTS["tensorf"], TINY_FRONTS["voxel"]
    return config


def tiny_pvd(**overrides) -> PVDConfig:
    values = dict(
        to="tensorf",
        steps=6,
        stage1_steps=2,
        stage2_steps=4,
        rays_per_step=128,
        cameras_per_step=2,
        ray_resolution=16,
        checkpoint_every=0,
        **{k: v for k, v in TINY_FRONTS.items()},
    )
    values.update(overrides)
    return PVDConfig(**values)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A saved NeRF asset in text-to-3D's layout: a tiny hash NeRF whose hash tables were perturbed (so colour and
    density vary in space) and whose occupancy grid is up to date."""
    folder = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    config = tiny_nerf_config()
    nerf = NeRF(config)
    with torch.no_grad():
        nerf.field.encoding.tables.normal_(0, 0.5)
    nerf.update_occupancy(0, force=True)
    save_file(
        {f"nerf.{k}": v.contiguous() for k, v in nerf.state_dict().items()}, str(folder / "checkpoint.safetensors")
    )
    (folder / "config.json").write_text(
        json.dumps({"prompt": "a red cube", "nerf": to_dict(config), "background": [1, 1, 1]})
    )
    return folder


@pytest.mark.parametrize("name", ["hash", "mlp", "tensorf", "voxel"])
def test_registry_representation_forward_and_gradient(name):
    assert name in REPRESENTATIONS.names()
    nerf = NeRF(tiny_nerf_config(name))
    x = torch.rand(64, 3) * 1.6 - 0.8
    features = nerf.field.features(x)
    assert features.shape == (64, 16)  # every front ends in the shared feature width
    out = nerf.field(x)
    assert out["density"].shape == (64,) and out["rgb"].shape == (64, 3) and (out["density"] >= 0).all()
    (out["density"].mean() + out["rgb"].mean()).backward()
    for pname, p in nerf.field.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname
    grid, network = nerf.field.parameter_groups()
    assert len(grid) + len(network) == len(list(nerf.field.parameters()))


def test_hash_field_parameters_unchanged_by_the_registry():
    """The default hash field keeps its state-dict keys and its Adam groups (tables; MLP)."""
    nerf = NeRF(NeRFConfig())
    keys = [k for k in nerf.field.state_dict()]
    assert keys == ["encoding.tables", *[f"mlp.{i}.{w}" for i in (0, 2, 4) for w in ("weight", "bias")]]
    grid, network = nerf.field.parameter_groups()
    assert grid == [nerf.field.encoding.tables] and network == list(nerf.field.mlp.parameters())


def test_unknown_representation_lists_the_registered_ones():
    with pytest.raises(KeyError, match="registered: hash, mlp, tensorf, voxel"):
        NeRF(NeRFConfig(representation="plenoxel"))


def test_student_is_queried_at_the_teachers_exact_points(teacher_dir, monkeypatch):
    teacher, _ = load_nerf_asset(teacher_dir)
    run = setup(tiny_pvd(stage1_steps=0, stage2_steps=0), teacher)  # stage 3: every student query
    seen, captured = [], {}
    original = run.nerf.field.features
    monkeypatch.setattr(run.nerf.field, "features", lambda x: seen.append(x.clone()) or original(x))
    import sdtoolkit.nerf.convert as convert_module

    def capture(*args):
        captured["points"] = teacher_points(*args)
        return captured["points"]

    monkeypatch.setattr(convert_module, "teacher_points", capture)
    state = run.generator.get_state()
    training_step(run)
    points = captured["points"]
    assert len(seen) == 1 and len(points.positions) > 100
    assert torch.equal(seen[0], points.positions)
    # and those are the teacher's own samples: its collider + sampler + pruning on the same rays and draws
    generator = torch.Generator()
    generator.set_state(state)
    rays = teacher.collider(random_rays(run.config, generator, "cpu"))
    _, sub, samples, _, keep = teacher.sample_along(rays, generator, stratified=True)
    kept, extra = points.positions[: points.num_kept], points.positions[points.num_kept :]
    assert torch.equal(samples.positions(sub)[keep], kept)
    # plus a share (empty_fraction) of the samples the teacher pruned: still the teacher's own sample points
    pruned = samples.positions(sub)[~keep]
    assert 0 < len(extra) < len(pruned) and (extra[:, None] == pruned[None]).all(-1).any(1).all()


def test_interval_points_take_the_density_of_the_teachers_interval():
    """A teacher renders sigma_i constant over each of its intervals and nothing between or outside them: uniform
    points along the ray get exactly that density (hand-made intervals with a gap, against a loop per point)."""
    from sdtoolkit.nerf.samplers import RaySamples

    starts, ends = torch.tensor([[1.0, 1.5, 3.0], [0.5, 2.0, 2.5]]), torch.tensor([[1.5, 3.0, 3.5], [2.0, 2.5, 4.0]])
    densities = torch.tensor([[2.0, 0.0, 5.0], [1.0, 7.0, 3.0]])
    origins, directions = torch.tensor([[0.0, 0, 5], [1, 0, 0]]), torch.tensor([[0.0, 0, -1], [0, 1, 0]])
    rays = RayBundle(origins, directions, torch.tensor([0.5, 0.5]), torch.tensor([4.0, 4.0]), torch.ones(2).bool())
    positions, sigma = interval_points(
        RaySamples(starts, ends), rays, densities, 500, torch.Generator().manual_seed(0)
    )
    assert positions.shape == (1000, 3) and sigma.shape == (1000,)
    for index, (point, value) in enumerate(zip(positions, sigma)):
        ray = index // 500
        t = float((point - origins[ray]) @ directions[ray])
        expected = next((float(d) for s, e, d in zip(starts[ray], ends[ray], densities[ray]) if s <= t < e), 0.0)
        assert float(value) == expected, (ray, t)
    assert set(sigma[:500].tolist()) == {0.0, 2.0, 5.0} and set(sigma[500:].tolist()) == {1.0, 7.0, 3.0}


def test_a_teacher_whose_samples_partition_its_rays_supervises_uniform_points(teacher_dir, monkeypatch):
    """For a teacher like nerfacto's proposal sampler (`samples_partition_rays`), the extra points are uniform along
    each ray (round(empty_fraction x samples) per ray) with its interval densities, and the student gets no
    occupancy grid from it."""
    teacher, _ = load_nerf_asset(teacher_dir)
    monkeypatch.setattr(teacher, "samples_partition_rays", True, raising=False)
    config = teacher_config(tiny_pvd(empty_fraction=0.25), teacher)
    assert config.inherit_occupancy is False and tiny_pvd().inherit_occupancy is True
    generator = torch.Generator().manual_seed(3)
    rays = random_rays(config, generator, "cpu")
    state = generator.get_state()
    points = teacher_points(teacher, rays, generator, config.empty_fraction)
    generator.set_state(state)
    _, sub, samples, densities, keep = teacher.sample_along(teacher.collider(rays), generator, stratified=True)
    extra, sigma = interval_points(samples, sub, densities, 4, generator)  # 0.25 x 16 samples per ray
    assert points.num_kept == int(keep.sum()) and torch.equal(points.positions[points.num_kept :], extra)
    assert torch.equal(points.density[points.num_kept :], sigma) and (sigma > 0).any()
    torch.testing.assert_close(points.log_density[points.num_kept :][sigma > 0], sigma[sigma > 0].log())
    assert len(points.features) == len(points.raw) == points.num_kept  # colour and features: kept samples only
    assert config.student_samples == "own"  # stage 3 renders the student along the whole ray (`own_render_loss`)
    assert build_student(config, teacher).config.occupancy_pruning == "exact"  # its own samples, its own density
    assert build_student(tiny_pvd(), teacher).config.occupancy_pruning == teacher.config.occupancy_pruning
    assert build_student(tiny_pvd(occupancy_pruning="exact"), teacher).config.occupancy_pruning == "exact"
    losses = pvd_losses(config, 5, build_student(config, teacher), teacher, points, torch.ones(1, 3))
    assert set(losses) == {"loss_feature", "loss_density", "loss_colour"}
    assert all(torch.isfinite(v) for v in losses.values())


def test_own_samples_render_the_student_along_the_whole_ray_against_the_teachers_render(teacher_dir):
    """`student_samples='own'`: the target is the teacher's rendered colour of each drawn ray (its own render,
    background for a ray that misses the bound), and the loss is the student's full render against it; it falls."""
    teacher, _ = load_nerf_asset(teacher_dir)
    # its grid refreshed every 16 steps (text-to-3D's period) in these 30 steps: the render follows the density
    config = tiny_pvd(
        stage1_steps=0, stage2_steps=0, student_samples="own", empty_fraction=0.0, student_occupancy_every=16
    )
    generator = torch.Generator().manual_seed(4)
    rays = random_rays(config, generator, "cpu")
    points = teacher_points(teacher, rays, generator)
    colours = teacher_ray_colours(points, len(rays), torch.ones(1, 3))
    rendered = teacher.render_rays(rays, torch.ones(3), stratified=False)["rgb"]
    missed = torch.ones(len(rays), dtype=torch.bool)
    missed[points.hit] = False
    assert missed.any() and torch.equal(colours[missed], torch.ones(int(missed.sum()), 3))
    assert (rendered - colours).abs().mean() < 0.02  # the same render up to the stratified draw of the samples
    run = setup(config, teacher)
    values = []
    for _ in range(30):
        logs = training_step(run)
        values.append(logs["loss_rgb"])
    assert "loss_rgb" in logs and values[-1] < 0.5**0.5 * values[0], values  # a norm: its square at least halved


def test_a_student_rendering_its_own_samples_refreshes_its_grid_every_student_occupancy_every_steps(
    teacher_dir, monkeypatch
):
    """`student_occupancy_every` is the refresh period of the grid the student renders its own samples with (the
    student's `occupancy_update_every`); with the teacher's samples the student keeps the teacher's setting."""
    teacher, _ = load_nerf_asset(teacher_dir)
    config = tiny_pvd(stage1_steps=0, stage2_steps=0, student_samples="own", student_occupancy_every=3)
    run = setup(config, teacher)
    assert run.nerf.config.occupancy_update_every == 3 and run.nerf.occupancy.update_every == 3
    refreshed = []
    update = type(run.nerf.occupancy).update

    def spy(grid, density_fn, step, *args, **kwargs):
        done = update(grid, density_fn, step, *args, **kwargs)
        refreshed.extend([step] if done else [])
        return done

    monkeypatch.setattr(type(run.nerf.occupancy), "update", spy)
    for _ in range(7):
        training_step(run)
    assert refreshed == [0, 3, 6], refreshed
    kept = build_student(tiny_pvd(student_occupancy_every=3), teacher)  # 'teacher' samples: the teacher's grid
    assert kept.config.occupancy_update_every == teacher.config.occupancy_update_every


def test_a_teacher_cache_cycles_its_batches_and_resumes_exactly(teacher_dir, tmp_path, monkeypatch):
    """`teacher_cache=N`: N batches drawn once before step 0, step k uses batch k mod N (the teacher is not queried
    in the loop), and an interrupted run resumes to the same weights as one that was not."""
    teacher, _ = load_nerf_asset(teacher_dir)
    run = setup(tiny_pvd(teacher_cache=3), teacher)
    assert len(run.cache) == 3
    import sdtoolkit.nerf.convert as convert_module

    monkeypatch.setattr(convert_module, "teacher_points", lambda *a: pytest.fail("the teacher was queried"))
    seen = []
    monkeypatch.setattr(run.nerf.field, "features", lambda x, f=run.nerf.field.features: seen.append(x) or f(x))
    for _ in range(4):
        training_step(run)
    assert seen[3] is run.cache[0][1].positions and seen[1] is run.cache[1][1].positions
    monkeypatch.undo()
    straight = convert(tiny_pvd(teacher_cache=3), teacher_dir, tmp_path / "a", progress=False, export_outputs=False)
    assert straight["steps"] == 6
    assert convert(tiny_pvd(teacher_cache=3), teacher_dir, tmp_path / "b", progress=False, stop_at=4)["stopped"]
    convert(tiny_pvd(teacher_cache=3), teacher_dir, tmp_path / "b", progress=False, resume=True, export_outputs=False)
    a, _ = load_nerf_asset(tmp_path / "a")
    b, _ = load_nerf_asset(tmp_path / "b")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_a_refreshed_cache_redraws_the_next_batch_and_resumes_exactly(teacher_dir, tmp_path):
    """`cache_refresh=k`: before every k-th step the batch that step uses is redrawn (the other slots stay), and a
    run interrupted after refreshes resumes to the same weights as one that was not."""
    teacher, _ = load_nerf_asset(teacher_dir)
    run = setup(tiny_pvd(teacher_cache=3, cache_refresh=2), teacher)
    first = [batch[1].positions for batch in run.cache]
    training_step(run)  # step 0: no refresh
    assert all(batch[1].positions is x for batch, x in zip(run.cache, first))
    training_step(run)  # step 1: none either
    training_step(run)  # step 2: slot 2 redrawn (refresh 1), slots 0 and 1 kept
    assert run.cache[0][1].positions is first[0] and run.cache[1][1].positions is first[1]
    assert not torch.equal(run.cache[2][0].origins, setup(tiny_pvd(teacher_cache=3), teacher).cache[2][0].origins)
    config = tiny_pvd(teacher_cache=3, cache_refresh=2)
    straight = convert(config, teacher_dir, tmp_path / "a", progress=False, export_outputs=False)
    assert straight["steps"] == 6
    assert convert(config, teacher_dir, tmp_path / "b", progress=False, stop_at=5)["stopped"]  # after refreshes 1, 2
    convert(config, teacher_dir, tmp_path / "b", progress=False, resume=True, export_outputs=False)
    a, _ = load_nerf_asset(tmp_path / "a")
    b, _ = load_nerf_asset(tmp_path / "b")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize(
    "stage, term", [(1, "loss_feature"), (2, "loss_density"), (2, "loss_colour"), (3, "loss_rgb")]
)
def test_each_stage_loss_decreases(teacher_dir, stage, term):
    teacher, _ = load_nerf_asset(teacher_dir)
    config = tiny_pvd(to="voxel", stage1_steps={1: 100, 2: 0, 3: 0}[stage], stage2_steps={1: 100, 2: 100, 3: 0}[stage])
    torch.manual_seed(0)
    student = build_student(config, teacher)
    points = teacher_points(teacher, random_rays(config, torch.Generator().manual_seed(1), "cpu"), torch.Generator())
    optimizer = torch.optim.Adam(student.field.parameters(), lr=config.lr)
    values = []
    for _ in range(25):
        losses = pvd_losses(config, 0, student, teacher, points, torch.ones(1, 3))
        assert stage_of(config, 0) == stage and term in losses
        values.append(float(losses[term].detach()))
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert values[-1] < 0.5**0.5 * values[0], values  # a norm (normL2): its square, the MSE, at least halved


def test_each_loss_is_the_references_norm_l2_by_hand(teacher_dir):
    """Every PVD term is the reference's `torch.norm(pred - gt)` (not squared, not averaged) times its weight, and the
    feature weight is multiplied by 0.995 at every step from step 0 (the reference's `update_loss_rate`)."""
    teacher, _ = load_nerf_asset(teacher_dir)
    config = tiny_pvd(stage1_steps=0, stage2_steps=0, loss_feature=0.5, loss_density=0.3, loss_colour=0.7)
    torch.manual_seed(0)
    student = build_student(config, teacher)
    points = teacher_points(teacher, random_rays(config, torch.Generator().manual_seed(1), "cpu"), torch.Generator())
    step = 7
    losses = {
        k: float(v.detach()) for k, v in pvd_losses(config, step, student, teacher, points, torch.ones(1, 3)).items()
    }
    with torch.no_grad():
        features = student.field.features(points.positions)
        raw = student.field.decode(features)
        log_sigma = student.field.log_density(raw, points.positions).clamp(-2, 7)
        kept = points.num_kept
        rgb = torch.sigmoid(raw[:kept, 1:4])
        teacher_rgb = torch.sigmoid(points.raw[:kept, 1:4])
        by_hand = {
            "loss_feature": 0.5 * 0.995**step * ((features - points.features) ** 2).sum().sqrt(),
            "loss_density": 0.3 * ((log_sigma - points.log_density.clamp(-2, 7)) ** 2).sum().sqrt(),
            "loss_colour": 0.7 * ((rgb - teacher_rgb) ** 2).sum().sqrt(),
        }
        # the rendered colour at the teacher's samples, Mildenhall et al. 2020, Eq. 3, ray by ray
        sigma = torch.zeros(points.keep.shape).masked_scatter(
            points.keep, student.field.activate_density(raw, points.positions)[:kept]
        )
        colours = torch.zeros(*points.keep.shape, 3).masked_scatter(points.keep[..., None], rgb)
        teacher_sigma = torch.zeros(points.keep.shape).masked_scatter(points.keep, points.density[:kept])
        teacher_colours = torch.zeros(*points.keep.shape, 3).masked_scatter(points.keep[..., None], teacher_rgb)
        delta = points.samples.ends - points.samples.starts

        def render(sigma, colours):
            alpha = 1 - torch.exp(-sigma * delta)
            transmittance = torch.cumprod(torch.cat([torch.ones(len(alpha), 1), 1 - alpha[:, :-1]], 1), 1)
            weights = alpha * transmittance
            return (weights[..., None] * colours).sum(1) + (1 - weights.sum(1, keepdim=True))

        by_hand["loss_rgb"] = ((render(sigma, colours) - render(teacher_sigma, teacher_colours)) ** 2).sum().sqrt()
    assert set(losses) == set(by_hand)
    for name, value in by_hand.items():
        assert losses[name] == pytest.approx(float(value), rel=1e-4), name
    assert losses["loss_rgb"] > 0 and losses["loss_density"] > 0


def test_point_loss_weights_default_and_colour_follows_density(teacher_dir):
    """The per-point weights default to 0.2 (100x PVD's 0.002); a given weight is kept, and the colour weight
    follows the density weight unless given (a nerfstudio teacher gets the same: tests/test_nerfstudio.py)."""
    teacher, _ = load_nerf_asset(teacher_dir)
    resolved = teacher_config(PVDConfig(), teacher)
    assert (resolved.loss_density, resolved.loss_colour) == (0.2, 0.2)
    assert point_weights(PVDConfig()) == (0.2, 0.2)
    given = teacher_config(PVDConfig(loss_density=0.01), teacher)
    assert (given.loss_density, given.loss_colour) == (0.01, 0.01)
    both = teacher_config(PVDConfig(loss_density=0.01, loss_colour=0.3), teacher)
    assert (both.loss_density, both.loss_colour) == (0.01, 0.3)


def test_density_is_clipped_before_it_is_compared(teacher_dir):
    log_sigma = torch.tensor([-9.0, -2.0, 0.5, 7.0, 30.0], requires_grad=True)
    clipped = clip_log_density(log_sigma, (-2.0, 7.0))
    assert clipped.tolist() == [-2.0, -2.0, 0.5, 7.0, 7.0]
    clipped.sum().backward()
    assert log_sigma.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]  # no gradient from beyond the range
    # in the loss: a teacher far denser than e^7, by any amount, is the same target
    teacher, _ = load_nerf_asset(teacher_dir)
    config = tiny_pvd(stage1_steps=0, stage2_steps=100)
    student = build_student(config, teacher)
    points = teacher_points(teacher, random_rays(config, torch.Generator().manual_seed(1), "cpu"), torch.Generator())
    losses = []
    for raw_density in (2000.0, 5000.0):  # log sigma 7.6 and 8.5
        points.raw[:, 0] = raw_density
        points.log_density = teacher.field.log_density(points.raw, points.positions)
        losses.append(
            float(pvd_losses(config, 0, student, teacher, points, torch.ones(1, 3))["loss_density"].detach())
        )
    assert losses[0] == losses[1]


def test_exact_resume(teacher_dir, tmp_path):
    straight = convert(tiny_pvd(), teacher_dir, tmp_path / "a", progress=False, export_outputs=False)
    assert straight == {"steps": 6, "stopped": False}
    assert convert(tiny_pvd(), teacher_dir, tmp_path / "b", progress=False, stop_at=3)["stopped"]
    convert(tiny_pvd(), teacher_dir, tmp_path / "b", progress=False, resume=True, export_outputs=False)
    a, _ = load_nerf_asset(tmp_path / "a")
    b, _ = load_nerf_asset(tmp_path / "b")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_cli_end_to_end(teacher_dir, tmp_path, capsys):
    from sdtoolkit.cli import main

    out = tmp_path / "converted"
    args = [
        "convert-nerf",
        str(teacher_dir),
        "--to",
        "mlp",
        "--output",
        str(out),
        "--steps",
        "6",
        "--stage1-steps",
        "2",
        "--stage2-steps",
        "4",
        "--rays-per-step",
        "128",
        "--ray-resolution",
        "16",
        "--mlp.width",
        "16",
        "--mlp.depth",
        "2",
        "--mlp.num-frequencies",
        "3",
        "--mesh-resolution",
        "16",
        "--video-frames",
        "2",
        "--eval-views",
        "2",
        "--teacher-cache",
        "2",
        "--quiet",
    ]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["to"] == "mlp" and summary["steps"] == 6 and len(summary["psnr_views"]) == 2
    for name in ("checkpoint.safetensors", "config.json", "summary.json", "comparison.png", "mesh.glb"):
        assert (out / name).is_file(), name
    resolved = json.loads((out / "config.json").read_text())["pvd"]
    assert resolved["to"] == "mlp" and resolved["teacher_cache"] == 2 and resolved["occupancy_pruning"] == "auto"
    student, _ = load_nerf_asset(out)  # the converted asset is itself a teacher
    # taught at the teacher's samples, it renders with the teacher's grid and its pruning
    assert student.config.representation == "mlp" and student.config.occupancy_pruning == "cached"
    assert main(args) == 2  # a second run does not clobber the first
    assert "already holds a convert-nerf run" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    capsys.readouterr()
    assert main(["convert-nerf", "--resume", str(out), "--to", "voxel"]) == 2  # the target is fixed on resume
    assert "--to voxel would change the run's to = mlp" in capsys.readouterr().err
    # a resume re-exports with the run's own export settings (config.json's "command"; it used to take the
    # defaults: a 96-cell mesh, 36 frames and 20 views, and record them)
    assert main(["convert-nerf", "--resume", str(out), "--steps", "8", "--quiet"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["steps"] == 8 and len(resumed["psnr_views"]) == 2
    command = json.loads((out / "config.json").read_text())["command"]
    assert (command["mesh_resolution"], command["video_frames"], command["eval_views"]) == (16, 2, 2)
    # README: a run's saved config.json is a valid --config (it used to be refused: unknown keys pvd, teacher, ...)
    again = tmp_path / "again"
    assert main(["convert-nerf", "--config", str(out / "config.json"), "--output", str(again)]) == 0
    saved, repeated = (json.loads((d / "config.json").read_text()) for d in (out, again))
    assert repeated["teacher"] == saved["teacher"] and repeated["pvd"] == saved["pvd"]
    assert repeated["command"]["output"] == str(again)
    assert {k: v for k, v in repeated["command"].items() if k not in ("output", "teacher")} == {
        k: v for k, v in saved["command"].items() if k not in ("output", "teacher")
    }
    assert "note:" not in capsys.readouterr().err  # 8 steps reach stage 3 (after --stage2-steps 4)
    short = tmp_path / "short"  # a run too short for every stage says so (it used to report a fine PSNR silently)
    assert main(["convert-nerf", "--config", str(out / "config.json"), "--output", str(short), "--steps", "2"]) == 0
    assert "note: --steps 2 ends in PVD stage 1 (volume features)" in capsys.readouterr().err
    # eval-3d of a conversion finds the prompt in its teacher's config (it used to ask for --prompt)
    assert main(["eval-3d", str(out), "--out", str(tmp_path / "scores.json")]) == 0
    assert json.loads((tmp_path / "scores.json").read_text())["objects"][0]["prompt"] == "a red cube"


def test_a_run_saved_before_a_field_existed_is_not_resumed_with_its_new_default(teacher_dir, tmp_path, capsys):
    """A conversion whose config.json lacks fields added since (an older sdtoolkit's run) is refused on resume,
    naming them, instead of continuing with today's defaults for settings it may have run without; nothing of it
    is changed."""
    from sdtoolkit.cli import main

    out = tmp_path / "old"
    convert(tiny_pvd(teacher_cache=2), teacher_dir, out, progress=False, export_outputs=False)
    stored = json.loads((out / "config.json").read_text())
    for name in ("cache_refresh", "student_occupancy_every"):
        del stored["pvd"][name]
    (out / "config.json").write_text(json.dumps(stored))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["convert-nerf", "--resume", str(out), "--steps", "8", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "saved by an older sdtoolkit" in err and "--cache-refresh, --student-occupancy-every" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # a field a resume may change anyway (it changes no result) does not block the resume when it is unrecorded
    stored = json.loads((out / "config.json").read_text())
    stored["pvd"].update(cache_refresh=0, student_occupancy_every=64)
    del stored["pvd"]["compile_teacher"]
    (out / "config.json").write_text(json.dumps(stored))
    assert main(["convert-nerf", "--resume", str(out), "--steps", "8", "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["pvd"]["compile_teacher"] is False


@pytest.mark.parametrize(
    "setup_teacher, extra, message",
    [
        (None, ["--to", "nerfacto"], "unknown --to 'nerfacto'; choose one of hash, mlp, tensorf, voxel"),
        ("distill", [], "holds a distill run, not a NeRF asset"),
        ("no-nerf", [], "holds no NeRF ('nerf.*' tensors): a checkpoint of another kind"),
        ("missing", [], "no such file or folder"),
        (None, ["--steps", "0"], "--steps 0: must be >= 1"),
        (None, ["--cache-refresh", "2"], "--cache-refresh 2 needs --teacher-cache N > 0"),
        (None, ["--density-clip", "7", "-2"], "density_clip = [7.0, -2.0]: need min < max"),
    ],
)
def test_bad_inputs_fail_before_writing(teacher_dir, tmp_path, capsys, setup_teacher, extra, message):
    from sdtoolkit.cli import main

    teacher = teacher_dir
    if setup_teacher == "distill":
        teacher = tmp_path / "distill_run"
        teacher.mkdir()
        (teacher / ".sdtoolkit-manifest.json").write_text(json.dumps({"kind": "distill", "owned": []}))
    elif setup_teacher == "no-nerf":
        teacher = tmp_path / "other"
        teacher.mkdir()
        save_file({"unet.weight": torch.zeros(2)}, str(teacher / "checkpoint.safetensors"))
        (teacher / "config.json").write_text(json.dumps({"nerf": {}}))
    elif setup_teacher == "missing":
        teacher = tmp_path / "nothing"
    out = tmp_path / "out"
    assert main(["convert-nerf", str(teacher), "--output", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
@pytest.mark.parametrize("given", ["folder", "checkpoint"])
def test_an_output_that_is_the_teachers_folder_is_refused_and_the_teacher_kept(
    teacher_dir, tmp_path, capsys, overwrite, given
):
    """--output pointing at the teacher's own folder used to replace the teacher with its student under --overwrite
    (and its config then named itself as teacher): refused in one line, nothing of the teacher changed."""
    import shutil

    from sdtoolkit.cli import main

    teacher = tmp_path / "teacher"
    shutil.copytree(teacher_dir, teacher)
    before = {p: p.read_bytes() for p in teacher.rglob("*") if p.is_file()}
    source = teacher if given == "folder" else teacher / "checkpoint.safetensors"
    capsys.readouterr()
    assert main(["convert-nerf", str(source), "--output", str(teacher), "--steps", "2", *overwrite]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is the teacher's own folder" in err[0], err
    assert {p: p.read_bytes() for p in teacher.rglob("*") if p.is_file()} == before


def test_text_to_3d_representation_flag():
    from sdtoolkit.cli import build_parser
    from sdtoolkit.cli.text_to_3d import resolve

    config, *_ = resolve(build_parser().parse_args(["text-to-3d", "a red cube", "--representation", "tensorf"]))
    assert config.nerf.representation == "tensorf"
    default, *_ = resolve(build_parser().parse_args(["text-to-3d", "a red cube"]))
    assert default.nerf.representation == "hash"


def test_teacher_error_names_valid_teachers(tmp_path):
    with pytest.raises(TeacherError, match="text-to-3d or convert-nerf output folder"):
        load_nerf_asset(tmp_path)


def test_a_text_to_3d_asset_is_a_teacher_and_a_converted_asset_too(tmp_path):
    """What `text-to-3d` saves (with a non-default representation, too) converts; the result converts again."""
    from sdtoolkit.core.denoiser import Denoiser
    from sdtoolkit.testing import tiny_sd_pipeline
    from sdtoolkit.text_to_3d import TextTo3DConfig, train

    denoiser = Denoiser.from_pipeline(tiny_sd_pipeline()).freeze()
    config = TextTo3DConfig(
        prompt="a red cube", prior="tiny", steps=2, nerf=tiny_nerf_config("voxel"), preview_every=0, start_resolution=8
    )
    train(config, tmp_path / "asset", denoiser=denoiser, progress=False)
    teacher, stored = load_nerf_asset(tmp_path / "asset" / "checkpoint.safetensors")
    assert teacher.config.representation == "voxel" and stored["prompt"] == "a red cube"
    assert convert(tiny_pvd(to="hash"), tmp_path / "asset", tmp_path / "hash", progress=False, export_outputs=False)
    again, _ = load_nerf_asset(tmp_path / "hash")
    assert again.config.representation == "hash"
    assert convert(tiny_pvd(to="mlp"), tmp_path / "hash", tmp_path / "mlp", progress=False, export_outputs=False)


def _poison(monkeypatch, bad_calls):
    """`pvd_losses` with a NaN density term at the given (1-based) calls."""
    import sdtoolkit.nerf.convert as convert_module

    original, calls = convert_module.pvd_losses, []

    def poisoned(*args):
        losses = original(*args)
        calls.append(1)
        if len(calls) in bad_calls:
            losses["loss_density"] = losses["loss_density"] * torch.nan
        return losses

    monkeypatch.setattr(convert_module, "pvd_losses", poisoned)


def test_a_single_non_finite_step_is_skipped_and_the_conversion_goes_on(teacher_dir, tmp_path, monkeypatch):
    teacher, _ = load_nerf_asset(teacher_dir)
    run = setup(tiny_pvd(stage1_steps=0, stage2_steps=0), teacher)
    training_step(run)
    before = {k: v.clone() for k, v in run.nerf.state_dict().items()}
    adam_steps = [float(s["step"]) for s in run.optimizer.state.values()]
    _poison(monkeypatch, {1})
    logs = training_step(run)
    assert logs["skipped"] == 1.0 and logs["nonfinite_term"] == "loss_density" and run.step == 2
    for name, value in run.nerf.state_dict().items():
        assert torch.equal(value, before[name]), name  # no student update
    assert [float(s["step"]) for s in run.optimizer.state.values()] == adam_steps  # no Adam update
    assert not training_step(run).get("skipped")  # the next step updates again
    assert [float(s["step"]) for s in run.optimizer.state.values()] == [a + 1 for a in adam_steps]
    _poison(monkeypatch, {3})
    assert convert(tiny_pvd(), teacher_dir, tmp_path / "one", progress=False, export_outputs=False)["steps"] == 6
    converted, _ = load_nerf_asset(tmp_path / "one")
    assert all(torch.isfinite(v).all() for v in converted.state_dict().values())


def test_a_diverging_conversion_exits_1_exports_nothing_and_keeps_its_last_good_checkpoint(
    teacher_dir, tmp_path, monkeypatch, capsys
):
    from sdtoolkit.cli import main

    _poison(monkeypatch, {4, 5, 6, 7, 8})  # steps 1-3 fine, checkpoint at 2; steps 4-6 skipped
    out = tmp_path / "diverged"
    args = ["convert-nerf", str(teacher_dir), "--output", str(out), "--to", "voxel", "--steps", "10",
            "--stage1-steps", "0", "--stage2-steps", "0", "--rays-per-step", "128", "--ray-resolution", "16",
            "--voxel.resolution", "12", "--voxel.features", "4", "--checkpoint-every", "2", "--mesh-resolution", "16",
            "--video-frames", "2", "--eval-views", "2", "--quiet"]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for part in ("step 6: loss_density was not finite in 3 consecutive steps", "learning rate", "lr 0.01",
                 "no mesh was exported", "checkpoint.safetensors (step 2)"):  # fmt: skip
        assert part in err[0], err[0]
    for name in ("mesh.glb", "mesh.obj", "summary.json", "comparison.png", "turntable.mp4", "turntable.gif"):
        assert not (out / name).exists(), name
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 2
    kept, _ = load_nerf_asset(out)
    assert all(torch.isfinite(v).all() for v in kept.state_dict().values())
    monkeypatch.undo()  # the guard off (0): the NaN step updates the student, which is NaN from then on
    _poison(monkeypatch, {4})
    unguarded = tiny_pvd(max_nonfinite_steps=0)
    assert convert(unguarded, teacher_dir, tmp_path / "off", progress=False, export_outputs=False)["steps"] == 6
    student, _ = load_nerf_asset(tmp_path / "off")
    assert not all(torch.isfinite(v).all() for v in student.state_dict().values())


def test_a_nan_teacher_is_named_and_nothing_is_exported(teacher_dir, tmp_path, capsys):
    from safetensors.torch import load_file

    from sdtoolkit.cli import main

    teacher = tmp_path / "nan_teacher"
    teacher.mkdir()
    tensors = load_file(str(teacher_dir / "checkpoint.safetensors"))
    tensors["nerf.field.encoding.tables"] = tensors["nerf.field.encoding.tables"] * torch.nan  # occupancy kept
    save_file(tensors, str(teacher / "checkpoint.safetensors"))
    (teacher / "config.json").write_text((teacher_dir / "config.json").read_text())
    out = tmp_path / "out"
    args = ["convert-nerf", str(teacher), "--output", str(out), "--to", "voxel", "--steps", "6",
            "--rays-per-step", "64", "--ray-resolution", "16", "--voxel.resolution", "8", "--quiet"]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "the teacher's own outputs are not finite" in err and "no checkpoint was written yet" in err, err
    assert not (out / "mesh.glb").exists() and not (out / "checkpoint.safetensors").exists()


@pytest.mark.parametrize("to", ["mlp", "tensorf"])
def test_the_student_starts_with_the_teachers_decoder_by_default(teacher_dir, to):
    """`inherit_decoder` None (the default) resolves to a copy of an sdtoolkit teacher's decoder (the layers after
    the front), in the resolved config too; False keeps the student's own initialisation (PVD's)."""
    teacher, _ = load_nerf_asset(teacher_dir)
    resolved = teacher_config(tiny_pvd(to=to), teacher)
    assert PVDConfig().inherit_decoder is None and resolved.inherit_decoder is True
    copied = build_student(resolved, teacher).field.mlp[2:].state_dict()
    own = build_student(tiny_pvd(to=to, inherit_decoder=False), teacher).field.mlp[2:].state_dict()
    for name, value in teacher.field.mlp[2:].state_dict().items():
        assert torch.equal(copied[name], value)
        assert not torch.equal(own[name], value)
    assert teacher_config(tiny_pvd(to=to, inherit_decoder=False), teacher).inherit_decoder is False
