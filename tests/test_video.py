"""Video (issue 20): the procedural clips' exact ground truth, the video evaluator's ordering (real clips on top,
time-shuffled and frozen ones worse on motion, FVD_shapes real-vs-real below real-vs-shuffled), the AnimateDiff
family adapter against one step of stock `AnimateDiffPipeline`, and the CLI at tiny size (`train-video-teacher`,
`generate` on a video folder writing GIF/MP4 and per-clip GIFs, `eval --clips`)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sdtoolkit.data.clips import (
    MOTIONS,
    ClipConfig,
    frame_views,
    parse_clip_caption,
    render_clips,
    sample_clip_parameters,
)
from sdtoolkit.data.shapes import COLOUR_NAMES, SHAPES, VIEWS

# ---------------------------------------------------------------------------------------------------- ground truth


def _wrapped_steps(azimuth: torch.Tensor) -> torch.Tensor:
    """Per-frame azimuth changes, wrapped to (-180, 180]."""
    step = azimuth[:, 1:] - azimuth[:, :-1]
    return (step + 180) % 360 - 180


def test_clip_ground_truth():
    config = ClipConfig(num_frames=8, resolution=32)
    params = sample_clip_parameters(90, seed=3, config=config)
    motion, yaw, lift = params["motion"], params["yaw_deg"].double(), params["lift"].double()
    assert set(motion.tolist()) == {0, 1, 2}
    per_frame = config.turn_deg / (config.num_frames - 1)
    clockwise, counter, bobbing = motion == 0, motion == 1, motion == 2
    # clockwise (seen from above): yaw falls by turn_deg / (F - 1) per frame, the camera azimuth rises by as much
    torch.testing.assert_close(
        yaw[clockwise].diff(dim=1), torch.full_like(yaw[clockwise][:, 1:], -per_frame), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        yaw[counter].diff(dim=1), torch.full_like(yaw[counter][:, 1:], per_frame), atol=1e-4, rtol=0
    )
    steps = _wrapped_steps(params["azimuth_deg"].double())
    torch.testing.assert_close(steps[clockwise], torch.full_like(steps[clockwise], per_frame), atol=1e-3, rtol=0)
    torch.testing.assert_close(steps[counter], torch.full_like(steps[counter], -per_frame), atol=1e-3, rtol=0)
    assert (yaw[bobbing] == 0).all() and (lift[~bobbing] == 0).all()
    # bobbing: lift(f) = A sin(2 pi f / F), one period per clip
    f = torch.arange(config.num_frames, dtype=torch.float64)
    expected = config.bob_amplitude * torch.sin(2 * math.pi * f / config.num_frames)
    torch.testing.assert_close(lift[bobbing], expected.expand_as(lift[bobbing]), atol=1e-6, rtol=0)
    # every frame keeps its caption's view word; captions name shape, colour, view and motion
    clips = render_clips(12, seed=3, config=config)
    for i, (caption, views) in enumerate(zip(clips["caption"], frame_views(params))):
        shape, colour, view, moving = parse_clip_caption(caption)
        assert shape == SHAPES[clips["shape"][i]] and colour == COLOUR_NAMES[clips["colour"][i]]
        assert view == VIEWS[clips["view"][i]] and moving == MOTIONS[clips["motion"][i]]
        assert set(views) == {VIEWS[params["view"][i]]}, (i, views)
    # rendered frames: a bobbing clip's object is highest a quarter period in (lift = A), lowest at 3/4
    frames = clips["frames"]
    bob = int(torch.nonzero(clips["motion"] == 2)[0])
    rows = torch.arange(32, dtype=torch.float32)[:, None]
    mask = (frames[bob].mean(1) < 0.96).float()
    centroid = (mask * rows).sum((-2, -1)) / mask.sum((-2, -1))  # image rows grow downwards
    assert centroid[2] < centroid[0] < centroid[6]
    # rendering in chunks of frames (how a GPU renders thousands of clips) changes no pixel
    from sdtoolkit.data.clips import render_clip_parameters

    part = {k: v[:3] for k, v in params.items()}
    assert torch.equal(render_clip_parameters(part, 16, chunk=5), render_clip_parameters(part, 16))


def test_largest_turn_keeps_every_view_word_and_the_teacher_trains_on_its_clips():
    """A turn of MAX_TURN_DEG (88) keeps every frame's view word; a larger one is refused; the video teacher's
    --turn-deg / --bob-amplitude reach the clips it trains on."""
    from sdtoolkit.data.clips import MAX_TURN_DEG
    from sdtoolkit.models.shapes_video import VideoTeacherConfig, clip_config

    assert MAX_TURN_DEG == 88
    config = clip_config(VideoTeacherConfig(num_frames=8, resolution=32, turn_deg=MAX_TURN_DEG, bob_amplitude=0.3))
    assert (config.num_frames, config.resolution, config.turn_deg, config.bob_amplitude) == (8, 32, 88, 0.3)
    params = sample_clip_parameters(300, seed=5, config=config)
    turning = params["motion"] < 2
    sweep = params["yaw_deg"][:, -1] - params["yaw_deg"][:, 0]
    torch.testing.assert_close(sweep[turning].abs(), torch.full_like(sweep[turning], 88.0))
    assert params["lift"].abs().max() == pytest.approx(0.3, abs=0.01)
    for i, views in enumerate(frame_views(params)):
        assert set(views) == {VIEWS[params["view"][i]]}, (i, views)
    with pytest.raises(ValueError, match="turn_deg 89"):
        sample_clip_parameters(2, seed=5, config=ClipConfig(turn_deg=89.0))


def test_a_fresh_video_teacher_is_the_image_unet_frame_by_frame():
    """AnimateDiff zero-initialises the motion modules' output projections, so the untrained video UNet is the image
    UNet applied to each frame (diffusers' MotionAdapter alone initialises them at random: every teacher trained
    before this test started from frames the random temporal mixing had spoiled)."""
    from sdtoolkit.models.loading import load_teacher_pipeline
    from sdtoolkit.models.shapes_video import VideoTeacherConfig, motion_adapter_for, video_pipeline

    image = load_teacher_pipeline("builtin:shapes")
    unet = video_pipeline(image, motion_adapter_for(image.unet, VideoTeacherConfig(motion_max_seq_length=8))).unet
    generator = torch.Generator().manual_seed(0)
    frames, size = 4, image.unet.config.sample_size
    x = torch.randn(2, image.unet.config.in_channels, frames, size, size, generator=generator)
    states = torch.randn(2, 8, image.unet.config.cross_attention_dim, generator=generator)
    t = torch.tensor([500, 80])
    with torch.no_grad():
        video = unet(x, t, encoder_hidden_states=states.repeat_interleave(frames, dim=0)).sample
        per_frame = image.unet(
            x.permute(0, 2, 1, 3, 4).reshape(2 * frames, *x.shape[1:2], size, size),
            t.repeat_interleave(frames),
            encoder_hidden_states=states.repeat_interleave(frames, dim=0),
        ).sample
    per_frame = per_frame.reshape(2, frames, *per_frame.shape[1:]).permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(video, per_frame, atol=1e-5, rtol=1e-5)


def test_frame_difference_loss_against_hand_computation():
    """The video teacher's motion loss is min(SNR, 1) ||D x0_hat - D x0||^2 computed from x0 (not from epsilon), is
    zero for an error that is the same in every frame, and weights a high-noise clip's x0 error by its SNR."""
    from sdtoolkit.models.shapes_video import frame_difference_loss

    g = torch.Generator().manual_seed(0)
    x0, eps, eps_hat = (torch.randn(3, 4, 5, 2, 2, generator=g) for _ in range(3))
    alpha_bar = torch.tensor([0.9, 0.3, 0.02]).view(-1, 1, 1, 1, 1)
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    snr_t = alpha_bar / (1 - alpha_bar)
    x0_hat = (x_t - (1 - alpha_bar).sqrt() * eps_hat) / alpha_bar.sqrt()  # DDPM's x0 from epsilon, by hand
    hand = 0.0
    for i, a in enumerate([0.9, 0.3, 0.02]):
        snr = a / (1 - a)
        d_hat = x0_hat[i, :, 1:] - x0_hat[i, :, :-1]
        d = x0[i, :, 1:] - x0[i, :, :-1]
        hand += min(snr, 1.0) * ((d_hat - d) ** 2).sum() / d.numel()
    torch.testing.assert_close(frame_difference_loss(eps_hat, eps, snr_t), hand / 3, rtol=1e-4, atol=1e-6)
    static_error = eps + torch.randn(3, 4, 1, 2, 2, generator=g)  # the same error in every frame
    assert frame_difference_loss(static_error, eps, snr_t).abs() < 1e-10


def test_direction_swap_gain_and_spread_rows():
    """swap_direction reverses a turning caption and keeps a bobbing one; the direction gain is 0 when the swap changes
    nothing and 2 when it exactly reverses an exact turn; "spread" motion-word rows have the image rows' spread."""
    from sdtoolkit.data.clips import swap_direction
    from sdtoolkit.models.shapes_video import direction_gain, spread_rows

    assert (
        swap_direction("a red cube, front view, turning clockwise")
        == "a red cube, front view, turning counter-clockwise"
    )
    assert (
        swap_direction("A red cube, side view, turning counter-clockwise.")
        == "a red cube, side view, turning clockwise"
    )
    assert swap_direction("a red cube, bobbing") == "a red cube, bobbing"
    target = torch.randn(2, 4, 3, 5, 5)
    assert direction_gain(target, target, target) == 0.0
    assert direction_gain(target, -target, target) == pytest.approx(2.0)
    assert direction_gain(target, torch.zeros_like(target), target) == pytest.approx(1.0)
    weight = torch.randn(5000, 8) * torch.linspace(0.5, 2, 8) + 3
    before = weight.clone()
    spread_rows(weight, [0, 1, 2], list(range(3, 5000)), seed=0)
    assert torch.equal(weight[3:], before[3:]) and len({tuple(r.tolist()) for r in weight[:3]}) == 3
    spread_rows(weight, list(range(2500)), list(range(2500, 5000)), seed=1)  # many rows: their statistics match
    torch.testing.assert_close(weight[:2500].std(0), before[2500:].std(0), rtol=0.1, atol=0)
    torch.testing.assert_close(weight[:2500].mean(0), before[2500:].mean(0), rtol=0, atol=0.15)


def test_motion_heads_reach_the_motion_words_and_leave_no_hooks():
    """The auxiliary motion classifier has a head per spatial transformer, its loss is the mean of their
    cross-entropies over the kept clips, its gradient reaches the caption's token embeddings, and removing it leaves
    the UNet's output unchanged."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    from sdtoolkit.models.shapes_video import MotionHeads

    torch.manual_seed(0)
    image = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8,
        norm_num_groups=4,
        attention_head_dim=4,
    )
    adapter = MotionAdapter(block_out_channels=(8, 16), motion_layers_per_block=1, motion_norm_num_groups=4)
    unet = UNetMotionModel.from_unet2d(image, adapter)
    heads = MotionHeads(unet, 3)
    n_attn = sum(len(getattr(b, "attentions", [])) for b in (*unet.down_blocks, unet.mid_block, *unet.up_blocks))
    assert len(heads.heads) == n_attn > 0
    frames = 3
    tokens = torch.randn(2, 5, 8, requires_grad=True)
    x = torch.randn(2, 4, frames, 8, 8)
    out = unet(x, torch.tensor([10, 10]), encoder_hidden_states=tokens.repeat_interleave(frames, 0)).sample
    motion, keep = torch.tensor([0, 2]), torch.tensor([True, False])
    captured = list(heads.outputs)
    loss = heads.loss(motion, frames, keep)
    expected = (
        sum(
            torch.nn.functional.cross_entropy(h(o.mean(dim=(2, 3)).reshape(2, frames, -1).mean(1))[:1], motion[:1])
            for h, o in zip(heads.heads, captured)
        )
        / n_attn
    )
    torch.testing.assert_close(loss, expected)
    assert heads.outputs == []
    loss.backward()
    assert tokens.grad[0].abs().sum() > 0 and tokens.grad[1].abs().sum() == 0  # the dropped clip adds nothing
    with torch.no_grad():  # sampling and the probe are not collected
        unet(x, torch.tensor([10, 10]), encoder_hidden_states=tokens.repeat_interleave(frames, 0))
    assert heads.outputs == []
    heads.remove()
    again = unet(x, torch.tensor([10, 10]), encoder_hidden_states=tokens.repeat_interleave(frames, 0)).sample
    torch.testing.assert_close(again, out)
    assert heads.outputs == []


def test_timestep_power_draw():
    """--timestep-power b: t = floor(T (1 - (1 - u)^b)) stays in [0, T - 1], b = 1 is uniform, and the share of
    draws at t >= T/2 is 2^(-1/b)."""
    from sdtoolkit.models.shapes_video import sample_timesteps

    torch.manual_seed(0)
    for power in (1.0, 2.0, 3.0):
        t = sample_timesteps(200_000, 1000, power)
        assert t.dtype == torch.long and t.min() >= 0 and t.max() <= 999
        assert (t >= 500).float().mean().item() == pytest.approx(2 ** (-1 / power), abs=0.005)
    counts = torch.bincount(sample_timesteps(200_000, 10, 1.0), minlength=10).float() / 200_000
    torch.testing.assert_close(counts, torch.full((10,), 0.1), atol=0.005, rtol=0)


def test_video_teacher_motion_loss_and_cross_attention_flags(tmp_path, capsys):
    """--motion-loss-weight and --train-cross-attention reach the training: the cross-attention key/value projections
    move, the image UNet's other weights do not, and the log carries both loss terms and the motion probe;
    --init-from starts from another video teacher's weights, and refuses a folder that is not one or is --output."""
    from sdtoolkit.cli import main
    from sdtoolkit.models.loading import load_teacher_pipeline

    teacher = tmp_path / "teacher"
    argv = ["train-video-teacher", "--tiny", "--output", str(teacher), "--steps", "2", "--lr", "1e-2"]
    assert main(argv + ["--motion-loss-weight", "10", "--train-cross-attention", "--probe-clips", "2"]) == 0
    record = json.loads((teacher / "training_config.json").read_text())
    assert record["config"]["motion_loss_weight"] == 10 and record["config"]["train_cross_attention"] is True
    assert record["log"][0]["step"] == 0 and math.isfinite(record["log"][0]["motion_probe"])
    last = record["log"][-1]
    assert last["loss"] == pytest.approx(last["eps_loss"] + 10 * last["motion_loss"], rel=1e-5)
    from safetensors.torch import load_file

    trained = load_file(teacher / "unet" / "diffusion_pytorch_model.safetensors")
    image = load_teacher_pipeline("builtin:shapes").unet.state_dict()
    moved = {k for k in image if k in trained and not torch.equal(image[k], trained[k])}
    assert moved and all(".attn2.to_k." in k or ".attn2.to_v." in k for k in moved), sorted(moved)[:5]
    # the image vocabulary's embedding rows stay exactly the image teacher's (only the motion words' rows train)
    from transformers import CLIPTextModel, CLIPTokenizer

    image_pipe = load_teacher_pipeline("builtin:shapes")
    before = image_pipe.text_encoder.get_input_embeddings().weight
    after = CLIPTextModel.from_pretrained(teacher / "text_encoder").get_input_embeddings().weight
    new_vocab = CLIPTokenizer.from_pretrained(teacher / "tokenizer").get_vocab()
    old_vocab = image_pipe.tokenizer.get_vocab()
    assert len(new_vocab) > len(old_vocab)
    for token, i in old_vocab.items():
        assert torch.equal(after[new_vocab[token]], before[i]), token
    # --init-from: a warm start from that teacher (with --lr 0 its weights come through unchanged)
    warm = tmp_path / "warm"
    assert (
        main(["train-video-teacher", "--tiny", "--output", str(warm), "--init-from", str(teacher), "--lr", "0"]) == 0
    )
    again = load_file(warm / "unet" / "diffusion_pytorch_model.safetensors")
    assert trained.keys() == again.keys() and all(torch.equal(trained[k], again[k]) for k in trained)
    assert json.loads((warm / "training_config.json").read_text())["config"]["init_from"] == str(teacher)
    for bad, line in ((tmp_path / "nothing", "not a video teacher folder"), (teacher, "is the --output folder")):
        out = teacher if bad == teacher else tmp_path / "x"
        assert (
            main(["train-video-teacher", "--tiny", "--output", str(out), "--overwrite", "--init-from", str(bad)]) == 2
        )
        assert line in capsys.readouterr().err
        assert not (tmp_path / "x").exists()
    # --max-minutes: a time budget (for lent GPUs) stops after the first step past it and still writes the teacher
    budget = tmp_path / "budget"
    assert main(argv[:3] + [str(budget), "--steps", "5", "--max-minutes", "0"]) == 0
    record = json.loads((budget / "training_config.json").read_text())
    assert record["steps_done"] == 1 and record["log"][-1]["step"] == 1
    assert (budget / "motion_adapter").is_dir() or (budget / "unet").is_dir()
    for flag, value in (
        ("--motion-loss-weight", "-1"),
        ("--timestep-power", "0"),
        ("--probe-timestep", "1000"),
        ("--max-minutes", "-1"),
    ):
        assert main(argv[:3] + [str(tmp_path / "x"), flag, value]) == 2
        assert not (tmp_path / "x").exists()


def test_video_teacher_motion_aux_and_spread_words(tmp_path, capsys):
    """--motion-aux-weight, --motion-word-init spread and --embedding-lr reach the training: the log carries the
    auxiliary loss (inside the total) and the direction gain, the motion words start distinct, the exported UNet has
    the same weights' names as a plain run (the heads are training-only); bad values are one line each, nothing
    written."""
    from transformers import CLIPTextModel, CLIPTokenizer

    from sdtoolkit.cli import main

    teacher = tmp_path / "teacher"
    argv = ["train-video-teacher", "--tiny", "--output", str(teacher), "--probe-clips", "2", "--lr", "1e-2"]
    extra = [
        "--motion-aux-weight",
        "0.5",
        "--motion-word-init",
        "spread",
        "--embedding-lr",
        "0.1",
        "--caption-dropout",
        "0",
    ]
    assert main(argv + extra) == 0
    record = json.loads((teacher / "training_config.json").read_text())
    first, last = record["log"][0], record["log"][-1]
    assert math.isfinite(first["direction_gain"]) and math.isfinite(last["direction_gain"])  # both probe clips turn
    assert last["aux_loss"] > 0 and last["loss"] == pytest.approx(last["eps_loss"] + 0.5 * last["aux_loss"], rel=1e-5)
    vocab = CLIPTokenizer.from_pretrained(teacher / "tokenizer").get_vocab()
    rows = CLIPTextModel.from_pretrained(teacher / "text_encoder").get_input_embeddings().weight
    clockwise, counter = rows[vocab["clockwise</w>"]], rows[vocab["counter</w>"]]
    assert (clockwise - counter).norm() > 0.1 * clockwise.norm()
    from safetensors.torch import load_file

    plain = tmp_path / "plain"
    assert main(["train-video-teacher", "--tiny", "--output", str(plain)]) == 0
    keys = load_file(teacher / "unet" / "diffusion_pytorch_model.safetensors").keys()
    assert keys == load_file(plain / "unet" / "diffusion_pytorch_model.safetensors").keys()
    for flag, value, line in (
        ("--motion-word-init", "random", "valid: mean, spread"),
        ("--embedding-lr", "-1", "--embedding-lr must be"),
        ("--motion-aux-weight", "-0.5", "--motion-aux-weight must be"),
    ):
        assert main(argv[:3] + [str(tmp_path / "x"), flag, value]) == 2
        assert line in capsys.readouterr().err and not (tmp_path / "x").exists()
    from sdtoolkit.models.shapes_video import VideoTeacherConfig, train_video_teacher

    for bad in (
        VideoTeacherConfig(motion_word_init="random"),
        VideoTeacherConfig(motion_word_init="spread", init_from="."),
    ):
        with pytest.raises(ValueError, match="motion_word_init"):  # the library refuses too, before loading anything
            train_video_teacher(bad, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    spread_warm = ["--init-from", str(teacher), "--motion-word-init", "spread"]
    assert main(argv[:3] + [str(tmp_path / "x")] + spread_warm) == 2
    assert "come from that folder" in capsys.readouterr().err and not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------------- evaluator


@pytest.fixture(scope="module")
def evaluator():
    from sdtoolkit.eval.metrics import Evaluator

    return Evaluator.load()


def test_video_evaluator_ordering(evaluator):
    from sdtoolkit.eval.video import freeze_frames, fvd_shapes, score_clips, shuffle_frames

    config = ClipConfig(num_frames=8, resolution=32)
    real = render_clips(48, seed=5, config=config)
    other = render_clips(48, seed=6, config=config)
    frames, prompts = real["frames"], real["caption"]
    scores = score_clips(evaluator, frames, prompts)
    shuffled, frozen = shuffle_frames(frames, seed=1), freeze_frames(frames)
    shuffled_scores = score_clips(evaluator, shuffled, prompts)
    frozen_scores = score_clips(evaluator, frozen, prompts)
    assert scores["frame_prompt_accuracy"] >= 0.95 and scores["temporal_consistency"] >= 0.9
    assert scores["motion_accuracy"] >= 0.85
    assert shuffled_scores["motion_accuracy"] < scores["motion_accuracy"] - 0.3
    assert frozen_scores["motion_accuracy"] < scores["motion_accuracy"] - 0.3
    reference = other["frames"]  # real clips of another seed: real vs real below frozen vs real
    assert fvd_shapes(evaluator, frames, reference) < fvd_shapes(evaluator, frozen, reference)


def test_fvd_real_below_shuffled(evaluator):
    from sdtoolkit.eval.video import fvd_shapes, shuffle_frames

    config = ClipConfig(num_frames=8, resolution=32)
    frames, reference = render_clips(48, 5, config)["frames"], render_clips(48, 6, config)["frames"]
    assert fvd_shapes(evaluator, frames, reference) < fvd_shapes(evaluator, shuffle_frames(frames, 1), reference)


def test_gif_round_trip_keeps_scores(evaluator, tmp_path):
    from sdtoolkit.eval.video import load_clips, save_clips, score_clips

    clips = render_clips(9, seed=7, config=ClipConfig(num_frames=8, resolution=32))
    files = save_clips(clips["frames"], tmp_path, clips["caption"])
    back = load_clips(files)
    assert back.shape == clips["frames"].shape
    assert (back - clips["frames"]).abs().mean() < 0.02
    a, b = score_clips(evaluator, clips["frames"], clips["caption"]), score_clips(evaluator, back, clips["caption"])
    assert a["motion_accuracy"] == b["motion_accuracy"] and a["frame_prompt_accuracy"] == b["frame_prompt_accuracy"]


# ---------------------------------------------------------------------------------------------------- the adapter


def test_animatediff_denoiser_matches_stock_pipeline():
    """One trailing-DDIM step to alpha = 1 of stock AnimateDiffPipeline returns the guided x0 at t = 999: equal to
    the Denoiser's guided prediction, which checks the per-frame text conditioning (repeated once, not twice)."""
    from diffusers import DDIMScheduler
    from test_mcm import tiny_video_pipeline

    from sdtoolkit.core.denoiser import Denoiser

    pipe = tiny_video_pipeline()
    pipe.scheduler = DDIMScheduler.from_config(
        pipe.scheduler.config, timestep_spacing="trailing", set_alpha_to_one=True, steps_offset=0
    )
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a red cube , front view , turning clockwise", "a blue torus , side view , bobbing"]
    denoiser = Denoiser.from_pipeline(pipe)
    assert denoiser.family.name == "animatediff"
    noise = torch.randn(2, 4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        stock = pipe(
            prompts,
            num_frames=4,
            num_inference_steps=1,
            guidance_scale=5.0,
            latents=noise.clone(),
            output_type="latent",
            height=16,
            width=16,
        ).frames
        cond, uncond = denoiser.encode_prompt(prompts)
        ours = denoiser.predict(noise, torch.tensor(999.0), cond, uncond=uncond, guidance_scale=5.0).x0
    assert stock.shape == ours.shape == noise.shape
    torch.testing.assert_close(ours, stock.float(), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- the CLI


def test_video_cli_train_generate_eval(tmp_path, capsys):
    """train-video-teacher --tiny -> generate (GIF grid, MP4, per-clip GIFs) -> eval --clips (scores, intervals)."""
    from sdtoolkit.cli import main

    teacher = tmp_path / "teacher"
    assert (
        main(
            [
                "train-video-teacher",
                "--tiny",
                "--output",
                str(teacher),
                "--num-clips",
                "2",
                "--steps",
                "1",
                "--num-threads",
                "1",
            ]
        )
        == 0
    )
    record = json.loads((teacher / "training_config.json").read_text())
    assert record["config"]["num_frames"] == 4 and record["command"]["teacher"]["steps"] == 1
    assert (teacher / "motion_adapter").is_dir() and (teacher / ".sdtoolkit-manifest.json").is_file()
    # README: a run's saved config is a valid --config (its training_config.json was refused: unknown keys)
    again = tmp_path / "again"
    assert (
        main(["train-video-teacher", "--config", str(teacher / "training_config.json"), "--output", str(again)]) == 0
    )
    assert json.loads((again / "training_config.json").read_text())["config"] == record["config"]
    # the folder is the run's now: a second run needs --overwrite; bad values are one line each, nothing written
    assert main(["train-video-teacher", "--tiny", "--output", str(teacher)]) != 0
    err = capsys.readouterr().err
    assert "--overwrite" in err and "--resume" not in err  # the command has no --resume: not suggested
    assert main(["train-video-teacher", "--tiny", "--output", str(tmp_path / "x"), "--num-frames", "9"]) == 2
    assert "--num-frames 9" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["train-video-teacher", "--tiny", "--output", str(tmp_path / "x"), "--num-threads", "0"]) == 2
    assert "--num-threads 0: must be >= 1" in capsys.readouterr().err and not (tmp_path / "x").exists()
    for flag, value, line in (
        ("--turn-deg", "0", "--turn-deg must be in (0, 88]"),
        ("--turn-deg", "120", "got 120.0"),
        ("--bob-amplitude", "-0.1", "--bob-amplitude must be in (0, 0.5]"),
        # these were tracebacks after the folder was claimed, or (resolution) a run at a size the UNet mangles
        ("--lr", "-1", "--lr must be a finite number >= 0"),
        ("--device", "cdua", "--device 'cdua' is not supported"),
        ("--image-teacher", "builtin:shape", "unknown built-in model builtin:shape"),
        ("--resolution", "30", "--resolution 30: must be a multiple of"),
    ):
        assert main(["train-video-teacher", "--tiny", "--output", str(tmp_path / "x"), flag, value]) == 2
        assert line in capsys.readouterr().err and not (tmp_path / "x").exists()
    # a diverging run stops without writing a teacher (lr 1e20 makes the motion modules NaN by step 2)
    diverged = tmp_path / "diverged"
    assert main(["train-video-teacher", "--tiny", "--output", str(diverged), "--lr", "1e20", "--steps", "3"]) == 1
    assert "training diverged" in capsys.readouterr().err and not (diverged / "model_index.json").exists()

    out, clips = tmp_path / "grid.png", tmp_path / "clips"
    prompts = ["a red cube, front view, turning clockwise", "a blue sphere, side view, bobbing"]
    argv = ["generate", "--model", str(teacher), "--steps", "2", "--num-images", "2", "--out", str(out)]
    argv += ["--clips-dir", str(clips)] + [x for p in prompts for x in ("--prompt", p)]
    assert main(argv) == 0
    settings = json.loads((tmp_path / "grid.json").read_text())
    assert settings["pipeline"] == "AnimateDiffPipeline" and settings["num_frames"] == 4
    from sdtoolkit.cli.generate import mp4_writer
    from sdtoolkit.eval.video import load_gif

    grid = load_gif(tmp_path / "grid.gif")
    assert grid.shape == (4, 3, 2 * 64, 2 * 64)
    assert (tmp_path / "grid.mp4").is_file() == (mp4_writer() is not None)
    assert sorted(p.name for p in clips.iterdir()) == [
        "00000.gif",
        "00001.gif",
        "00002.gif",
        "00003.gif",
        "prompts.txt",
    ]

    report = tmp_path / "scores.json"
    argv = ["eval", "--clips", str(clips), "--clip-reference-num", "8", "--fd-splits", "0", "--bootstrap", "100"]
    assert main(argv + ["--out", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "motion_accuracy" in printed and "fvd_shapes" in printed
    result = json.loads(report.read_text())
    metrics = result["report"]["metrics"]
    for name in ("frame_prompt_accuracy", "motion_accuracy", "temporal_consistency"):
        assert metrics[name]["n"] == 4 and metrics[name]["low"] <= metrics[name]["value"] <= metrics[name]["high"]
    assert result["scores"]["fvd_shapes"] >= 0
    # an image folder given to --clips: one line
    assert main(["eval", "--clips", str(tmp_path / "teacher")]) == 2
