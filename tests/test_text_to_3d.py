"""Text-to-3D: SDS/VSD gradients, region masks, layouts, the NeRF pieces, mesh and video export, resume, CLI smoke."""

from __future__ import annotations

import copy
import json
import math
import re

import numpy as np
import pytest
import torch

from sdtoolkit.core.denoiser import Denoiser
from sdtoolkit.nerf import FieldConfig, HashEncoding, NeRFConfig
from sdtoolkit.testing import tiny_sd_pipeline
from sdtoolkit.text_to_3d import (
    EmptyFieldError,
    TextTo3DConfig,
    auto_iso_threshold,
    from_dict,
    marching_cubes,
    sniff_format,
    to_dict,
    train,
    write_video,
)
from sdtoolkit.text_to_3d import export as export_module
from sdtoolkit.text_to_3d.guidance import (
    LayoutError,
    SDSConfig,
    TimestepScheduleConfig,
    VSDConfig,
    build,
    parse_layout,
    region_gradient,
    region_masks,
    sds_weight,
)
from sdtoolkit.text_to_3d.guidance.registry import register


@pytest.fixture(scope="module")
def denoiser():
    return Denoiser.from_pipeline(tiny_sd_pipeline()).freeze()


def tiny_nerf() -> NeRFConfig:
    return NeRFConfig(
        field=FieldConfig(num_levels=4, max_res=32, log2_hashmap_size=12, hidden_dim=16),
        num_samples=16,
        occupancy_resolution=16,
    )


def _conds(denoiser, n, prompt="a red cube, front view"):
    cond, uncond = denoiser.encode_prompt([prompt])
    return cond.repeat_interleave(n), uncond.repeat_interleave(n)


@pytest.mark.parametrize("weighting", ["sds", "uniform", "fantasia3d"])
def test_sds_loss_gradient_is_w_times_eps_difference(denoiser, weighting):
    config = SDSConfig(guidance_scale=7.5, weighting=weighting)
    guidance = build("sds", denoiser, config)
    latents = torch.randn(2, 4, 8, 8, requires_grad=True)
    cond, uncond = _conds(denoiser, 2)
    generator = torch.Generator().manual_seed(3)
    replay = copy.deepcopy(generator)
    out = guidance(latents, [(cond, uncond)], 0.3, generator=generator)
    (autograd,) = torch.autograd.grad(out.loss, latents)
    # by hand: the same draws of t and eps, eps_hat with diffusers CFG, w(t)
    from sdtoolkit.distill.score_distillation import sample_timesteps

    t = sample_timesteps(denoiser.schedule, 2, 0.02, 0.98, generator=replay)
    eps = torch.randn(latents.shape, generator=replay)
    z_t = denoiser.schedule.add_noise(latents.detach(), eps, t)
    eps_hat = denoiser.predict(z_t, t, cond, uncond=uncond, guidance_scale=7.5).eps
    # diffusers convention: eps_u + s (eps_c - eps_u) (separate forwards: equal up to float32 batching noise)
    eps_u, eps_c = denoiser.predict(z_t, t, uncond).eps, denoiser.predict(z_t, t, cond).eps
    torch.testing.assert_close(eps_hat, eps_u + 7.5 * (eps_c - eps_u), rtol=1e-4, atol=1e-4)
    ac = denoiser.schedule.alphas_cumprod[t.long()].float()[:, None, None, None]
    w = {"sds": 1 - ac, "uniform": torch.ones_like(ac), "fantasia3d": ac.sqrt() * (1 - ac)}[weighting]
    expected = w * (eps_hat - eps)
    assert torch.equal(out.t, t)
    # the loss is averaged over the batch: B * dL/dz is the per-sample SDS gradient
    # (w(t) from the schedule's alpha/sigma vs from alphas_cumprod here: float32 rounding only)
    torch.testing.assert_close(autograd * 2, expected, rtol=2e-5, atol=1e-6)


def test_sds_surrogate_gradient_is_exactly_g():
    from sdtoolkit.text_to_3d.guidance import sds_surrogate_loss

    latents = torch.randn(3, 4, 8, 8, requires_grad=True)
    g = torch.randn(3, 4, 8, 8)
    (grad,) = torch.autograd.grad(sds_surrogate_loss(latents, g), latents)
    torch.testing.assert_close(grad * 3, g, rtol=1e-6, atol=1e-6)  # z - (z - g) = g up to one rounding


def test_sds_weight_matches_alphas_cumprod(denoiser):
    t = torch.tensor([20.0, 500.0, 979.0])
    c = denoiser.coefficients(t, torch.zeros(3, 1, 1, 1))
    ac = denoiser.schedule.alphas_cumprod[t.long()].float()
    torch.testing.assert_close(sds_weight("sds", c.alpha_t, c.sigma_t).flatten(), 1 - ac)
    with pytest.raises(ValueError, match="weighting"):
        sds_weight("nope", c.alpha_t, c.sigma_t)


def test_timestep_annealing(denoiser):
    from sdtoolkit.text_to_3d.guidance import sample_sds_timesteps

    sqrt = TimestepScheduleConfig(anneal="sqrt")
    early = sample_sds_timesteps(denoiser, sqrt, 1, 0.0)
    late = sample_sds_timesteps(denoiser, sqrt, 1, 1.0)
    assert early.item() == 980 and late.item() == 20
    linear = TimestepScheduleConfig(anneal="linear", max_step_percent_end=0.5)
    g = torch.Generator().manual_seed(0)
    assert sample_sds_timesteps(denoiser, linear, 256, 1.0, g).max() <= 500


def test_vsd_gradient_is_real_minus_fake(denoiser):
    pipe_denoiser = Denoiser.from_pipeline(tiny_sd_pipeline()).freeze()  # VSD adds a LoRA: keep the fixture clean
    guidance = build("vsd", pipe_denoiser, VSDConfig(guidance_scale=5.0))
    from sdtoolkit.data.cameras import sample_cameras

    cameras = sample_cameras(1, torch.Generator().manual_seed(1))
    latents = torch.randn(1, 4, 8, 8, requires_grad=True)
    cond, uncond = _conds(pipe_denoiser, 1)
    generator = torch.Generator().manual_seed(5)
    replay = copy.deepcopy(generator)
    out = guidance(latents, [(cond, uncond)], 0.0, cameras=cameras, generator=generator)
    (autograd,) = torch.autograd.grad(out.loss, latents)
    from sdtoolkit.distill.score_distillation import sample_timesteps

    t = sample_timesteps(pipe_denoiser.schedule, 1, 0.02, 0.98, generator=replay)
    eps = torch.randn(latents.shape, generator=replay)
    z_t = pipe_denoiser.add_noise(latents.detach(), eps, t)
    # the LoRA starts at zero and the camera MLP's output layer at zero: the fake score equals the teacher
    eps_fake = pipe_denoiser.predict(z_t, t, cond).eps
    eps_real = pipe_denoiser.predict(z_t, t, cond, uncond=uncond, guidance_scale=5.0).eps
    ac = pipe_denoiser.schedule.alphas_cumprod[t.long()].float()
    torch.testing.assert_close(autograd, (1 - ac) * (eps_real - eps_fake), rtol=1e-4, atol=1e-6)
    assert out.extra_losses["loss_lora"].requires_grad
    assert len(guidance.trainable_parameters()) > 0


def test_region_masks_partition_the_image():
    semantics = torch.rand(2, 3, 16, 16)
    for size in (None, 8, 4):
        masks = region_masks(semantics, size)
        assert set(masks.unique().tolist()) <= {0.0, 1.0}
        torch.testing.assert_close(masks.sum(1), torch.ones_like(masks[:, 0]))
    masks = region_masks(semantics)
    per_region = torch.stack([torch.full((2, 4, 16, 16), float(k)) for k in range(3)])
    combined = region_gradient(per_region, masks)
    assert torch.equal(combined[:, 0], semantics.argmax(1).float())


def _sphere_density(n=64, r0=0.5, softness=0.01):
    axis = torch.linspace(-1 + 1 / n, 1 - 1 / n, n)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    r = torch.sqrt(x**2 + y**2 + z**2)
    return 200 * torch.sigmoid((r0 - r) / softness), float(axis[0]), float(axis[-1])


def test_auto_iso_threshold_sphere_is_watertight_and_accurate():
    import trimesh

    densities, lower, upper = _sphere_density()
    level = auto_iso_threshold(densities, (upper - lower) / 63)
    vertices, faces = marching_cubes(densities, lower, upper, level)
    mesh = trimesh.Trimesh(vertices, faces)
    assert mesh.is_watertight
    true_volume = 4 / 3 * math.pi * 0.5**3
    assert abs(abs(mesh.volume) - true_volume) / true_volume < 0.02


def test_empty_field_raises_with_reason():
    with pytest.raises(EmptyFieldError, match="empty"):
        auto_iso_threshold(torch.full((8, 8, 8), 1e-6), 0.25)


def test_glb_round_trip_keeps_faces_and_colours(tmp_path):
    import trimesh

    densities, lower, upper = _sphere_density(32)
    vertices, faces = marching_cubes(densities, lower, upper, auto_iso_threshold(densities, (upper - lower) / 31))
    colours = np.tile(np.array([[230, 25, 25, 255]], dtype=np.uint8), (len(vertices), 1))
    mesh = trimesh.Trimesh(vertices, faces, vertex_colors=colours)
    paths = export_module.export_mesh(mesh, tmp_path)
    assert [p.suffix for p in paths] == [".glb", ".obj", ".ply"]
    loaded = trimesh.load(tmp_path / "mesh.glb", force="mesh")
    assert len(loaded.faces) == len(mesh.faces)
    assert np.abs(loaded.visual.vertex_colors[:, :3].astype(int) - [230, 25, 25]).max() <= 1
    ply = trimesh.load(tmp_path / "mesh.ply", force="mesh")
    assert len(ply.faces) == len(mesh.faces) and ply.visual.vertex_colors[0, 0] == 230


def test_video_writer_never_misnames(tmp_path, monkeypatch):
    frames = (np.random.default_rng(0).random((4, 24, 24, 3)) * 255).astype(np.uint8)
    monkeypatch.setattr(export_module, "ffmpeg_available", lambda: False)
    path = write_video(frames, tmp_path / "turntable.mp4")
    assert path.suffix == ".gif" and sniff_format(path) == "gif"
    assert not (tmp_path / "turntable.mp4").exists()
    monkeypatch.undo()
    if export_module.ffmpeg_available():
        path = write_video(frames, tmp_path / "turntable2.gif")
        assert path.suffix == ".mp4" and sniff_format(path) == "mp4"


@pytest.mark.parametrize(
    "layout, message",
    [
        ({}, "non-empty 'objects'"),
        ({"objects": []}, "non-empty 'objects'"),
        ({"objects": [{"prompt": "", "box": [0, 0, 0, 1, 1, 1]}]}, "prompt must be a non-empty"),
        ({"objects": [{"prompt": "a", "box": [0, 0, 0, 1, 1]}]}, "list of 6 numbers"),
        ({"objects": [{"prompt": "a", "box": [0, 0, 0, 0, 1, 1]}]}, "non-positive size"),
        ({"objects": [{"prompt": "a", "box": [0, 0, 0, 1.5, 1, 1]}]}, "leaves the scene bound"),
        ({"objects": [{"prompt": "a", "box": {"center": [0, 0, 0]}}]}, "exactly 'center' and 'size'"),
        ({"objects": [{"prompt": "a", "box": [0, 0, 0, 1, 1, 1]}], "scene_bound": -1}, "scene_bound"),
        ({"objects": [{"prompt": "a", "box": [0, 0, 0, 1, 1, 1]}], "extra": 1}, "unknown layout keys"),
        ("{not json", "not valid JSON"),
    ],
)
def test_layout_validation(layout, message):
    with pytest.raises(LayoutError, match=message):
        parse_layout(layout if isinstance(layout, str) else json.dumps(layout))


def test_layout_forms_agree():
    a = parse_layout({"objects": [{"prompt": "a red cube", "box": {"center": [0, 0.5, 0], "size": [0.4, 0.4, 0.4]}}]})
    b = parse_layout({"objects": [{"prompt": "a red cube", "box": [-0.2, 0.3, -0.2, 0.2, 0.7, 0.2]}]})
    np.testing.assert_allclose(a.objects[0].box_min, b.objects[0].box_min)
    np.testing.assert_allclose(a.objects[0].box_max, b.objects[0].box_max)


def test_registry_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register("sds", SDSConfig)(type("Other", (), {}))
    with pytest.raises(KeyError, match="registered: "):
        build("nope", None)


def test_hash_encoding_matches_reference_hash():
    from sdtoolkit.nerf.encodings import HASH_PRIMES

    enc = HashEncoding(num_levels=4, min_res=8, max_res=64, log2_hashmap_size=10, implementation="torch")
    points = torch.rand(50, 1, 3) * enc.scales[None, :, None]
    floor = points.floor().long()
    index = enc.corner_indices(points.floor())
    for c in range(8):
        g = floor + torch.tensor([(c >> 2) & 1, (c >> 1) & 1, c & 1])
        direct = g[..., 0] + g[..., 1] * enc.strides + g[..., 2] * enc.strides**2
        hashed = (g[..., 0] * HASH_PRIMES[0]) ^ (g[..., 1] * HASH_PRIMES[1]) ^ (g[..., 2] * HASH_PRIMES[2])
        assert torch.equal(index[..., c], torch.where(enc.dense, direct, hashed) % enc.table_size)


def test_nerf_render_is_composited_over_background():
    from sdtoolkit.data.cameras import turntable_cameras
    from sdtoolkit.nerf import NeRF

    nerf = NeRF(tiny_nerf())
    out = nerf.render(turntable_cameras(2), 16, background=(0.0, 1.0, 0.0))
    assert out["rgb"].shape == (2, 3, 16, 16) and out["opacity"].max() <= 1 + 1e-6
    corner = out["rgb"][:, :, 0, 0]  # corner rays miss the scene sphere: pure background
    torch.testing.assert_close(corner, torch.tensor([[0.0, 1.0, 0.0]] * 2))
    assert out["opacity"][:, :, 8, 8].min() > 0.5  # the Magic3D blob fills the centre


def test_config_json_round_trip():
    config = TextTo3DConfig(prompt="a red cube", method="vsd", steps=7)
    config.guidance.timesteps.anneal = "sqrt"
    again = from_dict(json.loads(json.dumps(to_dict(config))))
    assert again == config


def test_exact_resume(tmp_path, denoiser):
    def config():
        return TextTo3DConfig(
            prompt="a red cube",
            prior="tiny",
            steps=4,
            nerf=tiny_nerf(),
            preview_every=0,
            checkpoint_every=0,
            start_resolution=8,
            resolution_warmup=0.5,
        )

    straight = train(config(), tmp_path / "a", denoiser=denoiser, progress=False)
    train(config(), tmp_path / "b", denoiser=denoiser, progress=False, stop_at=2)
    resumed = train(config(), tmp_path / "b", denoiser=denoiser, progress=False, resume=True)
    assert resumed.step == 4
    for (name, a), b in zip(straight.nerf.state_dict().items(), resumed.nerf.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("method", ["sds", "vsd", "semantic-sds"])
def test_cli_smoke_per_method(method, tiny_prior, tmp_path, capsys):
    import trimesh

    from sdtoolkit.cli import main

    args = ["text-to-3d", "a red cube", "--prior", str(tiny_prior), "--method", method, "--steps", "3"]
    if method == "semantic-sds":
        layout = {
            "objects": [
                {"prompt": "a red cube", "box": [-0.4, -0.9, -0.4, 0.4, -0.1, 0.4]},
                {"prompt": "a blue sphere", "box": {"center": [0, 0.5, 0], "size": [0.8, 0.8, 0.8]}},
            ]
        }
        (tmp_path / "scene.json").write_text(json.dumps(layout))
        args = [a for a in args if a != "a red cube"] + ["--layout", str(tmp_path / "scene.json")]
    out = tmp_path / "run"
    args += ["--output", str(out), "--preset", "tiny", "--mesh-resolution", "24", "--video-frames", "3", "--quiet"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["mesh_faces"] > 0
    assert json.loads((out / "config.json").read_text())["method"] == method
    if method == "semantic-sds":  # per-box extraction: the summary names each object and its iso-level
        assert [o["prompt"] for o in summary["objects"]] == ["a red cube", "a blue sphere"]
    mesh = trimesh.load(out / "mesh.glb", force="mesh")
    assert len(mesh.faces) > 0 and mesh.visual.vertex_colors.shape[0] == len(mesh.vertices)
    assert sniff_format(summary["video"]) == summary["video"].rsplit(".", 1)[1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["", "--output", "x"], "prompt is empty"),
        (["a red cube", "--method", "nerf"], "unknown --method 'nerf'"),
        (["--method", "semantic-sds"], "needs --layout"),
        (["a red cube", "--weighting", "magic"], "unknown --weighting"),
        # a check spanning fields of the top-level config: no empty key before it (was "error: : vertex_colours")
        (["a red cube", "--vertex-colours", "delit", "--nerf.shading", "lambert"], "error: vertex_colours 'delit'"),
        (["a red cube", "--cameras.azimuth-range", "10", "-10"], "azimuth_range = [10.0, -10.0]: need min <= max"),
    ],
)
def test_cli_rejects_bad_input_in_one_line(args, message, capsys):
    from sdtoolkit.cli import main

    assert main(["text-to-3d", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where torch sees no CUDA device")
@pytest.mark.parametrize("command", ["text-to-3d", "image-to-3d"])
@pytest.mark.parametrize("device, message", [("cuda", "torch sees no CUDA device"), ("tpu", "is not supported")])
def test_cli_refuses_a_device_torch_cannot_use_before_writing(command, device, message, tmp_path, capsys):
    """--device cuda on a CPU-only torch used to end in a traceback after the output folder was claimed."""
    from sdtoolkit.cli import main

    out = tmp_path / "run"
    first = ["a red cube"] if command == "text-to-3d" else [str(tmp_path / "front.png"), "--prompt", "a red cube"]
    if command == "image-to-3d":
        from PIL import Image

        image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
        image.paste((255, 0, 0, 255), (20, 20, 44, 44))
        image.save(tmp_path / "front.png")
    assert main([command, *first, "--output", str(out), "--device", device, "--preset", "tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--device" in err and device in err and message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_cli_rejects_box_outside_scene(tmp_path, capsys):
    from sdtoolkit.cli import main

    (tmp_path / "bad.json").write_text(json.dumps({"objects": [{"prompt": "a", "box": [0, 0, 0, 2, 0.5, 0.5]}]}))
    assert main(["text-to-3d", "--method", "semantic-sds", "--layout", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "leaves the scene bound" in err and len(err.splitlines()) == 1


def test_hash_encoding_gradient_matches_plain_indexing():
    from sdtoolkit.nerf.encodings import gather_rows

    table = torch.randn(50, 2, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 50, (30, 8))
    weights = torch.randn(30, 8, 2, dtype=torch.float64)
    (ours,) = torch.autograd.grad((gather_rows(table, index) * weights).sum(), table)
    (plain,) = torch.autograd.grad((table[index] * weights).sum(), table)
    torch.testing.assert_close(ours, plain)


def test_uv_texture_option(tmp_path):
    pytest.importorskip("xatlas")
    import trimesh

    from sdtoolkit.nerf import NeRF
    from sdtoolkit.text_to_3d.export import export_mesh, extract_mesh, uv_texture_mesh

    nerf = NeRF(tiny_nerf())
    textured = uv_texture_mesh(extract_mesh(nerf, 16), nerf, texture_size=32)
    export_mesh(textured, tmp_path, "textured", formats=("glb",))
    loaded = trimesh.load(tmp_path / "textured.glb", force="mesh")
    assert loaded.visual.uv.shape == (len(loaded.vertices), 2)
    assert loaded.visual.material.baseColorTexture.size == (32, 32)


def test_cli_resume_extends_a_run(tiny_prior, tmp_path):
    from sdtoolkit.cli import main

    common = ["text-to-3d", "a red cube", "--prior", str(tiny_prior), "--output", str(tmp_path / "run"), "--quiet"]
    common += ["--preset", "tiny", "--mesh-resolution", "16", "--video-frames", "2", "--formats", "glb"]
    assert main([*common, "--steps", "2"]) == 0
    assert main([*common, "--steps", "3", "--resume"]) == 0
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["step"] == 3
    assert len(json.loads((tmp_path / "run" / "checkpoint.json").read_text())["history"]) == 3


def test_cli_reports_a_field_without_surface_in_one_line_and_keeps_the_trained_run(tiny_prior, tmp_path, capsys):
    from sdtoolkit.cli import main

    out = tmp_path / "run"
    common = ["text-to-3d", "a red cube", "--prior", str(tiny_prior), "--output", str(out), "--quiet"]
    common += ["--preset", "tiny", "--mesh-resolution", "16", "--video-frames", "2", "--formats", "glb"]
    capsys.readouterr()
    assert main([*common, "--steps", "2", "--iso-level", "1e9"]) == 1  # above every density: no surface
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("sdtoolkit text-to-3d:")]  # (not diffusers' bars)
    assert "Traceback" not in err and len(ours) == 1, err
    assert "no surface at iso-level 1e+09" in ours[0] and f"--resume {out} --iso-level" in ours[0]
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 2 and not (out / "mesh.glb").exists()
    low, high = map(float, re.search(r"densities span (\S+) to (\S+)\)", ours[0]).groups())
    assert main([*common, "--steps", "2", "--resume", "--iso-level", str((low + high) / 2)]) == 0  # re-export only
    assert (out / "mesh.glb").exists() and json.loads((out / "summary.json").read_text())["steps"] == 2


def test_cli_re_exports_keep_the_folder_and_its_config_consistent(tiny_prior, tmp_path, capsys):
    """A re-export that finds no surface leaves config.json's export settings as they were (it used to record the
    failing --iso-level, which every later --resume then reused); --steps below the trained steps is refused; a
    re-export with fewer --formats removes the run's older mesh files (eval-3d used to score a stale mesh.glb)."""
    from sdtoolkit.cli import main

    out = tmp_path / "run"
    common = ["text-to-3d", "a red cube", "--prior", str(tiny_prior), "--output", str(out), "--quiet"]
    common += ["--preset", "tiny", "--mesh-resolution", "16", "--video-frames", "2", "--steps", "2"]
    assert main(common) == 0
    assert all((out / f"mesh.{fmt}").is_file() for fmt in ("glb", "obj", "ply"))
    assert json.loads((out / "config.json").read_text())["iso_level"] is None
    # the export settings are kept beside the run, so a bare --resume re-exports as the run did (it used to fall
    # back to a 96-cell grid and 36 frames)
    saved = json.loads((out / "config.json").read_text())["command"]
    assert saved == {"mesh_resolution": 16, "formats": "glb,obj,ply", "uv_texture": False, "video_frames": 2}
    first = json.loads((out / "summary.json").read_text())["mesh_vertices"]
    assert main(["text-to-3d", "--resume", str(out), "--quiet"]) == 0
    assert json.loads((out / "summary.json").read_text())["mesh_vertices"] == first
    capsys.readouterr()
    assert main([*common, "--resume", "--iso-level", "1e9"]) == 1
    assert "`--iso-level none`" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["iso_level"] is None  # not the failing 1e9
    assert main([*common[:-2], "--steps", "1", "--resume"]) == 2
    assert "--steps 1 is below the 2 steps the run" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["steps"] == 2
    for kind, said in [("convert-nerf", "a convert-nerf"), ("image-to-3d", "an image-to-3d")]:
        other = tmp_path / kind  # another kind of run: one line naming it, not the other run's config keys
        other.mkdir()
        (other / ".sdtoolkit-manifest.json").write_text(json.dumps({"kind": kind, "owned": []}))
        assert main(["text-to-3d", "--resume", str(other)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"holds {said} run, not a text-to-3d run" in err[0], err
    assert main([*common, "--resume", "--formats", "ply"]) == 0
    assert (out / "mesh.ply").is_file() and not (out / "mesh.glb").exists() and not (out / "mesh.obj").exists()
    assert json.loads((out / "summary.json").read_text())["mesh"] == [str(out / "mesh.ply")]


def test_uv_texture_files_are_named_after_the_mesh_and_a_users_files_survive(tiny_prior, tmp_path):
    """A textured OBJ used to write trimesh's material.mtl / material_0.png, replacing a user's files of those
    names even under --overwrite (which keeps the user's files): now mesh_textured.mtl / .png, the run's own."""
    pytest.importorskip("xatlas")
    import trimesh

    from sdtoolkit.cli import main

    out = tmp_path / "mine"
    out.mkdir()
    for name in ("material.mtl", "material_0.png", "notes.txt"):
        (out / name).write_text(f"user's {name}")
    args = ["text-to-3d", "a red cube", "--prior", str(tiny_prior), "--output", str(out), "--quiet", "--overwrite"]
    args += ["--preset", "tiny", "--mesh-resolution", "16", "--video-frames", "2", "--steps", "2", "--uv-texture"]
    assert main(args) == 0
    for name in ("material.mtl", "material_0.png", "notes.txt"):
        assert (out / name).read_text() == f"user's {name}"
    assert "map_Kd mesh_textured.png" in (out / "mesh_textured.mtl").read_text()
    loaded = trimesh.load(out / "mesh_textured.obj", force="mesh")
    assert loaded.visual.uv.shape == (len(loaded.vertices), 2)
    owned = json.loads((out / ".sdtoolkit-manifest.json").read_text())["owned"]
    assert "mesh_textured.png" in owned and "material_0.png" not in owned


def test_cli_names_the_3d_extra_when_mesh_libraries_are_missing(monkeypatch, capsys):
    import importlib.util

    from sdtoolkit.cli import main

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mcubes" else real_find_spec(name, *a)
    )
    assert main(["text-to-3d", "a red cube", "--prior", "builtin:shapes"]) == 2
    assert "pip install 'sdtoolkit[3d]'" in capsys.readouterr().err


def test_semantic_sds_region_isolation_runs(tmp_path, denoiser):
    from sdtoolkit.text_to_3d.guidance import SemanticSDSConfig

    layout = {
        "objects": [
            {"prompt": "a red cube", "box": [-0.4, -0.9, -0.4, 0.4, -0.1, 0.4]},
            {"prompt": "a blue sphere", "box": [-0.4, 0.1, -0.4, 0.4, 0.9, 0.4]},
        ]
    }
    guidance = SemanticSDSConfig(isolate_regions=True, local_view_prob=0.0)
    config = TextTo3DConfig(
        method="semantic-sds",
        layout=layout,
        guidance=guidance,
        prior="tiny",
        steps=2,
        nerf=tiny_nerf(),
        preview_every=0,
        checkpoint_every=0,
    )
    run = train(config, tmp_path, denoiser=denoiser, progress=False)
    assert run.step == 2 and all(math.isfinite(h["loss_guidance"]) for h in run.history)


def test_isolated_object_views_render_one_box_with_its_own_prompt(denoiser):
    """With `isolate_local_views` an object-centric step renders its box alone (the neighbour's density is masked
    out) and applies that object's prompt alone, without region masks; scene steps keep the masked form."""
    from sdtoolkit.text_to_3d.guidance import SemanticSDSConfig, SingleBoxPrior
    from sdtoolkit.text_to_3d.trainer import setup, training_step

    layout = {
        "objects": [
            {"prompt": "a red cube", "box": [-0.4, -0.9, -0.4, 0.4, -0.1, 0.4]},
            {"prompt": "a blue sphere", "box": [-0.4, 0.1, -0.4, 0.4, 0.9, 0.4]},
        ]
    }
    calls = []
    for prob in (1.0, 0.0):
        guidance = SemanticSDSConfig(local_view_prob=prob)
        config = TextTo3DConfig(
            method="semantic-sds", layout=layout, guidance=guidance, prior="tiny", nerf=tiny_nerf()
        )
        run = setup(config, denoiser=denoiser)
        render, guide = run.nerf.render, run.guidance

        def spy_render(*args, run=run, render=render, **kwargs):
            calls.append(("render", type(run.nerf.field.region_prior).__name__, kwargs["ray_transform"] is not None))
            return render(*args, **kwargs)

        def spy_guidance(latents, conds, progress, guide=guide, **kwargs):
            calls.append(("guidance", len(conds), kwargs.get("masks") is not None))
            return guide(latents, conds, progress, **kwargs)

        run.nerf.render, run.guidance = spy_render, spy_guidance
        training_step(run)
        assert type(run.nerf.field.region_prior).__name__ == "LayoutPrior"  # restored after the step
    assert calls == [
        ("render", "SingleBoxPrior", True),
        ("guidance", 1, False),
        ("render", "LayoutPrior", False),
        ("guidance", 2, True),
    ]
    prior = run.nerf.field.region_prior
    inside_cube, inside_sphere = torch.tensor([[0.0, -0.5, 0.0]]), torch.tensor([[0.0, 0.5, 0.0]])
    only_sphere = SingleBoxPrior(prior, 1)
    assert float(only_sphere.density_mask(inside_cube)) < 1e-6 < 0.99 < float(only_sphere.density_mask(inside_sphere))
    assert float(prior.density_mask(inside_cube)) > 0.99


def test_one_box_alone_is_not_hidden_by_its_masked_neighbour(denoiser):
    """A view of box 1 through box 0 with box 1 rendered alone: the occupancy grid (cached under the whole layout)
    must not let box 0's masked-out matter prune the samples behind it (the far box would render cut off)."""
    from sdtoolkit.data import turntable_cameras
    from sdtoolkit.text_to_3d.guidance import SingleBoxPrior
    from sdtoolkit.text_to_3d.trainer import setup

    layout = {
        "objects": [
            {"prompt": "a red cube", "box": [-0.3, -0.8, -0.3, 0.3, -0.2, 0.3]},
            {"prompt": "a blue sphere", "box": [-0.3, 0.2, -0.3, 0.3, 0.8, 0.3]},
        ]
    }
    run = setup(TextTo3DConfig(method="semantic-sds", layout=layout, prior="tiny", nerf=tiny_nerf()), denoiser)
    nerf = run.nerf  # both boxes start as blobs; make the cache see box 0 as opaque, as after training
    nerf.update_occupancy(0, force=True)
    grid = nerf.occupancy
    grid.densities.mul_(torch.where(grid.cell_centres()[..., 1] < 0, 50.0, 1.0))
    behind = turntable_cameras(8, elevation_deg=0.0, distance=2.5)[6:7]  # azimuth 270: -y axis, box 0 in between
    prior = nerf.field.region_prior
    nerf.field.region_prior = SingleBoxPrior(prior, 1)
    try:
        with torch.no_grad():
            cached = nerf.render(behind, 16, stratified=False)["opacity"][0, 0, 8, 8]
            nerf.occupancy = None  # exact densities, no cache
            exact = nerf.render(behind, 16, stratified=False)["opacity"][0, 0, 8, 8]
    finally:
        nerf.field.region_prior, nerf.occupancy = prior, grid
    assert float(exact) > 0.2
    assert abs(float(cached - exact)) < 0.05, (cached, exact)


def test_layout_starts_as_one_blob_per_box(denoiser):
    """Each box starts with a Magic3D blob at its centre scaled to the box (no density haze filling the box)."""
    from sdtoolkit.text_to_3d.trainer import setup

    layout = {
        "objects": [
            {"prompt": "a red cube", "box": [-0.3, -0.8, -0.3, 0.3, -0.2, 0.3]},
            {"prompt": "a blue sphere", "box": [-0.2, 0.3, -0.2, 0.2, 0.7, 0.2]},
        ]
    }
    run = setup(TextTo3DConfig(method="semantic-sds", layout=layout, prior="tiny", nerf=tiny_nerf()), denoiser)
    field = run.nerf.field
    b = field.config.blob_density
    points = torch.tensor([[0.0, -0.5, 0.0], [0.0, 0.5, 0.0], [0.0, 0.5 + 0.1, 0.0], [0.28, -0.78, 0.28]])
    bias = field.density_bias(points)
    torch.testing.assert_close(bias[:3], torch.tensor([b, b, b * (1 - 0.1 / (0.5 * 0.4))]))
    assert bias[3] < 0  # a box corner starts empty


@pytest.fixture(scope="module")
def tiny_family_priors(tmp_path_factory):
    from sdtoolkit import testing

    folders = {}
    for family in ("sdxl", "sd3", "sana", "flux"):
        folders[family] = tmp_path_factory.mktemp(f"prior-{family}")
        getattr(testing, f"tiny_{family}_pipeline")().save_pretrained(folders[family])
    return folders


@pytest.mark.parametrize("method", ["sds", "vsd"])
@pytest.mark.parametrize("family", ["sdxl", "sd3", "sana", "flux"])
def test_text_to_3d_runs_on_every_family_prior(family, method, tiny_family_priors, tmp_path):
    """SDS and VSD with an SDXL, SD3, SANA or FLUX prior, end to end through the CLI at tiny size (issue 18, item
    3). Transformer priors have no class embedding for VSD's camera MLP: their fake score is the camera-free LoRA."""
    import trimesh

    from sdtoolkit.cli import main
    from sdtoolkit.core.denoiser import Denoiser
    from sdtoolkit.text_to_3d.guidance.vsd import VSDConfig, VSDGuidance

    out = tmp_path / "run"
    args = ["text-to-3d", "a red cube", "--prior", str(tiny_family_priors[family]), "--method", method,
            "--steps", "2", "--output", str(out), "--preset", "tiny", "--mesh-resolution", "16",
            "--video-frames", "2", "--quiet"]  # fmt: skip
    if family == "flux":  # FLUX declares no sample size (its pipeline's default is 1024 px)
        args += ["--resolution", "32"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["mesh_faces"] > 0
    assert len(trimesh.load(out / "mesh.glb", force="mesh").faces) > 0
    if method == "vsd":
        from diffusers import DiffusionPipeline

        from sdtoolkit.models.loading import absent_components

        folder = tiny_family_priors[family]
        pipe = DiffusionPipeline.from_pretrained(folder, **absent_components(folder))
        guidance = VSDGuidance(VSDConfig(), Denoiser.from_pipeline(pipe))
        assert (guidance.scores.extra_embedding is not None) == (family == "sdxl")


def test_opacity_colours_benchmark_scores_a_finished_run(tiny_prior, tmp_path, capsys):
    """`python -m benchmarks.opacity_colours RUN` re-extracts a finished run without training and prints one JSON row
    with the solid level's colour and eval-3d's scores of the opacity mesh under both colour rules."""
    from benchmarks import opacity_colours
    from sdtoolkit.cli import main

    out = tmp_path / "run"
    args = ["text-to-3d", "a red cube", "--prior", str(tiny_prior), "--steps", "3", "--output", str(out),
            "--preset", "tiny", "--mesh-resolution", "24", "--video-frames", "2", "--quiet"]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    assert opacity_colours.main([str(out)]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["prompt"] == "a red cube" and 0 <= row["solid_colour_accuracy"] <= 1
    for rule in ("old", "new"):
        assert set(row[rule]) == {"render_view_accuracy", "colour_accuracy", "volume_iou", "chamfer"}
    assert row["old"]["volume_iou"] == row["new"]["volume_iou"]  # the same mesh; only its colours differ
    assert opacity_colours.main([]) == 2


def test_section_flags_with_underscores_also_take_hyphens():
    """`--mesh_refine.*` and `--novel_cameras.*` are also spelled with hyphens, like every other flag."""
    from sdtoolkit.cli import CLIError, build_parser
    from sdtoolkit.cli.text_to_3d import resolve

    for flag in ("--mesh_refine.steps", "--mesh-refine.steps"):
        config, *_ = resolve(build_parser().parse_args(["text-to-3d", "a red cube", flag, "3"]))
        assert config.mesh_refine.steps == 3
    args = build_parser().parse_args(["image-to-3d", "x.png", "--novel-cameras.batch-size", "2"])
    assert args.__dict__[next(k for k in vars(args) if k.endswith("novel_cameras.batch_size"))] == 2
    # messages name the hyphenated spelling (they named `--novel_cameras.batch-size`)
    with pytest.raises(CLIError, match=r"--mesh-refine\.steps -1: must be >= 0"):
        resolve(build_parser().parse_args(["text-to-3d", "a red cube", "--mesh_refine.steps", "-1"]))
