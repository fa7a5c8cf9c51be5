"""`sdtoolkit distill` end to end on a tiny teacher: smoke runs per variant, exact resume, export to stock diffusers
(checked in a fresh process), LoRA loading, and every bad input failing before training."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdtoolkit.cli import main
from sdtoolkit.testing import write_tiny_assets

SEED = 0


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny teacher folder and a 6-image captioned folder (same-name .txt captions)."""
    return write_tiny_assets(tmp_path_factory.mktemp("distill"))


def distill(assets, method, output, *extra):
    args = ["distill", method, "--teacher", str(assets / "teacher"), "--data", str(assets / "data")]
    args += ["--output", str(output), "--cache-dir", str(assets / "cache"), "--batch-size", "2", "--seed", str(SEED)]
    args += ["--sample-prompts", "2", "--sample-seeds", "2", "--log-with", "none", *extra]
    return main(args)


def losses(run: Path) -> dict[int, dict]:
    lines = (run / "losses.jsonl").read_text().splitlines()
    return {entry["step"]: entry for entry in map(json.loads, lines)}


@pytest.fixture(scope="module")
def runs(assets):
    """One run per variant: full LCM (4 steps, checkpoints at 2 and 4), LCM-LoRA, phased PCM with the GAN."""
    out = {}
    out["full"] = assets / "full"
    args = ["--max-steps", "4", "--checkpoint-every", "2", "--sample-every", "4"]
    assert distill(assets, "lcm", out["full"], *args) == 0
    out["lora"] = assets / "lora"
    # a large learning rate so that two steps move the LoRA visibly (the LoRA checks below must be able to fail)
    args = ["--lora-rank", "4", "--lr", "3e-2", "--lr-warmup-steps", "0", "--max-steps", "2", "--sample-every", "2"]
    assert distill(assets, "lcm", out["lora"], *args) == 0
    out["pcm"] = assets / "pcm"
    args = ["--phases", "2", "--adversarial", "--max-steps", "2", "--sample-every", "2", "--w-min", "1"]
    args += ["--w-max", "3"]
    assert distill(assets, "pcm", out["pcm"], *args) == 0
    return out


def test_smoke_runs_write_everything(runs):
    for name, run in runs.items():
        config = json.loads((run / "config.json").read_text())
        assert config["method"] in ("lcm", "pcm") and config["train"]["batch_size"] == 2
        steps = losses(run)
        assert sorted(steps) == list(range(1, config["train"]["max_steps"] + 1))
        values = [v for entry in steps.values() for k, v in entry.items() if k != "step"]
        assert torch.isfinite(torch.tensor(values)).all()
        assert list((run / "samples").glob("step_*.png")), name
        export = run / "export"
        for part in ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler", "README.md"):
            assert (export / part).exists(), (name, part)
        exported = json.loads((export / "training_config.json").read_text())  # without the machine's paths
        assert exported[config["method"]] == config[config["method"]] and exported["train"]["teacher"] == "teacher"
        assert {k: v for k, v in exported["train"].items() if not isinstance(v, str)} == {
            k: v for k, v in config["train"].items() if not isinstance(v, str)
        }
    assert (runs["lora"] / "export" / "pytorch_lora_weights.safetensors").is_file()
    assert (runs["lora"] / "student" / "pytorch_lora_weights.safetensors").is_file()
    assert (runs["full"] / "student" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    # PCM alternates discriminator (even steps) and student (odd steps) updates
    pcm = losses(runs["pcm"])
    assert "discriminator/loss" in pcm[1] and "student/g_loss" in pcm[2]
    card = (runs["pcm"] / "export" / "README.md").read_text()
    assert "TCDScheduler" in card and "num_inference_steps=2" in card


def test_resume_gives_the_same_losses(assets, runs):
    short = assets / "short"
    assert distill(assets, "lcm", short, "--max-steps", "2", "--checkpoint-every", "2", "--sample-every", "0") == 0
    assert main(["distill", "lcm", "--resume", str(short), "--max-steps", "4", "--no-export"]) == 0
    resumed, uninterrupted = losses(short), losses(runs["full"])
    assert sorted(resumed) == [1, 2, 3, 4]
    for step in (1, 2, 3, 4):
        for key in ("student/loss", "student/grad_norm"):
            assert abs(resumed[step][key] - uninterrupted[step][key]) <= 1e-6, (step, key)


EXPORT_CHECK = r"""
import json, sys
import numpy as np, torch
torch.set_num_threads(1)
from PIL import Image
import diffusers
from diffusers import DiffusionPipeline

args = json.loads(sys.argv[1])
results = {}
for name, run in args["runs"].items():
    export = run + "/export"
    spec = json.load(open(export + "/export.json"))
    call = dict(num_inference_steps=spec["num_inference_steps"], guidance_scale=spec["guidance_scale"])
    call.update(spec["call_kwargs"])
    pipe = DiffusionPipeline.from_pretrained(export)  # stock diffusers, no sdtoolkit import
    pipe.set_progress_bar_config(disable=True)
    prompts = open(run + "/samples/prompts.txt").read().splitlines()
    grids = sorted(__import__("glob").glob(run + "/samples/step_*.png"))
    grid = np.asarray(Image.open(grids[-1])).astype(np.float64)
    size = grid.shape[0] // len(prompts)
    worst = 0.0
    for j in range(grid.shape[1] // size):
        generator = torch.Generator().manual_seed(args["seed"] + 1000 + j)
        images = pipe(prompts, generator=generator, output_type="np", **call).images * 255
        column = grid[:, j * size : (j + 1) * size].reshape(len(prompts), size, size, 3)
        worst = max(worst, float(np.abs(images - column).max()))
    result = {"pipeline": type(pipe).__name__, "scheduler": type(pipe.scheduler).__name__, "grid_diff": worst}
    if spec["student"] == "lora":
        latents = lambda p: p(prompts, generator=torch.Generator().manual_seed(5), output_type="latent", **call).images
        fused = latents(pipe)
        teacher = DiffusionPipeline.from_pretrained(args["teacher"])
        teacher.set_progress_bar_config(disable=True)
        teacher.scheduler = getattr(diffusers, spec["scheduler_class"]).from_pretrained(export, subfolder="scheduler")
        base = latents(teacher)
        teacher.load_lora_weights(export)
        result["lora_vs_fused"] = float((latents(teacher) - fused).abs().max())
        result["base_vs_fused"] = float((base - fused).abs().max())
    results[name] = result
print(json.dumps(results))
"""


def test_export_loads_in_a_fresh_process_and_matches_the_toolkit_sampler(assets, runs):
    payload = {"runs": {k: str(v) for k, v in runs.items()}, "teacher": str(assets / "teacher"), "seed": SEED}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", EXPORT_CHECK, json.dumps(payload)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results["full"]["pipeline"] == "LatentConsistencyModelPipeline"
    assert results["full"]["scheduler"] == "LCMScheduler"
    lora = results["lora"]  # a zero guidance embedding: the 4-step LCM pipeline's default call is the trained one
    assert lora["pipeline"] == "LatentConsistencyModelPipeline" and lora["scheduler"] == "LCMScheduler"
    assert results["pcm"]["scheduler"] == "TCDScheduler"
    for name, result in results.items():  # same images as the trainer's own final sample grid (8-bit PNG)
        assert result["grid_diff"] <= 1.0, (name, result)
    lora = results["lora"]
    assert lora["lora_vs_fused"] < 1e-3 < lora["base_vs_fused"], lora


def test_export_cli(assets, runs, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", str(runs["full"]), str(out)]) == 0
    assert (out / "model_index.json").is_file()
    original = runs["full"] / "export" / "export.json"
    assert json.loads((out / "export.json").read_text()) == json.loads(original.read_text())
    card = (out / "README.md").read_text()
    assert "DiffusionPipeline.from_pretrained" in card and "num_inference_steps=4" in card
    # a run that never finished cannot be exported
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text(json.dumps({"method": "lcm", "train": {"teacher": "x"}}))
    capsys.readouterr()
    assert main(["export", str(unfinished), str(tmp_path / "nowhere")]) == 2
    assert "--resume" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()


def _bad_inputs(assets, runs, tmp):
    teacher, data = str(assets / "teacher"), str(assets / "data")
    base = ["distill", "lcm", "--data", data, "--output", str(tmp / "never")]
    missing = str(tmp / "missing.txt")
    return [
        (["distill", "lcm", "--teacher", "no-such-teacher", "--output", str(tmp / "never")], "no-such-teacher"),
        (["distill", "lcm", "--teacher", "builtin:nope", "--output", str(tmp / "never")], "builtin:nope"),
        (base + ["--teacher", teacher, "--prompts", missing], "missing.txt"),
        (base + ["--teacher", teacher, "--lora-rank", "0"], "--lora-rank 0"),
        (base + ["--teacher", teacher, "--lora-rank", "-3"], "--lora-rank -3"),
        (["distill", "lcm", "--resume", str(runs["pcm"])], "'pcm' run"),
        (["distill", "lcm", "--teacher", teacher, "--output", str(tmp / "never")], "--data"),
        (base[:-2] + ["--teacher", teacher, "--output", str(runs["full"])], f"--resume {runs['full']}"),
        (base + ["--teacher", teacher, "--config", str(tmp / "nope.json")], "nope.json"),
        (base + ["--teacher", teacher, "--adversarial"], "--phases"),
        (base + ["--teacher", teacher, "--mixed-precision", "fp8"], "fp8"),
        (base + ["--teacher", str(assets / "data")], "model_index.json"),
    ]


def test_bad_inputs_fail_before_training(assets, runs, tmp_path, capsys):
    before = {p: p.stat().st_mtime_ns for p in runs["full"].rglob("*")}
    for args, expected in _bad_inputs(assets, runs, tmp_path):
        capsys.readouterr()
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("sdtoolkit distill: error:"), err
        assert expected in err, (expected, err)
        assert not (tmp_path / "never").exists(), args
    assert {p: p.stat().st_mtime_ns for p in runs["full"].rglob("*")} == before  # nothing touched


def test_config_file_and_flags(assets, tmp_path):
    from sdtoolkit.cli import build_parser
    from sdtoolkit.cli.distill import resolve

    config = tmp_path / "demo.json"
    config.write_text(json.dumps({"train": {"max_steps": 7, "batch_size": 3}, "lcm": {"lora_rank": 8, "w_max": 9}}))
    args = build_parser().parse_args(["distill", "lcm", "--config", str(config), "--batch-size", "5"])
    method, method_config, train, checkpoint, resolved = resolve(args)
    assert (train.max_steps, train.batch_size) == (7, 5)  # the flag overrides the file
    assert (method_config.lora_rank, method_config.w_max, method_config.w_min) == (8, 9, 5.0)
    assert resolved["lcm"]["lora_rank"] == 8 and checkpoint is None
