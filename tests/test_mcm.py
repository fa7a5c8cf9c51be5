"""MCM (trainers/mcm.py): motion-loss terms by hand, the frame discriminator trains, exact resume, the stock
AnimateDiffPipeline export reloaded in a fresh process reproducing the toolkit's clip, bad inputs. Tiny seeded
video teachers built in-process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from sdtoolkit.trainers.mcm import (
    MCM,
    FrameDiscriminator,
    MCMConfig,
    SpatialHead,
    frame_difference,
    hinge_discriminator_loss,
    motion_consistency_loss,
    motion_representation,
)

FRAMES = 4


def tiny_video_pipeline(seed: int = 0):
    """A tiny AnimateDiffPipeline: tiny UNet2DConditionModel (32, 64) + tiny MotionAdapter + tiny CLIP + tiny VAE."""
    from diffusers import DDIMScheduler, MotionAdapter

    from sdtoolkit.data.clips import CLIP_VOCABULARY
    from sdtoolkit.models.shapes_video import video_pipeline
    from sdtoolkit.models.text import build_word_tokenizer
    from sdtoolkit.testing import TINY_WORDS, tiny_text_encoder, tiny_unet, tiny_vae

    tokenizer = build_word_tokenizer([TINY_WORDS + " purple cyan " + " ".join(CLIP_VOCABULARY)], model_max_length=16)
    unet = tiny_unet(seed=seed, block_out_channels=(32, 64), norm_num_groups=2)
    torch.manual_seed(seed)
    adapter = MotionAdapter(
        block_out_channels=(32, 64),
        motion_layers_per_block=1,
        motion_norm_num_groups=2,
        motion_num_attention_heads=2,
        motion_max_seq_length=8,
    )
    for name, p in adapter.named_parameters():  # non-zero output projections: the motion modules act
        if "proj_out" in name:
            torch.nn.init.normal_(p, std=0.02)

    class Image:
        pass

    image = Image()
    image.vae, image.text_encoder, image.tokenizer, image.unet = (
        tiny_vae(seed),
        tiny_text_encoder(len(tokenizer), seed=seed),
        tokenizer,
        unet,
    )
    image.scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return video_pipeline(image, adapter)


# ---------------------------------------------------------------------------------------------------- the maths


def test_motion_terms_against_hand_computation():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, FRAMES, 2, 2, generator=g), torch.randn(2, 3, FRAMES, 2, 2, generator=g)
    diff = frame_difference(a)
    assert torch.equal(diff[:, :, 1], a[:, :, 2] - a[:, :, 1])
    assert diff.shape[2] == FRAMES - 1
    c = 0.001
    hand_raw = (torch.sqrt((a - b) ** 2 + c**2) - c).mean()
    assert torch.allclose(motion_consistency_loss(a, b, "raw", "huber", c), hand_raw)
    da, db = a[:, :, 1:] - a[:, :, :-1], b[:, :, 1:] - b[:, :, :-1]
    hand_diff = ((da - db) ** 2).mean()
    assert torch.allclose(motion_consistency_loss(a, b, "diff", "l2", c), hand_diff)
    # a clip translated by a constant (a static offset) has the same motion: zero diff loss, non-zero raw loss
    assert motion_consistency_loss(a, a + 1.0, "diff", "l2", c) < 1e-12
    assert motion_consistency_loss(a, a + 1.0, "raw", "l2", c) > 0
    with pytest.raises(ValueError, match="motion_target"):
        motion_representation(a, "freq")


def test_spatial_head_against_hand_computation():
    """MCM's `learn` head (yhZhai/mcm models/spatial_head.py): starts as the identity, so the `learn` loss starts
    as the `raw` one; with weights set, x + conv_out(SiLU(GN(conv(SiLU(x))))) frame by frame."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 4, FRAMES, 3, 3, generator=g), torch.randn(2, 4, FRAMES, 3, 3, generator=g)
    head = SpatialHead(4)
    assert torch.equal(head(a), a)
    c = 0.001
    learn = motion_consistency_loss(a, b, "learn", "huber", c, head, head)
    assert torch.allclose(learn, motion_consistency_loss(a, b, "raw", "huber", c))
    for parameter in head.parameters():
        parameter.data.normal_(0, 0.5, generator=g)
    hidden, norm = head.layers[0][0], head.layers[0][1]
    frames = a.permute(0, 2, 1, 3, 4).reshape(-1, 4, 3, 3)
    y = F.conv2d(F.silu(frames), hidden.weight, hidden.bias)
    y = F.silu(F.group_norm(y, 32, norm.weight, norm.bias, 1e-5))
    y = F.conv2d(y, head.conv_out.weight, head.conv_out.bias)
    hand = a + y.reshape(2, FRAMES, 4, 3, 3).permute(0, 2, 1, 3, 4)
    assert torch.allclose(head(a), hand, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 32"):
        SpatialHead(4, hidden=48)
    from sdtoolkit.distill.loop import TrainConfig

    with pytest.raises(ValueError, match="--head-channels 48"):
        MCM.check_config(MCMConfig(head_channels=48), TrainConfig(teacher="x"))


def test_discriminator_trains():
    torch.manual_seed(0)
    disc = FrameDiscriminator(4)
    real, fake = torch.randn(16, 4, 8, 8) + 1.0, torch.randn(16, 4, 8, 8) - 1.0
    optimizer = torch.optim.Adam(disc.parameters(), lr=1e-3)
    first = None
    for _ in range(30):
        loss = hinge_discriminator_loss(disc(real), disc(fake))
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first - 0.5
    assert disc(real).mean() > disc(fake).mean()


# ---------------------------------------------------------------------------------------------------- training


def _prepare_data(teacher, pipeline, train, method):
    from sdtoolkit.data import ShapesDataset
    from sdtoolkit.distill.data import CachedImageDataset, build_latent_cache, build_text_cache

    shapes = ShapesDataset(4, seed=1, resolution=16)
    items = [(shapes[i]["pixel_values"], shapes[i]["caption"]) for i in range(4)]
    cache = Path(train.output) / "cache"
    latents = build_latent_cache(teacher, iter(items), 4, cache, key="tiny")
    captions = latents.pop("captions")
    text = build_text_cache(teacher, captions, cache, "tiny")
    return CachedImageDataset(text, latents, captions), text, list(text.prompts)


def _train(output: Path, max_steps: int, resume=None, pipeline=None, sample_every=0, **method):
    from sdtoolkit.distill.loop import TrainConfig, Trainer

    train = TrainConfig(
        teacher="tiny-video",
        output=str(output),
        max_steps=max_steps,
        batch_size=2,
        checkpoint_every=2,
        sample_every=sample_every,
        validate_every=-1,
        log_with="none",
        export=True,
        resolution=16,
        overwrite=resume is None,
        max_grad_norm=1.0,
    )
    config = MCMConfig(num_frames=FRAMES, num_clips=4, lr=1e-3, num_ddim_timesteps=10, sample_steps=2, **method)
    resolved = {"method": "mcm", "train": {"teacher": "tiny-video"}, "mcm": {}}
    pipeline = pipeline or tiny_video_pipeline()
    trainer = Trainer(MCM, config, train, resolved, _prepare_data, resume_from=resume, pipeline=pipeline)
    trainer.run()
    return trainer


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Three steps straight, and two + resume + one: the states must match exactly."""
    root = tmp_path_factory.mktemp("mcm")
    straight = _train(root / "straight", 3, sample_every=3)
    _train(root / "split", 2)
    resumed = _train(root / "split", 3, resume=root / "split" / "checkpoints" / "step_000002")
    return root, straight, resumed


def test_exact_resume(run):
    root, straight, resumed = run
    a = straight.method.target_unet.state_dict()
    b = resumed.method.target_unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = [json.loads(line) for line in (root / "straight" / "losses.jsonl").read_text().splitlines()]
    again = [json.loads(line) for line in (root / "split" / "losses.jsonl").read_text().splitlines()]
    assert losses[-1]["student/loss"] == pytest.approx(again[-1]["student/loss"], rel=1e-6)
    assert "discriminator/loss" in losses[-1] and "student/motion_consistency" in losses[-1]
    # the motion modules trained, the image layers did not
    teacher = straight.method.teacher.base_model.state_dict()
    moved = [k for k in a if not torch.equal(a[k].float(), teacher[k].float())]
    assert moved and all("motion_modules" in k for k in moved)
    # the clips of the sample step beside its grid; --sample-every 0 writes no samples at all
    assert (root / "straight" / "samples" / "step_000003.gif").is_file()
    assert (root / "straight" / "samples" / "step_000003.png").is_file()
    assert not (root / "split" / "samples").exists()


def test_critic_judges_the_student_steps_frames(run, monkeypatch):
    """As MCM's: the critic's update follows the student's and takes the frames of that step's f_theta (no UNet
    pass of its own); mixed trajectory generates only the clips chosen for it."""
    _, straight, _ = run
    method = straight.method
    sizes = []
    one_step = method._one_step
    monkeypatch.setattr(method, "_one_step", lambda noise, cond: sizes.append(noise.shape[0]) or one_step(noise, cond))
    assert [spec.name for spec in method.optimizers()] == ["student", "discriminator"]
    mean = torch.randn(2, 4, 2, 2)
    batch = {"prompt_index": torch.arange(2), "latent_mean": mean, "latent_std": torch.zeros_like(mean)}
    torch.manual_seed(3)
    out = method.loss("student", batch, 0)
    fake = method._last_fake
    assert fake is not None and fake.shape[0] == 2 * method.config.gan_frames and not fake.requires_grad
    assert sizes == ([] if out["own_trajectory"] == 0 else [int(out["own_trajectory"] * 2)])
    seen = []
    discriminator = method.models["discriminator"]
    original = discriminator.forward
    monkeypatch.setattr(discriminator, "forward", lambda x: seen.append(x) or original(x))
    method.loss("discriminator", batch, 0)
    assert any(x is fake for x in seen) and method._last_fake is None
    assert sizes == ([] if out["own_trajectory"] == 0 else [int(out["own_trajectory"] * 2)])  # no generation


def test_stock_reload_reproduces_toolkit_clip(run):
    root, straight, _ = run
    export = root / "straight" / "export"
    spec = json.loads((export / "export.json").read_text())
    assert spec["pipeline_class"] == "AnimateDiffPipeline" and spec["scheduler_class"] == "LCMScheduler"
    method = straight.method
    cond, _ = method.teacher.encode_prompt(["a red cube, front view, turning clockwise"])
    toolkit = method.sample_clip(cond, torch.Generator().manual_seed(7))
    torch.save(toolkit, root / "toolkit.pt")
    script = f"""
import torch
from diffusers import AnimateDiffPipeline
pipe = AnimateDiffPipeline.from_pretrained({str(export)!r})
assert type(pipe.scheduler).__name__ == "LCMScheduler", type(pipe.scheduler)
assert pipe.scheduler.config.timestep_scaling == 4.0
g = torch.Generator().manual_seed(7)
out = pipe("a red cube, front view, turning clockwise", num_inference_steps=2, guidance_scale=1.0,
           num_frames={FRAMES}, height=16, width=16, generator=g, output_type="latent").frames
torch.save(out, {str(root / "stock.pt")!r})
"""
    subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    stock = torch.load(root / "stock.pt")
    assert stock.shape == toolkit.shape
    assert torch.allclose(stock, toolkit, atol=1e-4), (stock - toolkit).abs().max()


# ---------------------------------------------------------------------------------------------------- bad inputs


def test_image_teacher_refused():
    from sdtoolkit.distill.loop import TrainConfig
    from sdtoolkit.testing import tiny_sd_pipeline

    with pytest.raises(ValueError, match="video teacher") as error:
        MCM.check_teacher(MCMConfig(), TrainConfig(teacher="x"), tiny_sd_pipeline())
    assert "\n" not in str(error.value)


def test_too_many_frames_refused():
    from sdtoolkit.distill.loop import TrainConfig

    with pytest.raises(ValueError, match="at most 8 frames"):
        MCM.check_teacher(MCMConfig(num_frames=9), TrainConfig(teacher="x"), tiny_video_pipeline())
    with pytest.raises(ValueError, match="motion-target"):
        MCM.check_config(MCMConfig(motion_target="freq"), TrainConfig())


def test_distill_mcm_cli_end_to_end(tmp_path, capsys):
    """`sdtoolkit train-video-teacher --tiny`, then `sdtoolkit distill mcm` on it (no --data: a video teacher of the
    built-in shapes teacher takes its still images from the built-in renders), then `sdtoolkit generate` on the
    exported AnimateDiffPipeline (a GIF), all through the CLI at tiny size."""
    from sdtoolkit.cli import main
    from sdtoolkit.distill.config import shapes_video_teacher

    teacher, run = tmp_path / "teacher", tmp_path / "run"
    assert main(["train-video-teacher", "--tiny", "--output", str(teacher), "--num-clips", "2", "--steps", "1"]) == 0
    assert shapes_video_teacher(str(teacher)) and not shapes_video_teacher(str(tmp_path))
    args = ["distill", "mcm", "--teacher", str(teacher), "--max-steps", "2", "--batch-size", "2"]
    # bad values: one line, exit 2, nothing written (the first two were tracebacks after config.json and the cache
    # were written; the last two trained silently)
    for bad, message in [
        (["--num-ddim-timesteps", "5000"], "--num-ddim-timesteps 5000: must be in [1, num_train_timesteps = 1000]"),
        (["--lr", "-1"], "--lr -1.0: must be > 0"),
        (["--w-min", "10", "--w-max", "5"], "need 0 <= w_min <= w_max"),
        (["--gan-frames", "9"], "--gan-frames 9"),
    ]:
        assert main([*args, "--num-frames", "4", "--output", str(tmp_path / "bad"), *bad]) == 2, bad
        assert message in capsys.readouterr().err and not (tmp_path / "bad").exists(), bad
    # an image method given the video teacher: one line naming distill mcm (scm was a traceback after writing)
    assert (
        main(["distill", "scm", "--teacher", str(teacher), "--max-steps", "1", "--output", str(tmp_path / "bad")]) == 2
    )
    assert "is a video teacher (AnimateDiffPipeline)" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main([*args, "--num-frames", "4", "--num-clips", "4", "--output", str(run)]) == 0
    assert (run / "export" / "model_index.json").is_file() and (run / "student" / "export.json").is_file()
    # the model card's snippet runs as written (it read .images[0], which AnimateDiffPipeline's output lacks)
    card = (run / "export" / "README.md").read_text()
    assert "pipeline_tag: text-to-video" in card and "timesteps []" not in card
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0].replace("PATH/TO/THIS/FOLDER", str(run / "export"))
    namespace: dict = {}
    exec(snippet, namespace)
    assert len(namespace["frames"]) >= 2, snippet
    out = tmp_path / "clip.gif"
    prompt = "a red cube, front view, turning clockwise"
    assert (
        main(["generate", "--model", str(run / "export"), "--prompt", prompt, "--num-images", "1", "--out", str(out)])
        == 0
    )
    assert out.is_file()
