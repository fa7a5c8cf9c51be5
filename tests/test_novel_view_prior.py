"""The Zero123-style novel-view prior (issue 22, item 2; `sdtoolkit.models.novel_view_prior`): the concatenated
reference latent reaches the UNet exactly, training pairs carry their own relative camera, a tiny prior trains (its
loss falls), saves, reloads and scores itself, the CLI refuses bad values before writing, and image-to-3D uses it
as an SDS guidance conditioned on a reference view and the relative camera."""

from __future__ import annotations

import json

import pytest
import torch

from sdtoolkit.core.conditioning import Conditioning
from sdtoolkit.core.denoiser import Denoiser
from sdtoolkit.core.schedules import VPSchedule
from sdtoolkit.data.cameras import Cameras
from sdtoolkit.image_to_3d.novel_view import relative_camera
from sdtoolkit.models.novel_view_prior import (
    META_FILE,
    NovelViewPriorConfig,
    build_unet,
    load_novel_view_prior,
    novel_view_conditioning,
    sample_pairs,
    train_novel_view_prior,
    unconditional,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(views_per_object=3, block_out_channels=(8, 16), attention_head_dim=4, batch_size=8, steps=40,
            warmup_steps=2, lr=2e-3, eval_pairs=40, eval_steps=2, threads=1)  # fmt: skip


def _schedule() -> VPSchedule:
    return VPSchedule.from_config({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012})


def test_the_reference_latent_is_concatenated_and_t_is_the_class_input():
    torch.manual_seed(0)
    unet = build_unet(NovelViewPriorConfig(block_out_channels=(8, 16), attention_head_dim=4), sample_size=8)
    denoiser = Denoiser(unet, _schedule(), "epsilon")
    assert denoiser.family.name == "sd" and denoiser.family.latent_channels(unet) == 4
    x, reference, relative = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.randn(2, 4)
    t = torch.tensor([10, 700])
    ours = denoiser.predict(x, t, novel_view_conditioning(reference, relative)).eps
    direct = unet(torch.cat([x, reference], 1), t, encoder_hidden_states=None, class_labels=relative).sample
    torch.testing.assert_close(ours, direct)
    other = denoiser.predict(x, t, novel_view_conditioning(reference, relative + 1)).eps
    assert not torch.allclose(ours, other)  # T reaches the network
    uncond = unconditional(novel_view_conditioning(reference, relative))
    assert torch.equal(uncond.concat_latents, torch.zeros_like(reference))
    assert torch.equal(uncond.class_labels, torch.zeros_like(relative))
    joined = Conditioning.cat([uncond, novel_view_conditioning(reference, relative)])
    assert joined.batch_size == 4 and torch.equal(joined.concat_latents[2:], reference)


def test_training_pairs_are_two_views_of_one_object_with_their_relative_camera():
    g = torch.Generator().manual_seed(0)
    o, v = 3, 5
    latents = torch.arange(o * v, dtype=torch.float32).reshape(o, v, 1, 1, 1).expand(o, v, 4, 2, 2).clone()
    cameras = {
        "azimuth_deg": torch.rand(o, v, generator=g) * 360 - 180,
        "elevation_deg": torch.rand(o, v, generator=g) * 60,
        "distance": 2.4 + torch.rand(o, v, generator=g),
        "fov_deg": torch.full((o, v), 40.0),
    }
    target, reference, relative = sample_pairs(latents, cameras, 64, g)
    t_index, r_index = target[:, 0, 0, 0].long(), reference[:, 0, 0, 0].long()
    assert torch.equal(t_index // v, r_index // v) and (t_index != r_index).all()  # same object, other view

    def cams(flat):
        return Cameras(
            *(cameras[k].reshape(-1)[flat] for k in ("azimuth_deg", "elevation_deg", "distance", "fov_deg"))
        )

    torch.testing.assert_close(relative, relative_camera(cams(r_index), cams(t_index)))


@pytest.fixture(scope="module")
def tiny_prior(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nv") / "prior"
    train_novel_view_prior(NovelViewPriorConfig(**TINY), folder, progress=False)
    return folder


def test_a_tiny_prior_trains_saves_reloads_and_scores_itself(tiny_prior):
    meta = json.loads((tiny_prior / META_FILE).read_text())
    log = meta["training"]["log"]
    assert meta["training"]["steps"] == 40 and len(log) >= 4
    first, last = log[0]["loss"], log[-1]["loss"]
    assert last < first, (first, last)
    metrics = meta["metrics"]
    assert metrics["pairs"] == 40 and 0 < metrics["psnr_median"] < 60
    assert set(metrics["samples"]) == {"prompt_accuracy", "shape_accuracy", "colour_accuracy", "view_accuracy"}
    assert (tiny_prior / "README.md").read_text().count("Held-out pairs") == 1
    prior = load_novel_view_prior(tiny_prior)
    assert prior.prediction_type == "v_prediction" and prior.vae is not None  # zero terminal SNR (Lin et al.)
    assert abs(float(prior.schedule.alpha(torch.tensor([999.0])))) < 1e-6  # the noisiest input holds no target
    assert not any(p.requires_grad for p in prior.model.parameters())


def test_loading_a_folder_that_is_no_prior_names_the_training_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-novel-view-prior"):
        load_novel_view_prior(tmp_path)


def test_cli_refuses_bad_values_before_writing(tmp_path, capsys):
    from sdtoolkit.cli import main

    out = tmp_path / "prior"
    for argv, message in [
        (["--distance-range", "3", "2"], "--distance-range 3.0 2.0: the first value must not exceed the second"),
        (["--elevation-range", "-95", "10"], "elevations must lie in (-90, 90)"),
        (["--batch-size", "0"], "--batch-size 0"),
        (["--views-per-object", "1"], "--views-per-object 1"),
        # these were tracebacks (size mismatch, ZeroDivisionError, a ValueError) or trained with a nonsense value
        (["--resolution", "30"], "--resolution 30: must be a multiple of 16"),
        (["--block-out-channels", "7", "9", "11"], "multiples of --attention-head-dim 16"),
        (["--vae-source", "builtin:shape"], "unknown built-in model builtin:shape"),
        (["--fov-deg", "0"], "--fov-deg 0.0: must be in [1, 179]"),
        (["--seed", "-1"], "--seed -1: must be in [0, 4294967295]"),
    ]:
        capsys.readouterr()
        assert main(["train-novel-view-prior", "--output", str(out), *argv]) == 2, argv
        assert message in capsys.readouterr().err
        assert not out.exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert main(["train-novel-view-prior", "--output", str(tmp_path / "full")]) == 2
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_image_to_3d_applies_the_novel_view_prior_conditioned_on_a_reference(tiny_prior, tmp_path, capsys):
    """Its SDS term is logged and finite; the condition is a reference view's latent and T from that reference's
    camera; a missing prior is refused in one line before anything is written."""
    from sdtoolkit.cli import main
    from sdtoolkit.image_to_3d import ImageTo3DConfig
    from sdtoolkit.image_to_3d.inputs import cameras_json, save_rgba, shapes_references
    from sdtoolkit.image_to_3d.trainer import novel_view_condition, train
    from sdtoolkit.nerf import FieldConfig, NeRFConfig
    from sdtoolkit.text_to_3d.config import RegularizerConfig

    cameras = Cameras(torch.tensor([0.0]), torch.tensor([10.0]), torch.tensor([2.8]), torch.tensor([40.0]))
    paths = save_rgba(shapes_references("cube", "red", cameras, 32), tmp_path)
    (tmp_path / "cams.json").write_text(json.dumps(cameras_json(cameras, paths)))
    field = FieldConfig(num_levels=4, max_res=32, log2_hashmap_size=12, hidden_dim=16, geometry="sdf")
    nerf = NeRFConfig(field=field, num_samples=16, occupancy_resolution=16)  # the README's signed-distance field
    config = ImageTo3DConfig(
        images=tuple(str(p) for p in paths), cameras=str(tmp_path / "cams.json"), reference_resolution=32,
        start_resolution=16, resolution=32, steps=3, nerf=nerf, preview_every=0, checkpoint_every=0,
        novel_view_prior=str(tiny_prior), regularizers=RegularizerConfig(lambda_eikonal=10.0),
    )  # fmt: skip
    run = train(config, tmp_path / "asset", progress=False)
    assert all("loss_novel_view" in h and h["loss_novel_view"] == h["loss_novel_view"] for h in run.history)
    assert all(h["loss_guidance"] == 0.0 for h in run.history)  # no text prior
    assert all(h["loss_eikonal"] > 0 for h in run.history) and run.nerf.field.config.geometry == "sdf"
    novel = Cameras(torch.tensor([90.0, -150.0]), torch.tensor([30.0, 0.0]), torch.full((2,), 3.0),
                    torch.full((2,), 40.0))  # fmt: skip
    cond, uncond = novel_view_condition(run, novel, 64)
    torch.testing.assert_close(cond.class_labels, relative_camera(cameras, novel))
    rgb, _ = run.targets(64)
    torch.testing.assert_close(cond.concat_latents[1], run.novel_view.encode(rgb[:1] * 2 - 1, sample=False)[0])
    assert torch.equal(uncond.class_labels, torch.zeros(2, 4))

    out = tmp_path / "refused"
    argv = ["image-to-3d", str(paths[0]), "--output", str(out), "--reference-resolution", "32",
            "--novel-view-prior", str(tmp_path / "nothing")]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "train-novel-view-prior" in lines[0] and not out.exists()


def test_cli_end_to_end_at_tiny_size(tmp_path, capsys):
    from sdtoolkit.cli import main

    out = tmp_path / "prior"
    flags = [f"--{k.replace('_', '-')}" for k in TINY]
    values = [[str(x) for x in v] if isinstance(v, tuple) else [str(v)] for v in TINY.values()]
    argv = ["train-novel-view-prior", "--output", str(out), "--quiet", "--steps", "5", "--eval-pairs", "8"]
    for flag, value in zip(flags, values):
        if flag not in argv:
            argv += [flag, *value]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "saved the novel-view prior" in printed and '"pairs": 8' in printed
    meta = json.loads((out / META_FILE).read_text())
    assert meta["config"]["block_out_channels"] == [8, 16] and meta["training"]["steps"] == 5
    assert "--block-out-channels 8 16" in meta["command"]
    assert load_novel_view_prior(out).model.config.in_channels == 8


def test_the_shipped_prior_renders_held_out_novel_views():
    """builtin:shapes-novel-view (assets/, trained by its card's command): from a reference view and the relative
    camera, 25 DDIM steps with CFG 3 give the true target view of 12 held-out pairs far closer than the reference
    itself does, in the right colour (its card: 25.7 dB median on 400 pairs, against 15.4 dB for the reference)."""
    from sdtoolkit.models.loading import BUILTIN_TRAIN_COMMANDS
    from sdtoolkit.models.novel_view_prior import _cameras, render_object_views, sample_novel_views

    prior = load_novel_view_prior("builtin:shapes-novel-view")
    meta = json.loads((prior_folder() / META_FILE).read_text())
    assert meta["metrics"]["samples"]["colour_accuracy"] >= 0.95 and meta["metrics"]["psnr_median"] >= 25
    assert BUILTIN_TRAIN_COMMANDS["shapes-novel-view"].split("--output")[0] in meta["command"]
    config = NovelViewPriorConfig(**meta["config"])
    g = torch.Generator().manual_seed(123)
    latents, cameras, images = render_object_views(config, prior.vae, g, 2)
    objects, ref, tgt = torch.arange(0, 30, 5).repeat(2), torch.zeros(12, dtype=torch.long), torch.ones(12).long()
    relative = relative_camera(_cameras(cameras, objects, ref), _cameras(cameras, objects, tgt))
    z = sample_novel_views(prior, latents[objects, ref], relative, 25, 3.0, torch.Generator().manual_seed(0))
    samples = ((prior.decode(z) + 1) / 2).clamp(0, 1)

    def psnr(a, b):
        return -10 * torch.log10(((a - b) ** 2).mean(dim=(1, 2, 3)))

    truth = images[objects, tgt]
    ours, baseline = psnr(samples, truth).median(), psnr(images[objects, ref], truth).median()
    assert ours > baseline + 5 and ours > 20, (float(ours), float(baseline))


def prior_folder():
    from sdtoolkit.models.loading import builtin_model_path

    return builtin_model_path("shapes-novel-view")


def test_the_novel_view_prior_is_no_teacher_and_no_text_prior(tmp_path, capsys):
    from sdtoolkit.cli import main

    assert main(["distill", "lcm", "--teacher", "builtin:shapes-novel-view", "--output", str(tmp_path / "a")]) == 2
    assert "unknown built-in teacher" in capsys.readouterr().err and not (tmp_path / "a").exists()
    argv = ["text-to-3d", "a red cube", "--prior", "builtin:shapes-novel-view", "--output", str(tmp_path / "b")]
    assert main(argv) == 2
    assert "image-to-3d --novel-view-prior" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_image_to_3d_refuses_an_eikonal_term_without_a_signed_distance_field():
    from sdtoolkit.image_to_3d import ImageTo3DConfig
    from sdtoolkit.text_to_3d.config import RegularizerConfig

    with pytest.raises(ValueError, match="lambda_eikonal = 10.0 needs nerf.field.geometry 'sdf'"):
        ImageTo3DConfig(regularizers=RegularizerConfig(lambda_eikonal=10.0))


def test_the_novel_view_guidance_defaults_are_zero123s_cfg_and_the_text_priors_times():
    from sdtoolkit.image_to_3d import ImageTo3DConfig

    config = ImageTo3DConfig()
    assert not config.uses_novel_view_prior and config.lambda_novel_view == 1.0
    assert config.novel_view_guidance.guidance_scale == 3.0 and config.novel_view_guidance.weighting == "sds"
    assert config.novel_view_guidance.timesteps == config.guidance.timesteps  # both priors see the same t
    assert ImageTo3DConfig(novel_view_prior="builtin:shapes-novel-view").uses_novel_view_prior


def test_a_non_finite_loss_stops_training_before_anything_is_written(tmp_path, monkeypatch):
    import sdtoolkit.models.novel_view_prior as module

    monkeypatch.setattr(module.F, "mse_loss", lambda a, b: (a * float("nan")).mean())
    with pytest.raises(FloatingPointError, match="loss is nan at step 1; nothing saved"):
        train_novel_view_prior(NovelViewPriorConfig(**TINY), tmp_path / "prior", progress=False)
    assert not (tmp_path / "prior").exists()


def test_an_interrupted_training_resumes_exactly(tmp_path, capsys):
    from safetensors.torch import load_file

    from sdtoolkit.cli import main

    config = dict(TINY, steps=6, eval_pairs=0)
    train_novel_view_prior(NovelViewPriorConfig(**config), tmp_path / "straight", progress=False)
    stopped = train_novel_view_prior(NovelViewPriorConfig(**config, stop_after=4), tmp_path / "cut", progress=False)
    assert {p.name for p in stopped.iterdir()} == {"checkpoint"}  # only the training state: nothing half-written
    # another setting is refused in one line before anything is written; the checkpoint stays
    argv = ["train-novel-view-prior", "--output", str(stopped), "--quiet"]
    for key, value in dict(config, lr=1e-3).items():
        values = [str(x) for x in value] if isinstance(value, tuple) else [str(value)]
        argv += [f"--{key.replace('_', '-')}", *values]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "['lr']" in err, err
    assert (stopped / "checkpoint").is_dir()
    train_novel_view_prior(NovelViewPriorConfig(**config), stopped, progress=False)
    assert not (stopped / "checkpoint").exists()
    a = load_file(tmp_path / "straight" / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(stopped / "unet" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = lambda p: json.loads((p / META_FILE).read_text())["training"]  # noqa: E731
    assert steps(stopped)["steps"] == 6 and steps(stopped)["log"] == steps(tmp_path / "straight")["log"]


def test_the_cli_reports_a_non_finite_loss_in_one_line(tmp_path, capsys, monkeypatch):
    import sdtoolkit.models.novel_view_prior as module
    from sdtoolkit.cli import main

    monkeypatch.setattr(module.F, "mse_loss", lambda a, b: (a * float("nan")).mean())
    argv = ["train-novel-view-prior", "--output", str(tmp_path / "prior"), "--quiet", "--views-per-object", "2"]
    argv += ["--block-out-channels", "8", "16", "--attention-head-dim", "4", "--batch-size", "4", "--threads", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "loss is nan at step 1; nothing saved" in err and "Traceback" not in err
    assert not (tmp_path / "prior").exists()
