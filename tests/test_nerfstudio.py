"""nerfstudio runs as PVD teachers (`sdtoolkit.nerfstudio_plugin.teacher`, `sdtoolkit convert-nerf`), on a tiny
nerfacto model built in-process with nerfstudio's own classes and saved in its run layout. Skipped when nerfstudio's
models do not import (the optional install: `sdtoolkit.nerfstudio_plugin.NERFSTUDIO_INSTALL`)."""

import json
import os

import pytest
import torch
import yaml

pytest.importorskip("nerfstudio.models.nerfacto", reason="nerfstudio is optional (see NERFSTUDIO_INSTALL)")

from nerfstudio.cameras.rays import Frustums, RaySamples  # noqa: E402
from nerfstudio.data.scene_box import SceneBox  # noqa: E402
from nerfstudio.field_components.field_heads import FieldHeadNames  # noqa: E402
from nerfstudio.models.nerfacto import NerfactoModelConfig  # noqa: E402

from sdtoolkit.nerf.convert import TeacherError, convert, load_nerf_asset  # noqa: E402
from sdtoolkit.nerf.pvd import PVDConfig  # noqa: E402
from sdtoolkit.nerf.representations import MLPConfig  # noqa: E402
from sdtoolkit.nerfstudio_plugin.teacher import _no_metric_modules, read_run_config  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(
    implementation="torch", num_levels=4, max_res=64, log2_hashmap_size=12, hidden_dim=16, hidden_dim_color=16,
    disable_scene_contraction=True, average_init_density=1.0,
)  # fmt: skip


def tiny_nerfacto(seed: int = 0):
    torch.manual_seed(seed)
    with _no_metric_modules():
        model = NerfactoModelConfig(**TINY).setup(
            scene_box=SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=3, metadata={}
        )
    with torch.no_grad():  # a ball of matter with colour varying in space (an untrained field is near empty)
        model.field.mlp_base.model[0].hash_table.normal_(0, 0.3)
    return model.eval()


def save_run(model, folder, method="nerfacto", transforms=None):
    """The run layout ns-train writes: config.yml (nerfstudio's tagged YAML dump of its configs), nerfstudio_models/
    step-*.ckpt ({'step', 'pipeline': the pipeline's state dict, '_model.'-prefixed, ...}), dataparser_transforms."""
    (folder / "nerfstudio_models").mkdir(parents=True)
    config = {"method_name": method, "experiment_name": "tiny", "pipeline": {"model": model.config}}
    (folder / "config.yml").write_text(yaml.dump(config))
    pipeline = {f"_model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"step": 7, "pipeline": pipeline, "optimizers": {}, "schedulers": {}, "scalers": {}},
               folder / "nerfstudio_models" / "step-000000007.ckpt")  # fmt: skip
    if transforms is not None:
        (folder / "dataparser_transforms.json").write_text(json.dumps(transforms))
    return folder


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return save_run(tiny_nerfacto(), tmp_path_factory.mktemp("ns") / "outputs" / "tiny" / "nerfacto" / "t0")


def direct(model, points, direction):
    """The nerfstudio field's own density and colour at `points` seen along `direction`."""
    n = len(points)
    zeros = torch.zeros(n, 1, 1)
    samples = RaySamples(
        frustums=Frustums(points[:, None], direction.expand(n, 1, 3), zeros, zeros, torch.ones(n, 1, 1)),
        camera_indices=torch.zeros(n, 1, 1, dtype=torch.long),
    )
    with torch.no_grad():
        out = model.field(samples)
    return out[FieldHeadNames.DENSITY].reshape(-1), out[FieldHeadNames.RGB].reshape(-1, 3)


def test_config_yml_is_read_without_running_code(run_dir, tmp_path):
    text = (run_dir / "config.yml").read_text()
    assert "!!python/object:nerfstudio.models.nerfacto.NerfactoModelConfig" in text  # nerfstudio's tagged dump
    config = read_run_config(run_dir / "config.yml")
    assert config["method_name"] == "nerfacto" and config["pipeline"]["model"]["max_res"] == 64
    marker = tmp_path / "ran"
    evil = tmp_path / "config.yml"
    evil.write_text(f"method_name: nerfacto\nx: !!python/object/apply:os.system ['touch {marker}']\n")
    read_run_config(evil)
    assert not marker.exists()


def test_teacher_is_the_nerfstudio_field_at_the_same_points(run_dir):
    """The wrapped teacher's density is nerfstudio's own; its colour is nerfstudio's averaged over the six axis
    directions; a dataparser transform maps world points into the run's frame and scales the density back."""
    model = tiny_nerfacto()
    teacher, stored = load_nerf_asset(run_dir)
    assert stored["nerfstudio"]["method"] == "nerfacto" and stored["nerfstudio"]["step"] == 7
    points = torch.rand(200, 3) * 1.4 - 0.7
    density, _ = direct(model, points, torch.tensor([1.0, 0, 0]))
    axes = torch.cat([torch.eye(3), -torch.eye(3)])
    colours = [direct(model, points, d)[1] for d in axes]
    out = teacher.field(points)
    assert density.max() > 1.0 and torch.allclose(out["density"], density, rtol=1e-4, atol=1e-5)
    assert torch.allclose(out["rgb"], torch.stack(colours).mean(0), atol=1e-4)
    # the same run with its scene scaled by 0.5 and moved by t: p_ns = 0.5 (p + t), sigma = 0.5 sigma_ns
    moved = save_run(model, run_dir.parent / "moved", transforms={
        "transform": [[1, 0, 0, 0.2], [0, 1, 0, 0], [0, 0, 1, -0.1]], "scale": 0.5})  # fmt: skip
    teacher, _ = load_nerf_asset(moved / "config.yml")
    expected, _ = direct(model, 0.5 * (points + torch.tensor([0.2, 0, -0.1])), torch.tensor([1.0, 0, 0]))
    assert torch.allclose(teacher.field.get_density(points), 0.5 * expected, rtol=1e-4, atol=1e-5)


def test_a_nerfstudio_teacher_renders_and_teaches_the_colour_along_each_ray(run_dir):
    """nerfacto's colour depends on the view. Along a ray the teacher gives nerfacto's colour for that ray's
    direction (`forward_along`), in its renders and in PVD's points, so that PVD's rendered-colour target is the
    teacher's own render."""
    from sdtoolkit.nerf.colliders import RayBundle
    from sdtoolkit.nerf.pvd import teacher_points, teacher_ray_colours

    model = tiny_nerfacto()
    teacher, _ = load_nerf_asset(run_dir)
    points = torch.rand(50, 3) * 1.4 - 0.7
    seen = []
    for direction in (torch.tensor([1.0, 0, 0]), torch.tensor([0, 0.6, -0.8])):
        _, rgb = direct(model, points, direction)
        torch.testing.assert_close(teacher.field.forward_along(points, direction.expand(50, 3))["rgb"], rgb)
        seen.append(rgb)
    assert (seen[0] - seen[1]).abs().max() > 1e-3  # the colour does depend on the view
    generator = torch.Generator().manual_seed(1)
    origins = torch.nn.functional.normalize(torch.randn(12, 3, generator=generator), dim=-1) * 2.8
    rays = RayBundle(origins, torch.nn.functional.normalize(-origins, dim=-1))
    points = teacher_points(teacher, rays, generator)
    kept = points.positions[: points.num_kept]
    directions = points.rays.directions[:, None, :].expand(*points.keep.shape, 3)[points.keep]
    expected = teacher.field.forward_along(kept, directions)["rgb"]
    torch.testing.assert_close(torch.sigmoid(points.raw[:, 1:4]), expected, atol=2e-4, rtol=0)
    rendered = teacher.render_rays(rays, torch.ones(3), stratified=False)["rgb"]
    torch.testing.assert_close(teacher_ray_colours(points, 12, torch.ones(1, 3)), rendered, atol=2e-4, rtol=0)
    assert (rendered < 0.99).any()  # the rays see matter


def test_a_nerfacto_teacher_samples_rays_with_nerfactos_proposal_sampler(run_dir):
    """PVD queries the student at the teacher's own samples: for nerfacto those of its proposal sampler (its field
    is trained only there). The teacher's samples, mapped into the run's frame (scale 0.5 and a shift), are the
    ones nerfacto's sampler draws on the same rays in that frame; its render composites nerfacto's density there."""
    from nerfstudio.cameras.rays import RayBundle as NerfstudioRays

    from sdtoolkit.nerf.colliders import RayBundle
    from sdtoolkit.nerfstudio_plugin.teacher import ProposalSampledNeRF

    model = tiny_nerfacto()
    moved = save_run(model, run_dir.parent / "moved_proposal", transforms={
        "transform": [[1, 0, 0, 0.2], [0, 1, 0, 0], [0, 0, 1, -0.1]], "scale": 0.5})  # fmt: skip
    teacher, _ = load_nerf_asset(moved)
    assert isinstance(teacher, ProposalSampledNeRF)
    generator = torch.Generator().manual_seed(0)
    origins = torch.nn.functional.normalize(torch.randn(16, 3, generator=generator), dim=-1) * 2.8
    directions = torch.nn.functional.normalize(-origins + 0.2 * torch.randn(16, 3, generator=generator), dim=-1)
    rays = teacher.collider(RayBundle(origins, directions))
    hit, sub, samples, densities, keep = teacher.sample_along(rays)
    assert len(hit) == 16 and samples.starts.shape == (16, model.config.num_nerf_samples_per_ray)
    shift = torch.tensor([0.2, 0, -0.1])
    bundle = NerfstudioRays(origins=0.5 * (sub.origins + shift), directions=sub.directions,
                            pixel_area=torch.ones(16, 1), camera_indices=torch.zeros(16, 1, dtype=torch.long),
                            nears=0.5 * sub.nears[:, None], fars=0.5 * sub.fars[:, None])  # fmt: skip
    with torch.no_grad():
        expected, _, _ = model.eval().proposal_sampler(bundle, density_fns=model.density_fns)
    ours = 0.5 * (samples.positions(sub) + shift)
    torch.testing.assert_close(ours, expected.frustums.get_positions(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        densities, teacher.field.get_density(samples.positions(sub).reshape(-1, 3)).reshape(16, -1)
    )
    assert (samples.ends[:, 1:] >= samples.starts[:, 1:]).all() and keep.any()


def test_a_tensorf_run_whose_grids_grew_is_a_teacher(tmp_path):
    """TensoRF upsamples its grids while it trains: the checkpoint's shapes, not the config's, are loaded."""
    from nerfstudio.models.tensorf import TensoRFModelConfig

    config = TensoRFModelConfig(init_resolution=16, final_resolution=24, num_den_components=4, num_color_components=4)
    with _no_metric_modules():
        model = config.setup(scene_box=SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=2,
                             metadata={}).eval()  # fmt: skip
    model.field.density_encoding.upsample_grid(24)
    model.field.color_encoding.upsample_grid(24)
    with torch.no_grad():
        for parameter in model.field.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    teacher, stored = load_nerf_asset(save_run(model, tmp_path / "tensorf", method="tensorf"))
    points = torch.rand(100, 3) * 1.4 - 0.7
    density, _ = direct(model, points, torch.tensor([1.0, 0, 0]))
    assert stored["nerfstudio"]["method"] == "tensorf" and density.max() > 0
    assert torch.allclose(teacher.field.get_density(points), density, rtol=1e-4, atol=1e-5)


def tiny_instant_ngp():
    from nerfstudio.models.instant_ngp import InstantNGPModelConfig

    config = InstantNGPModelConfig(max_res=64, log2_hashmap_size=12, disable_scene_contraction=True,
                                   grid_resolution=8, grid_levels=1)  # fmt: skip
    with _no_metric_modules():
        return config.setup(scene_box=SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=2,
                            metadata={}).eval()  # fmt: skip


def test_grid_occupied_reads_nerfaccs_own_occupancy_grid():
    """`grid_occupied` against nerfacc's `OccGridEstimator` updated by nerfacc itself (its pure-torch `_update`)
    from an occupancy that is 1 in a box with faces on cell edges of both levels: the grid's cells are exactly that
    box's, so the lookup must agree with the box at every point (axis order, level choice, the outer level)."""
    from nerfacc import OccGridEstimator

    from sdtoolkit.nerfstudio_plugin.teacher import grid_occupied

    def inside_box(x):
        return ((x[:, 0] > 0.5) & (x[:, 1] < 0) & (x[:, 2] > -1.5)).float()

    grid = OccGridEstimator(roi_aabb=[-1.0] * 3 + [1.0] * 3, resolution=8, levels=2)  # level 1: [-2, 2]^3
    grid._update(step=0, occ_eval_fn=inside_box)
    assert 0 < grid.binaries.sum() < grid.binaries.numel()
    points = torch.rand(20000, 3, generator=torch.Generator().manual_seed(0)) * 4.4 - 2.2
    expected = inside_box(points).bool() & (points.abs() < 2).all(-1)  # outside every level's box: empty
    assert torch.equal(grid_occupied(grid.binaries, grid.aabbs, points), expected)


@pytest.mark.parametrize("method", ["instant-ngp", "vanilla-nerf"])
def test_instant_ngp_and_vanilla_nerf_runs_are_teachers(method, tmp_path):
    """An instant-ngp run's teacher is its field where the run's own occupancy grid marks a cell and empty
    elsewhere (instant-ngp renders nothing else); a vanilla-nerf run's is its fine field. Both convert by PVD."""
    from nerfstudio.models.vanilla_nerf import VanillaModelConfig

    torch.manual_seed(0)
    if method == "instant-ngp":
        model = tiny_instant_ngp()
    else:
        config = VanillaModelConfig(num_coarse_samples=8, num_importance_samples=8)
        with _no_metric_modules():
            model = config.setup(scene_box=SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=2,
                                 metadata={}).eval()  # fmt: skip
    field = model.field if method == "instant-ngp" else model.field_fine
    with torch.no_grad():
        for parameter in field.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
        if method == "instant-ngp":  # its grid: the half x > 0 occupied (cells of [-1, 1]^3, 8 per axis)
            model.occupancy_grid.binaries[0, 4:] = True
    teacher, stored = load_nerf_asset(save_run(model, tmp_path / method, method=method))
    assert stored["nerfstudio"]["method"] == method
    points = torch.rand(400, 3) * 1.6 - 0.8
    density, _ = direct(model, points, torch.tensor([1.0, 0, 0])) if method == "instant-ngp" else (None, None)
    if method == "vanilla-nerf":
        n = len(points)
        zeros = torch.zeros(n, 1, 1)
        samples = RaySamples(frustums=Frustums(points[:, None], torch.tensor([1.0, 0, 0]).expand(n, 1, 3), zeros,
                                               zeros, torch.ones(n, 1, 1)))  # fmt: skip
        with torch.no_grad():
            density = field(samples)[FieldHeadNames.DENSITY].reshape(-1)
    else:
        density = density * (points[:, 0] > 0)
    got = teacher.field.get_density(points)
    assert density.max() > 0 and torch.allclose(got, density, rtol=1e-4, atol=1e-5)
    if method == "instant-ngp":
        assert (got[points[:, 0] < 0] == 0).all() and (got[points[:, 0] > 0] > 0).any()
    config = PVDConfig(to="tensorf", steps=4, stage2_steps=2, rays_per_step=64, cameras_per_step=2, ray_resolution=8,
                       checkpoint_every=0)  # fmt: skip
    summary = convert(config, tmp_path / method, tmp_path / f"{method}-tensorf", progress=False, export_outputs=False)
    assert summary["steps"] == 4


def test_convert_a_nerfacto_run_to_mlp(run_dir, tmp_path):
    """PVD from a nerfstudio teacher: no feature stage (its features are not the student's), density and colour at
    the teacher's points, then rendered colour; the losses fall and the result is an sdtoolkit asset."""
    config = PVDConfig(to="mlp", steps=40, stage2_steps=20, rays_per_step=256, cameras_per_step=2, ray_resolution=16,
                       lr=1e-2, checkpoint_every=0, mlp=MLPConfig(num_frequencies=3, width=32, depth=2))  # fmt: skip
    out = tmp_path / "mlp"
    summary = convert(config, run_dir, out, progress=False, mesh_resolution=16, video_frames=2, eval_views=2)
    stored = json.loads((out / "config.json").read_text())
    assert stored["pvd"]["stage1_steps"] == 0 and stored["pvd"]["loss_feature"] == 0.0
    assert stored["pvd"]["loss_density"] == stored["pvd"]["loss_colour"] == 0.2  # as for an sdtoolkit teacher
    state = json.loads((out / "checkpoint.json").read_text())
    # normL2 is a norm over all of a step's points, whose number varies: compare the root mean square per point
    density = [h["loss_density"] / h["points"] ** 0.5 for h in state["history"] if "loss_density" in h]
    assert "loss_feature" not in state["history"][0] and sum(density[-5:]) < sum(density[:5]), density
    assert summary["psnr_median"] is not None and (out / "mesh.glb").is_file()
    student, _ = load_nerf_asset(out)
    assert student.config.representation == "mlp"


def test_bad_nerfstudio_inputs_are_one_line_and_write_nothing(run_dir, tmp_path, capsys):
    from sdtoolkit.cli import main

    no_config = tmp_path / "no_config"
    (no_config / "nerfstudio_models").mkdir(parents=True)
    (no_config / "nerfstudio_models" / "step-000000001.ckpt").write_bytes(
        (run_dir / "nerfstudio_models" / "step-000000007.ckpt").read_bytes()
    )
    splat = save_run(tiny_nerfacto(), tmp_path / "splat", method="splatfacto")
    other = tmp_path / "other" / "nerfstudio_models"
    other.mkdir(parents=True)
    torch.save({"state_dict": {"unet.weight": torch.zeros(2)}}, other / "step-000000001.ckpt")
    (other.parent / "config.yml").write_text("method_name: nerfacto\n")
    pickled = tmp_path / "pickled" / "nerfstudio_models"
    pickled.mkdir(parents=True)
    torch.save({"pipeline": TeacherError("not a tensor")}, pickled / "step-000000001.ckpt")
    (pickled.parent / "config.yml").write_text("method_name: nerfacto\n")
    # weights laid out by tiny-cuda-nn (one flat 'params' tensor per fused module) instead of the torch modules'
    tcnn = {}
    for name, model in (("nerfacto", tiny_nerfacto()), ("instant-ngp", tiny_instant_ngp())):
        run = save_run(model, tmp_path / f"tcnn-{name}", method=name)
        checkpoint = run / "nerfstudio_models" / "step-000000007.ckpt"
        stored = torch.load(checkpoint, weights_only=True)
        stored["pipeline"] = {k: v for k, v in stored["pipeline"].items() if ".mlp_base." not in k}
        stored["pipeline"]["_model.field.mlp_base.params"] = torch.zeros(4096)
        torch.save(stored, checkpoint)
        tcnn[name] = run
    gridless = save_run(tiny_instant_ngp(), tmp_path / "gridless", method="instant-ngp")
    checkpoint = gridless / "nerfstudio_models" / "step-000000007.ckpt"
    stored = torch.load(checkpoint, weights_only=True)
    stored["pipeline"] = {k: v for k, v in stored["pipeline"].items() if "occupancy_grid" not in k}
    torch.save(stored, checkpoint)
    cases = [
        (no_config / "nerfstudio_models" / "step-000000001.ckpt", "its run's config.yml is missing"),
        (tcnn["nerfacto"], "has another weight layout: retrain with --pipeline.model.implementation torch"),
        (tcnn["instant-ngp"], "has another weight layout: retrain it where tiny-cuda-nn is not installed"),
        (gridless, "an instant-ngp checkpoint without its occupancy grid"),
        (splat, "is a 'splatfacto' run; convert-nerf accepts nerfacto, tensorf, vanilla-nerf, instant-ngp"),
        (other.parent, "holds no nerfstudio nerfacto field"),
        (pickled.parent, "is not a nerfstudio checkpoint"),
    ]
    for teacher, message in cases:
        out = tmp_path / "out"
        assert main(["convert-nerf", str(teacher), "--output", str(out), "--to", "mlp"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not out.exists()
    with pytest.raises(TeacherError, match="needs an sdtoolkit teacher"):
        convert(PVDConfig(inherit_decoder=True), run_dir, tmp_path / "x", progress=False)


def test_a_compiled_nerfacto_teacher_renders_the_same_and_a_teacher_it_cannot_compile_is_refused(
    run_dir, tmp_path, capsys
):
    """`--compile-teacher`: torch.compile of the teacher's hash encodings (its field's and both proposal
    networks') changes no value of its renders; on by default where it can run; asked for, it is refused before
    anything is written for an sdtoolkit teacher (nothing of it would be compiled) and where the CPU has no C++
    compiler; a resumed run resolves it anew."""
    import torch._inductor.config as inductor_config

    from sdtoolkit.cli import main
    from sdtoolkit.nerf import NeRF, NeRFConfig
    from sdtoolkit.nerf.convert import compile_teacher, heldout_cameras, render_views, teacher_config

    tiny = PVDConfig(to="mlp", steps=4, stage2_steps=2, rays_per_step=64, cameras_per_step=1, ray_resolution=8,
                     checkpoint_every=0, mlp=MLPConfig(num_frequencies=2, width=16, depth=1))  # fmt: skip
    resumable = tmp_path / "resumable"
    convert(tiny, run_dir, resumable, progress=False, export_outputs=False)
    assert json.loads((resumable / "config.json").read_text())["pvd"]["compile_teacher"] is True  # the default here
    teacher, _ = load_nerf_asset(run_dir)
    cameras = heldout_cameras(2)
    eager = render_views(teacher, cameras, resolution=12)
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # an earlier conversion in this process compiled the same code: compile it anew here
    graphs = counters["stats"]["unique_graphs"]
    assert compile_teacher(teacher) == 3
    torch.testing.assert_close(render_views(teacher, cameras, resolution=12), eager, atol=1e-6, rtol=0)
    assert counters["stats"]["unique_graphs"] > graphs  # compiled, not run eagerly
    assert "compile_teacher" in PVDConfig.RESUMABLE
    with pytest.raises(TeacherError, match="this TEACHER is an sdtoolkit asset"):
        teacher_config(PVDConfig(compile_teacher=True), NeRF(NeRFConfig()))
    # the default: on for a nerfstudio teacher where torch.compile can run, off for an sdtoolkit teacher
    assert teacher_config(PVDConfig(), teacher).compile_teacher is True
    assert teacher_config(PVDConfig(), NeRF(NeRFConfig())).compile_teacher is False
    with inductor_config.patch({"cpp.cxx": ("sdtoolkit-no-such-cxx",)}):  # no C++ compiler (undone after)
        assert teacher_config(PVDConfig(), teacher).compile_teacher is False  # no compiler: the default is off
        out = tmp_path / "out"
        assert main(["convert-nerf", str(run_dir), "--output", str(out), "--to", "mlp", "--compile-teacher"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--compile-teacher: torch.compile on the CPU needs a C++ compiler" in err[0], err
        assert not out.exists()
        # a run that compiled where it ran resumes where no compiler is: the setting is resolved anew, not refused
        resumed = ["convert-nerf", "--resume", str(resumable), "--steps", "6", "--quiet", "--mesh-resolution", "16",
                   "--video-frames", "2", "--eval-views", "2"]  # fmt: skip
        assert main(resumed) == 0, capsys.readouterr().err
        assert json.loads((resumable / "config.json").read_text())["pvd"]["compile_teacher"] is False


def test_the_teacher_speed_benchmark_runs_eager_and_compiled_on_a_tiny_run(run_dir, tmp_path, monkeypatch, capsys):
    """`benchmarks/ns_teacher_speed.py` end to end at tiny size: both modes timed, the same pixels; a bad size is
    refused before any work."""
    from benchmarks import ns_teacher_speed

    out = tmp_path / "speed.json"
    argv = [str(run_dir), "--batches", "1", "--renders", "1", "--rays", "16", "--resolution", "8", "--out", str(out)]
    monkeypatch.setattr("sys.argv", ["ns_teacher_speed.py", *argv])
    ns_teacher_speed.main()
    result = json.loads(out.read_text())
    assert result["pixel_sum_difference"] < 1e-3 and result["compiled"]["compile_seconds"] > 0
    assert result["batch_speedup"] > 0 and result["render_speedup"] > 0
    monkeypatch.setattr("sys.argv", ["ns_teacher_speed.py", str(run_dir), "--rays", "0"])
    with pytest.raises(SystemExit):
        ns_teacher_speed.main()
    assert "--rays: 0 must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("variant", ["on", "both"])
def test_pvd_benchmark_refuses_the_decoder_copy_from_a_nerfstudio_teacher_before_any_work(
    variant, run_dir, tmp_path, monkeypatch, capsys
):
    """`benchmarks/pvd.py --inherit-decoder on|both --teacher NERFSTUDIO_RUN` stops with the reason before it renders
    the teacher's views or writes its output folder."""
    from benchmarks import pvd

    out = tmp_path / "out"
    argv = ["pvd.py", "--teacher", str(run_dir), "--inherit-decoder", variant, "--out", str(out)]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit):
        pvd.main()
    assert "needs an sdtoolkit teacher" in capsys.readouterr().err and not out.exists()


def test_sdtoolkit_sds_model_trains_an_sdtoolkit_nerf_on_nerfstudio_rays():
    """The `sdtoolkit-sds` model: nerfstudio rays of one whole view render through the sdtoolkit NeRF, the SDS loss
    of the prior reaches its field, nerfstudio's optimizer groups hold the field only and the prior stays out of the
    checkpoint."""
    from nerfstudio.cameras.rays import RayBundle as NSRayBundle

    from sdtoolkit.core.denoiser import Denoiser
    from sdtoolkit.data.cameras import Cameras
    from sdtoolkit.nerfstudio_plugin.model import SDSModelConfig
    from sdtoolkit.testing import tiny_sd_pipeline

    denoiser = Denoiser.from_pipeline(tiny_sd_pipeline()).freeze()
    box = SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]))
    model = SDSModelConfig(prior="tiny", max_steps=10).setup(
        scene_box=box, num_train_data=1, metadata={}, denoiser=denoiser
    )
    assert not any(k.startswith(("run.", "denoiser")) for k in model.state_dict())
    groups = model.get_param_groups()
    assert list(groups) == ["fields"] and len(groups["fields"]) == len(list(model.nerf.field.parameters()))
    for callback in model.get_training_callbacks(None):
        callback.run_callback_at_location(0, callback.where_to_run[0])
    origins, directions = Cameras(*(torch.tensor([v]) for v in (30.0, 20.0, 2.8, 40.0))).generate_rays(16, 16)
    rays = NSRayBundle(origins.reshape(-1, 3), directions.reshape(-1, 3), torch.ones(256, 1))
    outputs = model(rays)
    assert outputs["rgb"].shape == (256, 3) and outputs["accumulation"].shape == (256, 1)
    loss = model.get_loss_dict(outputs, {"central": torch.tensor([0.5]), "vertical": torch.tensor([1.2])})
    assert set(loss) == {"sds_loss"} and torch.isfinite(loss["sds_loss"])
    optimizer = torch.optim.Adam(groups["fields"], lr=1e-2)
    before = [p.detach().clone() for p in groups["fields"]]
    loss["sds_loss"].backward()
    assert sum(float(p.grad.abs().sum()) for p in groups["fields"] if p.grad is not None) > 0
    optimizer.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, groups["fields"]))


def test_the_method_is_registered_for_nerfstudio():
    """pyproject registers `sdtoolkit-sds` under nerfstudio's entry point group; the spec builds where nerfstudio's
    trainer imports (it needs torchvision)."""
    from pathlib import Path

    import tomllib

    from sdtoolkit.nerfstudio_plugin import allow_torchvision_without_ops

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    target = project["project"]["entry-points"]["nerfstudio.method_configs"]["sdtoolkit-sds"]
    assert target == "sdtoolkit.nerfstudio_plugin.method:sdtoolkit_sds"
    allow_torchvision_without_ops()
    pytest.importorskip("nerfstudio.engine.trainer", reason="nerfstudio's trainer needs torchvision")
    from sdtoolkit.nerfstudio_plugin.method import sdtoolkit_sds

    assert sdtoolkit_sds.config.method_name == "sdtoolkit-sds"
    assert sdtoolkit_sds.config.pipeline.model.prior == "builtin:shapes"


def test_ns_train_sdtoolkit_sds_runs_a_few_iterations_on_the_cpu(tmp_path):
    """`sdtoolkit-ns-train sdtoolkit-sds` (nerfstudio's ns-train, torchvision prepared) trains 2 iterations with the
    builtin prior and writes nerfstudio's run layout, which `convert-nerf` does not take (another method) but
    nerfstudio's viewer loads. Needs nerfstudio's trainer (torchvision and its further requirements)."""
    import subprocess
    import sys

    from sdtoolkit.nerfstudio_plugin import allow_torchvision_without_ops

    allow_torchvision_without_ops()
    pytest.importorskip("nerfstudio.configs.method_configs", reason="nerfstudio's trainer needs torchvision")
    command = [sys.executable, "-c", "from sdtoolkit.nerfstudio_plugin import ns_train; ns_train()", "sdtoolkit-sds",
               "--machine.device-type", "cpu", "--max-num-iterations", "2", "--vis", "tensorboard", "--output-dir",
               str(tmp_path), "--steps-per-save", "2", "--steps-per-eval-image", "1000", "--pipeline.model.max-steps",
               "2", "--pipeline.datamanager.train-resolution", "32", "--pipeline.datamanager.eval-resolution", "32",
               "--pipeline.model.prompt", "a red cube"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = (tmp_path / "sdtoolkit-sds").iterdir()
    assert (run / "config.yml").is_file() and list((run / "nerfstudio_models").glob("step-*.ckpt"))
    assert read_run_config(run / "config.yml")["method_name"] == "sdtoolkit-sds"


def test_scene_dataset_is_read_by_nerfstudio_with_sdtoolkits_rays_and_images(tmp_path):
    """`benchmarks/ns_scenes.py` writes a Blender-format scene whose cameras, as nerfstudio's Blender dataparser reads
    them, cast sdtoolkit's rays through every pixel centre (same frame, same convention), and whose images are the
    shapes world's renders."""
    import numpy as np
    from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig
    from PIL import Image

    from benchmarks.ns_scenes import SPLITS, scene_cameras, write_scene
    from sdtoolkit.data.render import render
    from sdtoolkit.data.shapes import COLOUR_NAMES, SHAPES

    folder = write_scene(tmp_path / "scene", "cube", "blue", resolution=8, seed=1)
    outputs = BlenderDataParserConfig(data=folder).setup().get_dataparser_outputs("test")
    assert len(outputs.image_filenames) == SPLITS["test"] and outputs.dataparser_scale == 1.0
    ours = scene_cameras(SPLITS["test"], 1 * 10 + 2)
    origins, directions = ours.generate_rays(8, 8)
    for index in (0, 7):
        rays = outputs.cameras.generate_rays(camera_indices=index)
        torch.testing.assert_close(rays.origins, origins[index], atol=1e-5, rtol=0)
        torch.testing.assert_close(rays.directions, directions[index], atol=1e-5, rtol=0)
    image = torch.from_numpy(np.asarray(Image.open(outputs.image_filenames[7]))).float() / 255
    truth = render(torch.tensor([SHAPES.index("cube")]), torch.tensor([COLOUR_NAMES.index("blue")]), ours[7], 8)
    torch.testing.assert_close(image, truth[0].permute(1, 2, 0), atol=1 / 255, rtol=0)
    assert image.min() < 0.5  # the cube is in view
    with pytest.raises(FileExistsError, match="not empty"):
        write_scene(folder, "cube", "blue")


def test_ns_train_lpips_offline_scores_nan_and_warns(monkeypatch, tmp_path):
    """nerfstudio's models build torchmetrics' LPIPS, which downloads AlexNet's weights: offline that was a URLError
    before training. After `allow_lpips_offline` a failed download warns once, naming the file, and scores NaN; a
    constructor that works is torchmetrics' own; with HF_HUB_OFFLINE set and the weights not cached no download is
    tried, and with them cached the constructor is called."""
    from urllib.error import URLError

    from sdtoolkit.nerfstudio_plugin import allow_lpips_offline, allow_torchvision_without_ops

    allow_torchvision_without_ops()
    lpip = pytest.importorskip("torchmetrics.image.lpip", reason="torchmetrics comes with nerfstudio's trainer")
    calls = []

    def offline(*args, **kwargs):
        calls.append(kwargs)
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(lpip, "LearnedPerceptualImagePatchSimilarity", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert allow_lpips_offline()
    with pytest.warns(UserWarning, match="alexnet-owt-7be5be79.pth"):
        metric = lpip.LearnedPerceptualImagePatchSimilarity(normalize=True)
    assert calls == [{"normalize": True}] and torch.isnan(metric(torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.warns(UserWarning, match="no download was tried"):
        metric = lpip.LearnedPerceptualImagePatchSimilarity(normalize=True)
    assert len(calls) == 1 and torch.isnan(metric(torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8)))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth").touch()
    with pytest.warns(UserWarning, match="could not be downloaded"):
        lpip.LearnedPerceptualImagePatchSimilarity(normalize=True)
    assert len(calls) == 2
    sentinel = object()
    monkeypatch.setattr(lpip, "LearnedPerceptualImagePatchSimilarity", lambda *a, **k: sentinel)
    assert allow_lpips_offline() and lpip.LearnedPerceptualImagePatchSimilarity() is sentinel


def test_ns_train_nerfacto_on_a_written_scene_is_a_pvd_teacher(tmp_path):
    """The nerfstudio teacher path end to end, offline: a scene from `benchmarks/ns_scenes.py`, `sdtoolkit-ns-train
    nerfacto` (2 iterations, torch implementation, CPU), and its run loads as a `convert-nerf` teacher whose density
    is finite. Needs nerfstudio's trainer (torchvision and its further requirements)."""
    import subprocess
    import sys

    from benchmarks.ns_scenes import write_scene
    from sdtoolkit.nerfstudio_plugin import allow_torchvision_without_ops

    allow_torchvision_without_ops()
    pytest.importorskip("nerfstudio.configs.method_configs", reason="nerfstudio's trainer needs torchvision")
    scene = write_scene(tmp_path / "scene", "torus", "red", resolution=16)
    command = [sys.executable, "-c", "from sdtoolkit.nerfstudio_plugin import ns_train; ns_train()", "nerfacto",
               "--machine.device-type", "cpu", "--max-num-iterations", "2", "--vis", "tensorboard", "--output-dir",
               str(tmp_path / "outputs"), "--steps-per-save", "2", "--pipeline.datamanager.train-num-rays-per-batch",
               "256", "--experiment-name", "scene", "--pipeline.model.implementation", "torch",
               "--pipeline.model.background-color", "white",
               "--pipeline.model.disable-scene-contraction", "True", "--pipeline.model.num-levels", "4",
               "--pipeline.model.log2-hashmap-size", "12", "blender-data", "--data", str(scene)]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = (tmp_path / "outputs" / "scene" / "nerfacto").iterdir()
    teacher, description = load_nerf_asset(run)
    assert description["nerfstudio"]["method"] == "nerfacto" and description["nerfstudio"]["step"] >= 1
    assert torch.isfinite(teacher.field.get_density(torch.rand(64, 3) * 2 - 1)).all()
    # what sdtoolkit-ns-viewer (and ns-train --load-dir) load: nerfstudio's own torch.load of this checkpoint, which
    # failed on its numpy scalars under torch's weights-only default until the wrappers allowed them
    from nerfstudio.utils.eval_utils import eval_setup

    from sdtoolkit.nerfstudio_plugin import allow_lpips_offline, numpy_scalars_allowed

    allow_lpips_offline()  # as the wrappers do: nerfacto's model builds LPIPS, whose weights are not here offline
    checkpoint = next((run / "nerfstudio_models").glob("*.ckpt"))
    with pytest.raises(Exception, match="numpy"):
        torch.load(checkpoint, map_location="cpu")
    with numpy_scalars_allowed():
        _, pipeline, _, step = eval_setup(run / "config.yml", test_mode="inference")
    assert step >= 1 and type(pipeline.model).__name__ == "NerfactoModel"


def test_ns_train_viewer_takes_a_run_folder_and_names_a_missing_config(tmp_path, capsys):
    """`sdtoolkit-ns-viewer --load-config RUN_FOLDER` used to end in IsADirectoryError, a missing path in a
    FileNotFoundError traceback: the folder is taken as its config.yml, a missing one is one line (exit 2)."""
    from sdtoolkit.nerfstudio_plugin import _load_config_argument

    run = tmp_path / "outputs" / "x" / "nerfacto" / "t"
    run.mkdir(parents=True)
    (run / "config.yml").write_text("method_name: nerfacto\n")
    argv = ["sdtoolkit-ns-viewer", "--load-config", str(run)]
    _load_config_argument(argv)
    assert argv[-1] == str(run / "config.yml")
    argv = ["sdtoolkit-ns-viewer", f"--load-config={run}"]
    _load_config_argument(argv)
    assert argv[-1] == f"--load-config={run / 'config.yml'}"
    with pytest.raises(SystemExit) as exit_info:
        _load_config_argument(["sdtoolkit-ns-viewer", "--load-config", str(tmp_path / "nope" / "config.yml")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no config.yml there" in err[0], err


def test_ns_train_viewer_opens_outside_the_scene_box(monkeypatch):
    """viser opens a browser's camera 0.5 scene units from the origin, inside an object-centred scene (the page is
    one flat colour); the patched viewer puts a new client's camera outside the model's scene box, looking at its
    centre, +z up, after nerfstudio's own set-up of the client."""
    from types import SimpleNamespace

    import numpy as np

    from sdtoolkit.nerfstudio_plugin import (
        VIEW_DIRECTION,
        VIEW_DISTANCE,
        allow_torchvision_without_ops,
        open_viewer_outside_the_scene,
    )

    allow_torchvision_without_ops()
    viewer = pytest.importorskip("nerfstudio.viewer.viewer", reason="nerfstudio's viewer needs viser and torchvision")
    calls = []
    monkeypatch.setattr(viewer.Viewer, "handle_new_client", lambda self, client: calls.append(client))
    open_viewer_outside_the_scene()
    open_viewer_outside_the_scene()  # idempotent: one wrapper
    box = SceneBox(aabb=torch.tensor([[-1.0, -1.0, 0.0], [1.0, 3.0, 2.0]]))
    state = SimpleNamespace(pipeline=SimpleNamespace(model=SimpleNamespace(scene_box=box)))
    client = SimpleNamespace(camera=SimpleNamespace(position=(-3.0, 3.0, -3.0), look_at=(0.0, 0.0, 0.0)))
    viewer.Viewer.handle_new_client(state, client)
    assert calls == [client]  # nerfstudio's own handler ran once
    scale, centre = viewer.VISER_NERFSTUDIO_SCALE_RATIO, np.array([0.0, 1.0, 1.0])
    position = np.asarray(client.camera.position) / scale
    np.testing.assert_allclose(np.asarray(client.camera.look_at) / scale, centre)
    np.testing.assert_allclose(np.linalg.norm(position - centre), VIEW_DISTANCE * np.sqrt(24) / 2, rtol=1e-6)
    assert (np.abs(position - centre) > np.array([1.0, 2.0, 1.0])).any()  # outside the box
    direction = (position - centre) / np.linalg.norm(position - centre)
    np.testing.assert_allclose(direction, np.asarray(VIEW_DIRECTION) / np.linalg.norm(VIEW_DIRECTION), rtol=1e-6)
    assert tuple(client.camera.up_direction) == (0.0, 0.0, 1.0)


def test_scene_script_refuses_a_used_folder_in_one_line(tmp_path, monkeypatch, capsys):
    """`python -m benchmarks.ns_scenes --output FOLDER` into a non-empty folder: one argparse line (was a
    traceback); the user's file is kept."""
    from benchmarks import ns_scenes

    (tmp_path / "notes.txt").write_text("mine")
    argv = ["ns_scenes.py", "--shape", "torus", "--colour", "red", "--output", str(tmp_path), "--resolution", "8"]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        ns_scenes.main()
    assert exit_info.value.code == 2
    assert "is not empty" in capsys.readouterr().err and (tmp_path / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
