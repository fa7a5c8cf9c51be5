"""Bad values found by a fuzz of every command's flags (a sixth audit): each is refused in one line naming the
value and what is valid, with exit status 2, before anything is written. Each used to end in a traceback (after the
run's folder was claimed and its cache written) or be accepted silently."""

from __future__ import annotations

import re

import pytest

from sdtoolkit.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

LOGGING_ERROR = re.compile(r"--- Logging error ---.*?Arguments: \(\)\n", re.S)
"""A third-party logger whose handler holds an earlier test's closed capture stream reports that in a traceback of
its own (a test-harness artefact, not this command's output)."""

DISTILL = ["--max-steps", "1", "--batch-size", "1", "--builtin-images", "4", "--sample-every", "0", "--no-export"]
T3 = ["text-to-3d", "a red cube", "--steps", "2", "--quiet"]

CASES = [
    # distillation methods: values torch, peft or numpy refused deep inside, or took silently
    (["distill", "lcm", *DISTILL, "--ema-decay", "2"], "--ema-decay 2.0: must be in [0, 1]"),
    (["distill", "lcm", *DISTILL, "--adam-weight-decay", "-1"], "--adam-weight-decay -1.0: must be >= 0"),
    (["distill", "lcm", *DISTILL, "--lr", "-1e-4"], "--lr -0.0001: must be > 0"),  # argparse took -1e-4 for a flag
    (["distill", "lcm", *DISTILL, "--huber-c", "-1"], "--huber-c -1.0: must be > 0"),
    (["distill", "lcm", *DISTILL, "--sigma-data", "0"], "--sigma-data 0.0: must be > 0"),
    (["distill", "lcm", *DISTILL, "--time-cond-proj-dim", "0"], "--time-cond-proj-dim 0: must be >= 1"),
    (["distill", "lcm", *DISTILL, "--seed", "99999999999999999999"], "--seed 99999999999999999999: must be in"),
    (["distill", "pcm", *DISTILL, "--lora-rank", "4", "--lora-alpha", "-8"], "--lora-alpha -8.0: must be > 0"),
    (["distill", "dmd2", *DISTILL, "--adam-beta1", "2"], "--adam-beta1 2.0: must be in [0, 1)"),
    (["distill", "dmd2", *DISTILL, "--real-guidance-scale", "-3"], "--real-guidance-scale -3.0: must be >= 0"),
    (["distill", "sid", *DISTILL, "--alpha", "-5"], "--alpha -5.0: must be >= 0"),
    (["distill", "flash-dmd", *DISTILL, "--discriminator-channels", "0"], "--discriminator-channels 0: must be"),
    (["distill", "sida", *DISTILL, "--adversarial-weight", "2"], "--adversarial-weight 2.0: must be in [0, 1]"),
    (
        ["distill", "pcm", *DISTILL, "--lora-rank", "4", "--lora-target-modules", "nonexistent_module"],
        "--lora-target-modules nonexistent_module: no layer",
    ),
    # the video teacher
    (["train-video-teacher", "--tiny", "--steps", "1", "--resolution", "0"], "--resolution 0: must be >= 1"),
    (["train-video-teacher", "--tiny", "--steps", "1", "--log-every", "0"], "--log-every 0: must be >= 1"),
    (["train-video-teacher", "--tiny", "--steps", "1", "--seed", "-1"], "--seed -1: must be in"),
    (["train-video-teacher", "--tiny", "--steps", "1", "--motion-norm-num-groups", "7"], "must divide every block"),
    (["train-video-teacher", "--tiny", "--steps", "1", "--motion-layers-per-block", "2"], "layers_per_block (1)"),
    # the image teachers' architecture
    (["train-teacher", "--tiny", "--norm-num-groups", "7"], "--norm-num-groups 7: must divide every channel"),
    (["train-teacher", "--tiny", "--text-hidden-size", "64", "--text-heads", "5"], "multiple of --text-heads 5"),
    (["train-teacher", "--tiny", "--beta-start", "0.02", "--beta-end", "0.001"], "must be below --beta-end"),
    (["train-teacher", "--tiny", "--max-length", "2"], "--max-length 2: must be >= 9"),
    (["train-teacher", "--tiny", "--family", "sd3", "--patch-size", "3"], "--patch-size 3: must divide the latent"),
    (["train-teacher", "--tiny", "--family", "sd3", "--vae-source", "/nonexistent"], "--vae-source /nonexistent"),
    # 3D: pairs out of order, a prior's settings without the prior
    ([*T3, "--method", "vsd", "--guidance.lora-t-range", "0.9", "0.1"], "lora_t_range 0.9 0.1"),
    ([*T3, "--nerf.field.min-res", "200", "--nerf.field.max-res", "16"], "need min_res <= max_res"),
    ([*T3, "--seed", "99999999999999999999"], "--seed 99999999999999999999: must be in"),
    (["generate", "--prompt", "a red cube", "--guidance", "1e30", "--out", "{out}/grid.png"], "--guidance"),
    (["eval", "--images", "{out}", "--device", "tpu"], "--device 'tpu' is not supported"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(c[0][:2] + c[0][-2:]) for c in CASES])
def test_a_bad_value_is_one_line_before_anything_is_written(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [a.replace("{out}", str(out)) for a in argv]
    if "--out" not in argv and "--images" not in argv:
        argv += ["--output", str(out)]
    assert main(argv) == 2
    err = re.sub(LOGGING_ERROR, "", capsys.readouterr().err)
    ours = [line for line in err.splitlines() if line.startswith("sdtoolkit ")]
    assert len(ours) == 1 and "Traceback" not in err, err
    assert message in ours[0], ours[0]
    assert not out.exists() or not any(out.iterdir())


def test_a_convert_nerf_camera_range_out_of_order_is_refused():
    from sdtoolkit.nerf.pvd import PVDConfig

    for name in ("elevation_range", "distance_range"):
        with pytest.raises(ValueError, match=f"{name} = \\[3.0, 2.5\\]: the first value must not exceed the second"):
            PVDConfig(**{name: (3.0, 2.5)})


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lambda-text", "5"], "--lambda-text needs --prompt"),
        (["--novel-view-guidance.guidance-scale", "3"], "--novel-view-guidance.* needs --novel-view-prior"),
    ],
)
def test_image_to_3d_refuses_a_priors_settings_without_the_prior(flags, message, tmp_path, capsys):
    """They were ignored silently (the run trained without the prior the user thought they had weighted)."""
    from PIL import Image

    reference = tmp_path / "front.png"
    image = Image.new("RGB", (64, 64), "white")
    image.paste((200, 0, 0), (16, 16, 48, 48))
    image.save(reference)
    out = tmp_path / "out"
    assert main(["image-to-3d", str(reference), "--steps", "2", "--quiet", "--output", str(out), *flags]) == 2
    assert message in capsys.readouterr().err and not out.exists()
