"""`sdtoolkit distill dmd2|flash-dmd|sid|sida` end to end on a tiny teacher: smoke runs, exact resume, the frozen
teacher behind the LoRA fake score, export to stock diffusers (checked in a fresh process) and bad inputs."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sdtoolkit.trainers.distribution_matching import FewStepStudent, student_timesteps

from sdtoolkit.cli import main
from sdtoolkit.testing import TINY_CAPTIONS, tiny_sd_pipeline, write_tiny_assets

SEED = 0


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny teacher folder, a 6-image captioned folder and a prompt file."""
    prompts = [*TINY_CAPTIONS, "a yellow torus", "a cube , side view"]
    return write_tiny_assets(tmp_path_factory.mktemp("dm"), prompts=prompts)


def distill(assets, method, output, *extra):
    args = ["distill", method, "--teacher", str(assets / "teacher"), "--output", str(output)]
    args += ["--cache-dir", str(assets / f"cache-{method}"), "--batch-size", "2", "--seed", str(SEED)]
    args += ["--sample-prompts", "2", "--sample-seeds", "2", "--log-with", "none", "--fake-rank", "4", *extra]
    if method == "sid":
        args += ["--prompts", str(assets / "prompts.txt")]
    else:
        args += ["--data", str(assets / "data")]
    return main(args)


def losses(run: Path) -> dict[int, dict]:
    lines = (run / "losses.jsonl").read_text().splitlines()
    return {entry["step"]: entry for entry in map(json.loads, lines)}


# large learning rates so that a few steps move the weights visibly (the checks below must be able to fail)
DMD2_ARGS = [
    "--num-steps",
    "2",
    "--gan-weight",
    "1e-2",
    "--fake-updates-per-generator",
    "2",
    "--learning-rate",
    "1e-3",
]
# SiD's 1-step generator on a lower timestep (SiD-LSG's 625): exported with the truncated LCMScheduler schedule
SID_ARGS = ["--num-steps", "1", "--generator-timestep", "625"]
SID_ARGS += ["--learning-rate", "1e-3", "--fake-learning-rate", "1e-3"]
# SiDA: SiD plus the GAN on the fake score's bottleneck, on real images; the GAN term joins the generator at step 1
SIDA_ARGS = [*SID_ARGS, "--adversarial-start", "1"]


@pytest.fixture(scope="module")
def runs(assets):
    out = {"dmd2": assets / "dmd2", "flash-dmd": assets / "flash", "sid": assets / "sid", "sida": assets / "sida"}
    args = [*DMD2_ARGS, "--max-steps", "4", "--checkpoint-every", "2", "--sample-every", "4"]
    assert distill(assets, "dmd2", out["dmd2"], *args) == 0
    args = ["--num-steps", "2", "--max-steps", "2", "--sample-every", "2", "--fake-ema-decay", "0.9"]
    assert distill(assets, "flash-dmd", out["flash-dmd"], *args) == 0
    args = [*SID_ARGS, "--max-steps", "3", "--checkpoint-every", "2", "--sample-every", "3"]
    assert distill(assets, "sid", out["sid"], *args) == 0
    args = [*SIDA_ARGS, "--max-steps", "3", "--checkpoint-every", "2", "--sample-every", "3"]
    assert distill(assets, "sida", out["sida"], *args) == 0
    return out


def test_smoke_runs_log_every_loss_and_write_everything(runs):
    expected = {
        "dmd2": {
            "generator/loss_dm",
            "generator/loss_gan",
            "fake_score/loss_denoise",
            "fake_score/loss_discriminator",
        },
        "flash-dmd": {"generator/loss_dm", "generator/loss_gan", "fake_score/loss_denoise", "discriminator/loss"},
        "sid": {"generator/loss", "generator/kept", "fake_score/loss_denoise"},
        "sida": {
            "generator/loss_sid",
            "generator/loss_adversarial",
            "fake_score/loss_denoise",
            "fake_score/loss_discriminator",
        },
    }
    for name, run in runs.items():
        config = json.loads((run / "config.json").read_text())
        assert config["method"] == name
        steps = losses(run)
        assert sorted(steps) == list(range(1, config["train"]["max_steps"] + 1))
        keys = set().union(*steps.values())
        assert expected[name] <= keys, (name, keys)
        assert all(
            torch.isfinite(torch.tensor(v)) for entry in steps.values() for k, v in entry.items() if k != "step"
        )
        assert list((run / "samples").glob("step_*.png")), name
        spec = json.loads((run / "export" / "export.json").read_text())
        k = config[name]["num_steps"]
        assert spec["num_inference_steps"] == k
        assert spec["timesteps"] == student_timesteps(k) or spec["timesteps"] == [config[name]["generator_timestep"]]
        if config[name]["generator_timestep"] is None:  # k >= 2: the LCM pipeline's 4-step default must run
            assert spec["scheduler_config"]["original_inference_steps"] == max(k, 4)
        else:
            assert spec["scheduler_config"]["num_train_timesteps"] == config[name]["generator_timestep"] + 1
        assert (run / "student" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    # TTUR: with 2 fake updates per generator update, the generator steps at 0 and 2 only (logged as steps 1, 3)
    steps = losses(runs["dmd2"])
    assert [s for s in steps if "generator/loss" in steps[s]] == [1, 3]
    assert all("fake_score/loss" in steps[s] for s in steps)


def test_sida_mixes_its_losses_and_trains_its_discriminator(assets, runs):
    """SiDA's generator loss is plain SiD before `--adversarial-start` and (1 - lambda) L_SiD + lambda L_adv from it
    on; its discriminator head trains with the fake score (its weights move from their initialisation)."""
    steps = losses(runs["sida"])
    first = steps[1]  # global step 0 < adversarial start 1: SiD alone
    assert first["generator/loss"] == pytest.approx(first["generator/loss_sid"], rel=1e-6)
    for step in (2, 3):
        entry = steps[step]
        mixed = 0.5 * entry["generator/loss_sid"] + 0.5 * entry["generator/loss_adversarial"]
        assert entry["generator/loss"] == pytest.approx(mixed, rel=1e-5)
        assert entry["generator/loss_adversarial"] > 0
    heads = []
    for step in (2, 3):  # prepared modules in build order: student, fake score, discriminator head (model_2)
        heads.append(load_file(str(runs["sida"] / "checkpoints" / f"step_{step:06d}" / "model_2.safetensors")))
    assert heads[0] and set(heads[0]) == set(heads[1]) and all(k.startswith("net.") for k in heads[0])
    assert max(float((heads[0][k] - heads[1][k]).abs().max()) for k in heads[0]) > 0


def test_student_trained_and_lora_fake_score_leaves_the_teacher_bit_identical(assets, runs):
    teacher = load_file(str(assets / "teacher" / "unet" / "diffusion_pytorch_model.safetensors"))
    student = load_file(str(runs["dmd2"] / "student" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert max(float((student[k] - teacher[k]).abs().max()) for k in teacher) > 1e-4
    checkpoint = runs["dmd2"] / "checkpoints" / "step_000004"
    backbone = load_file(str(checkpoint / "model_1.safetensors"))  # prepared modules: student, fake_score, head
    lora = [k for k in backbone if ".fake_score." in k]
    assert lora and max(float(backbone[k].abs().max()) for k in lora if "lora_B" in k) > 0  # the LoRA trained
    base = {k.replace(".base_layer.", "."): v for k, v in backbone.items() if "lora_" not in k}
    assert set(base) == set(teacher)
    assert all(torch.equal(base[k], teacher[k]) for k in teacher)  # the teacher's weights never moved


def test_generator_ema_is_what_gets_saved(assets, runs, tmp_path):
    """With the default EMA the saved student is the average, not the online generator of the last checkpoint; with
    `--ema-decay 0` it is the online generator itself."""
    online = load_file(str(runs["dmd2"] / "checkpoints" / "step_000004" / "model.safetensors"))
    saved = load_file(str(runs["dmd2"] / "student" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert set(online) == set(saved)
    assert max(float((online[k] - saved[k]).abs().max()) for k in saved) > 1e-5
    run = tmp_path / "no-ema"
    args = [*DMD2_ARGS, "--max-steps", "2", "--checkpoint-every", "2", "--sample-every", "0", "--no-export"]
    assert distill(assets, "dmd2", run, *args, "--ema-decay", "0") == 0
    online = load_file(str(run / "checkpoints" / "step_000002" / "model.safetensors"))
    saved = load_file(str(run / "student" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(online[k], saved[k]) for k in saved)


def test_resume_gives_the_same_losses(assets, runs):
    for name, args, total in (("dmd2", DMD2_ARGS, 4), ("sid", SID_ARGS, 3), ("sida", SIDA_ARGS, 3)):
        short = assets / f"short-{name}"
        assert (
            distill(assets, name, short, *args, "--max-steps", "2", "--checkpoint-every", "2", "--sample-every", "0")
            == 0
        )
        assert main(["distill", name, "--resume", str(short), "--max-steps", str(total), "--no-export"]) == 0
        resumed, uninterrupted = losses(short), losses(runs[name])
        assert sorted(resumed) == list(range(1, total + 1))
        # the generator EMA (checkpointed with the run) resumes exactly too: the saved students agree
        weights = "student/unet/diffusion_pytorch_model.safetensors"
        a, b = load_file(str(short / weights)), load_file(str(runs[name] / weights))
        assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6, name
        for step in range(1, total + 1):
            for key, value in uninterrupted[step].items():
                if key.endswith("loss") or key.endswith("grad_norm"):
                    assert abs(resumed[step][key] - value) <= 1e-6 * max(1.0, abs(value)), (name, step, key)


EXPORT_CHECK = r"""
import json, sys
import numpy as np, torch
from PIL import Image
from diffusers import DiffusionPipeline

args = json.loads(sys.argv[1])
results = {}
for name, run in args["runs"].items():
    export = run + "/export"
    spec = json.load(open(export + "/export.json"))
    call = dict(num_inference_steps=spec["num_inference_steps"], guidance_scale=spec["guidance_scale"])
    pipe = DiffusionPipeline.from_pretrained(export)  # stock diffusers, no sdtoolkit import
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler.set_timesteps(spec["num_inference_steps"])
    prompts = open(run + "/samples/prompts.txt").read().splitlines()
    grid = np.asarray(Image.open(sorted(__import__("glob").glob(run + "/samples/step_*.png"))[-1])).astype(np.float64)
    size = grid.shape[0] // len(prompts)
    worst = 0.0
    for j in range(grid.shape[1] // size):
        generator = torch.Generator().manual_seed(args["seed"] + 1000 + j)
        images = pipe(prompts, generator=generator, output_type="np", **call).images * 255
        column = grid[:, j * size : (j + 1) * size].reshape(len(prompts), size, size, 3)
        worst = max(worst, float(np.abs(images - column).max()))
    results[name] = {"pipeline": type(pipe).__name__, "scheduler": type(pipe.scheduler).__name__,
                     "timesteps": pipe.scheduler.timesteps.tolist(), "grid_diff": worst}
print(json.dumps(results))
"""


def test_export_loads_in_a_fresh_process_with_the_trained_timesteps(assets, runs):
    payload = {"runs": {k: str(v) for k, v in runs.items()}, "seed": SEED}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", EXPORT_CHECK, json.dumps(payload)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for name, result in results.items():
        method = json.loads((runs[name] / "config.json").read_text())[name]
        if method["num_steps"] == 1:  # deterministic: TCD (eta=0) with a step-function schedule, any step count
            expected_classes = ("StableDiffusionPipeline", "TCDScheduler")
        else:  # re-noising between steps: the LCM pipeline
            expected_classes = ("LatentConsistencyModelPipeline", "LCMScheduler")
        assert (result["pipeline"], result["scheduler"]) == expected_classes, result
        if method["generator_timestep"] is None:
            expected = student_timesteps(method["num_steps"])
        else:
            expected = [method["generator_timestep"]]
        assert result["timesteps"] == expected, (name, result)
        assert result["grid_diff"] <= 1.0, (name, result)  # same images as the trainer's own sample grid (8-bit PNG)


def test_student_timesteps_are_the_stock_lcm_schedules():
    assert student_timesteps(1) == [999]
    assert student_timesteps(2) == [999, 499]
    assert student_timesteps(4) == [999, 749, 499, 249]


def test_toolkit_sampler_equals_stock_pipeline_in_latent_space(runs):
    from diffusers import DiffusionPipeline

    from sdtoolkit.core.denoiser import Denoiser

    pipe = DiffusionPipeline.from_pretrained(runs["dmd2"] / "export")
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a photo of a red cube", "a photo of a blue sphere"]
    stock = pipe(prompts, num_inference_steps=2, guidance_scale=1.0, output_type="latent",
                 generator=torch.Generator().manual_seed(3)).images  # fmt: skip
    denoiser = Denoiser.from_pipeline(pipe)
    cond, _ = denoiser.encode_prompt(prompts)
    generator = torch.Generator().manual_seed(3)
    z = torch.randn(stock.shape, generator=generator)
    ours = FewStepStudent(denoiser, student_timesteps(2)).sample(z, cond, generator)
    torch.testing.assert_close(ours, stock, rtol=1e-4, atol=1e-4 * float(stock.abs().max()))


def test_bad_inputs_fail_before_training(assets, tmp_path, capsys):
    teacher = str(assets / "teacher")
    cases = [
        ("flash-dmd", ["--fake-score", "lora"], "--fake-score full"),
        ("dmd2", ["--num-steps", "0"], "--num-steps 0"),
        ("dmd2", ["--fake-score", "copy"], "--fake-score 'copy'"),
        ("dmd2", ["--min-t", "0.9", "--max-t", "0.1"], "--min-t"),
        ("flash-dmd", ["--gan-loss", "wgan"], "--gan-loss 'wgan'"),
        ("sid", ["--prompt-dropout", "1.5"], "--prompt-dropout 1.5"),
        ("sid", [], "--prompts"),
        ("dmd2", ["--num-steps", "2", "--generator-timestep", "625"], "--generator-timestep 625"),
        ("sid", ["--generator-timestep", "1000"], "--generator-timestep 1000"),
        ("sida", ["--adversarial-weight", "1.5"], "--adversarial-weight 1.5"),
        ("sid", ["--regression-weight", "-1"], "--regression-weight -1"),
        ("sida", ["--adversarial-start", "-1"], "--adversarial-start -1"),
    ]
    for method, extra, expected in cases:
        capsys.readouterr()
        args = ["distill", method, "--teacher", teacher, "--output", str(tmp_path / "never"), *extra]
        if method != "sid" or extra:
            args += ["--prompts", str(assets / "prompts.txt")] if method == "sid" else ["--data", str(assets / "data")]
        assert main(args) == 2, (method, extra)
        assert expected in capsys.readouterr().err, (method, extra)
    assert not (tmp_path / "never").exists()


def test_eval_export_scores_an_exported_student(runs, tmp_path):
    """`python -m benchmarks.eval_export` loads the export with stock diffusers and writes its scores."""
    from benchmarks import eval_export

    out = tmp_path / "scores.json"
    assert eval_export.main([str(runs["sid"] / "export"), "--seeds", "1", "--out", str(out)]) == 0
    scores = json.loads(out.read_text())[str(runs["sid"] / "export")]
    assert scores["num_images"] == 120 and scores["pipeline"] == "StableDiffusionPipeline"
    assert 0.0 <= scores["prompt_accuracy"] <= 1.0 and scores["fd_shapes"] > 0
    assert (scores["steps"], scores["guidance"]) == (1, 1.0)  # from its export.json
    assert scores["call_kwargs"] == json.loads((runs["sid"] / "export" / "export.json").read_text())["call_kwargs"]
    key = str(runs["dmd2"] / "export")  # a 2-step student, sampled here with 1 step and CFG 3
    args = [key, "--seeds", "1", "--steps", "1", "--guidance", "3", "--out", str(out)]
    assert eval_export.main(args) == 0
    overridden = json.loads(out.read_text())[key]
    assert (overridden["steps"], overridden["guidance"]) == (1, 3.0)
    assert eval_export.main([*args, "--seed", "5000"]) == 0  # an independent replicate: other noises
    replicate = json.loads(out.read_text())[key]
    assert replicate["seed"] == 5000 and overridden["seed"] == 0
    assert replicate["fd_shapes"] != overridden["fd_shapes"]
    with pytest.raises(SystemExit):  # 2 splits of 1 seed per prompt
        eval_export.main([key, "--seeds", "1", "--fd-splits", "2"])


def test_sida_adversarial_loss_by_hand():
    """numel * softplus(-D) / w per sample, averaged: logits (0, 2), w (0.5, 0.25), 4 elements per sample."""
    from sdtoolkit.trainers.sida import sida_adversarial_loss

    logits, w = torch.tensor([0.0, 2.0]), torch.tensor([0.5, 0.25])
    expected = (4 * math.log(2) / 0.5 + 4 * math.log1p(math.exp(-2.0)) / 0.25) / 2
    assert float(sida_adversarial_loss(logits, w, 4)) == pytest.approx(expected, rel=1e-6)
    assert float(sida_adversarial_loss(torch.zeros(0), torch.ones(0), 4)) == 0.0  # every sample masked out


def test_teacher_ode_samples_equal_the_stock_ddim_pipeline():
    """The regression pairs' teacher outputs are exactly what stock diffusers' DDIM pipeline returns from the same
    noise (eta = 0, CFG; `set_alpha_to_one` so that its last step returns x0 as `teacher_ode_samples` does)."""
    from diffusers import DDIMScheduler
    from sdtoolkit.trainers.distribution_matching import teacher_ode_samples

    from sdtoolkit.core.denoiser import Denoiser
    from sdtoolkit.distill.score_distillation import FakeScoreConfig, ScorePair

    pipe = tiny_sd_pipeline()
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, set_alpha_to_one=True)
    pipe.set_progress_bar_config(disable=True)
    teacher = Denoiser.from_pipeline(pipe)
    scores = ScorePair(teacher, FakeScoreConfig(rank=4))
    prompts = ["a photo of a red cube", "a photo of a blue sphere"]
    cond, uncond = teacher.encode_prompt(prompts)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    ours = teacher_ode_samples(scores, z, cond, uncond, 3.0, 10, pipe.scheduler.config)
    stock = pipe(prompts, latents=z.clone(), num_inference_steps=10, guidance_scale=3.0, output_type="latent").images
    torch.testing.assert_close(ours, stock, rtol=1e-4, atol=1e-4 * float(stock.abs().max()))


def test_sid_regression_option_logs_its_term(assets, runs, tmp_path):
    """SiD with DMD v1's regression (data-free: pairs from the teacher): the term is logged, positive and part of
    the generator loss; at weight 0 it is absent."""
    run = tmp_path / "sid-reg"
    extra = ["--regression-weight", "1", "--regression-pairs", "4", "--regression-steps", "2"]
    args = [*SID_ARGS, "--max-steps", "2", "--sample-every", "0", "--no-export", *extra]
    assert distill(assets, "sid", run, *args) == 0
    steps = losses(run)
    assert all(steps[s]["generator/loss_regression"] > 0 for s in (1, 2))
    assert "generator/loss_regression" not in losses(runs["sid"])[1]


def test_regression_pairs_are_stored_and_reused_on_resume(assets, tmp_path, monkeypatch):
    """The teacher's ODE pairs are written to the run folder once; a resumed run reads them back (no teacher solve)
    and continues with the losses of an uninterrupted run."""
    import sdtoolkit.trainers.distribution_matching as dm

    extra = ["--regression-weight", "1", "--regression-pairs", "4", "--regression-steps", "2", "--no-export"]
    args = [*SID_ARGS, "--sample-every", "0", "--checkpoint-every", "1", *extra]
    full, short = tmp_path / "full", tmp_path / "short"
    assert distill(assets, "sid", full, *args, "--max-steps", "3") == 0
    assert distill(assets, "sid", short, *args, "--max-steps", "2") == 0
    stored = load_file(str(short / dm.REGRESSION_PAIRS_NAME))
    assert stored["z"].shape[0] == stored["x0"].shape[0] == stored["rows"].shape[0] == 4

    def no_solve(*args, **kwargs):
        raise AssertionError("the stored pairs should have been reused")

    monkeypatch.setattr(dm, "teacher_ode_samples", no_solve)
    assert main(["distill", "sid", "--resume", str(short), "--max-steps", "3"]) == 0
    key = "generator/loss_regression"
    a, b = losses(short)[3][key], losses(full)[3][key]
    assert abs(a - b) <= 1e-6 * b
