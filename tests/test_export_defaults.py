"""Exports that work as users call them (issue 15, item 6).

Every export kind (LCM, LCM-LoRA on the teacher, PCM, PCM-LoRA, DMD2 1-step, SiD 1-step, Flash-DMD) is trained
two steps on a tiny teacher, loaded in a fresh process by stock `DiffusionPipeline.from_pretrained` and called
with the prompt only. Measure: the largest absolute pixel difference (0-255) against the trainer's own final
sample grid (an 8-bit PNG from the toolkit's sampler, same prompt and noise seed). Threshold: <= 1.0, i.e. the
same image up to 8-bit rounding, for the model card's call of every kind and for the default call of every kind
without a trained w-embedding. The w-embedded students (LCM, PCM) keep LCM's guidance_scale = w + 1, which no stock
pipeline defaults to the trained value (11): their default call must be the card's call with the pipeline's own
default guidance_scale (same steps, timesteps and noise: max difference <= 1.0), a w inside the trained range;
the card says so and gives the exact call first. Also: no path of the training machine in any exported file,
`sdtoolkit generate` uses the export's trained call, and export/generate never overwrite what they did not write.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdtoolkit.cli import main
from sdtoolkit.testing import TINY_CAPTIONS, tiny_sd_pipeline, write_tiny_assets

SEED = 0
MAX_STEPS = "2"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny teacher folder, a 6-image captioned folder and a prompt file."""
    return write_tiny_assets(tmp_path_factory.mktemp("export-defaults"), prompts=list(TINY_CAPTIONS))


# method, extra arguments (large learning rates so that two steps move the weights)
KINDS = {
    "lcm": ("lcm", ["--lr", "1e-3", "--lr-warmup-steps", "0"]),
    "lcm-lora": ("lcm", ["--lora-rank", "4", "--lr", "3e-2", "--lr-warmup-steps", "0"]),
    "pcm": ("pcm", ["--lr", "1e-3", "--lr-warmup-steps", "0"]),
    "pcm-lora": ("pcm", ["--lora-rank", "4", "--lr", "3e-2", "--lr-warmup-steps", "0"]),
    "dmd2": ("dmd2", ["--num-steps", "1", "--learning-rate", "1e-3", "--fake-updates-per-generator", "1"]),
    "sid": ("sid", ["--num-steps", "1", "--generator-timestep", "850", "--learning-rate", "1e-3"]),
    "flash-dmd": ("flash-dmd", ["--num-steps", "4", "--fake-ema-decay", "0.9", "--learning-rate", "1e-3"]),
}


def distill(assets, name):
    method, extra = KINDS[name]
    args = ["distill", method, "--teacher", str(assets / "teacher"), "--output", str(assets / name)]
    args += ["--cache-dir", str(assets / "cache"), "--batch-size", "2", "--seed", str(SEED), "--log-with", "none"]
    args += ["--max-steps", MAX_STEPS, "--sample-every", MAX_STEPS, "--sample-prompts", "2", "--sample-seeds", "1"]
    if method in ("dmd2", "sid", "flash-dmd"):
        args += ["--fake-rank", "4"]
    args += ["--prompts", str(assets / "prompts.txt")] if method == "sid" else ["--data", str(assets / "data")]
    return main([*args, *extra])


@pytest.fixture(scope="module")
def runs(assets):
    out = {}
    for name in KINDS:
        assert distill(assets, name) == 0, name
        out[name] = assets / name
    return out


DEFAULT_CALL_CHECK = r"""
import glob, inspect, json, sys
import numpy as np, torch
torch.set_num_threads(1)
from PIL import Image
from diffusers import DiffusionPipeline

results = {}
for name, run in json.loads(sys.argv[1]).items():
    export = run + "/export"
    spec = json.load(open(export + "/export.json"))
    pipe = DiffusionPipeline.from_pretrained(export)  # stock diffusers, no sdtoolkit import
    pipe.set_progress_bar_config(disable=True)
    prompts = open(run + "/samples/prompts.txt").read().splitlines()
    grid = np.asarray(Image.open(sorted(glob.glob(run + "/samples/step_*.png"))[-1])).astype(np.float64)
    size = grid.shape[0] // len(prompts)
    trained = grid[:, :size].reshape(len(prompts), size, size, 3)  # column 0: noise seed SEED + 1000
    seed = int(sys.argv[2]) + 1000
    default = pipe(prompts, generator=torch.Generator().manual_seed(seed), output_type="np").images * 255
    call = {"num_inference_steps": spec["num_inference_steps"], "guidance_scale": spec["guidance_scale"]}
    call.update(spec["call_kwargs"])
    card = pipe(prompts, generator=torch.Generator().manual_seed(seed), output_type="np", **call).images * 255
    default_guidance = inspect.signature(type(pipe).__call__).parameters["guidance_scale"].default
    call["guidance_scale"] = default_guidance
    at_default = pipe(prompts, generator=torch.Generator().manual_seed(seed), output_type="np", **call).images * 255
    results[name] = {
        "pipeline": type(pipe).__name__,
        "scheduler": type(pipe.scheduler).__name__,
        "default_vs_trained_max": float(np.abs(default - trained).max()),
        "card_vs_trained_max": float(np.abs(card - trained).max()),
        "default_vs_card_mean": float(np.abs(default - card).mean()),
        "default_vs_card_at_default_guidance_max": float(np.abs(default - at_default).max()),
        "default_guidance": default_guidance,
        "default_exact": spec["default_exact"],
        "guidance_embedding": spec["guidance_embedding"],
    }
print(json.dumps(results))
"""


def test_every_export_kind_runs_its_trained_sampler_with_a_bare_stock_call(runs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    payload = json.dumps({k: str(v) for k, v in runs.items()})
    done = subprocess.run(
        [sys.executable, "-c", DEFAULT_CALL_CHECK, payload, str(SEED)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(results) == set(KINDS)
    expected = {
        "lcm": ("LatentConsistencyModelPipeline", "LCMScheduler", "w"),
        "lcm-lora": ("LatentConsistencyModelPipeline", "LCMScheduler", "zero"),
        "pcm": ("StableDiffusionPipeline", "TCDScheduler", "w"),
        "pcm-lora": ("StableDiffusionPipeline", "TCDScheduler", "zero"),
        "dmd2": ("StableDiffusionPipeline", "TCDScheduler", "zero"),
        "sid": ("StableDiffusionPipeline", "TCDScheduler", "zero"),
        "flash-dmd": ("LatentConsistencyModelPipeline", "LCMScheduler", "zero"),
    }
    for name, result in results.items():
        assert (result["pipeline"], result["scheduler"], result["guidance_embedding"]) == expected[name], result
        assert result["card_vs_trained_max"] <= 1.0, (name, result)  # the card's call: the trained images
        if result["guidance_embedding"] == "zero":
            assert result["default_exact"], (name, result)
            assert result["default_vs_trained_max"] <= 1.0, (name, result)  # pipe(prompt): the trained images
        else:  # the trained sampler at the pipeline's default w, a w the student was trained on
            assert result["default_vs_card_at_default_guidance_max"] <= 1.0, (name, result)
            config = json.loads((runs[name] / "config.json").read_text())[KINDS[name][0]]
            assert config["w_min"] <= result["default_guidance"] - 1 <= config["w_max"], (name, result)


def _machine_paths(assets) -> list[bytes]:
    import sdtoolkit

    paths = {str(assets), str(assets.parent), str(Path.home()), str(Path(sdtoolkit.__file__).resolve().parents[1])}
    return sorted({p.encode() for p in paths if len(p) > 4})


def test_exported_folders_hold_no_path_of_the_training_machine(assets, runs):
    needles = _machine_paths(assets)
    for name, run in runs.items():
        export = run / "export"
        for path in export.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                found = [n.decode() for n in needles if n in data]
                assert not found, (name, str(path.relative_to(export)), found)
        config = json.loads((export / "training_config.json").read_text())
        assert config["train"]["teacher"] == "teacher"  # a local folder: named, not located
        card = (export / "README.md").read_text()
        assert "guidance_scale" in card and "pipe(" in card.split("## ")[0]  # the exact call at the top


def test_cards_say_what_guidance_and_the_default_call_mean(runs):
    lcm = (runs["lcm"] / "export" / "README.md").read_text()
    assert "w = guidance_scale - 1" in lcm and "guidance_scale=11.0" in lcm
    for name in ("pcm-lora", "dmd2", "sid"):
        card = (runs[name] / "export" / "README.md").read_text()
        assert "has no effect" in card and "`pipe(prompt)`" in card, name
    lora = (runs["lcm-lora"] / "export" / "README.md").read_text()
    assert "load_lora_weights" in lora and "TEACHER" in lora and "PATH/TO/TEACHER" not in lora


def test_generate_uses_the_exports_trained_call(runs, tmp_path, capsys):
    for name in ("sid", "pcm", "flash-dmd"):
        export = runs[name] / "export"
        spec = json.loads((export / "export.json").read_text())
        out = tmp_path / f"{name}.png"
        args = ["generate", "--model", str(export), "--prompt", "a red cube", "--num-images", "1", "--out", str(out)]
        assert main(args) == 0
        settings = json.loads(out.with_suffix(".json").read_text())
        assert settings["steps"] == spec["num_inference_steps"], name
        assert settings["guidance"] == spec["guidance_scale"], name
        assert settings["timesteps"] == spec["timesteps"], name
    out = tmp_path / "told.png"
    args = ["generate", "--model", str(runs["sid"] / "export"), "--prompt", "a red cube", "--num-images", "1"]
    assert main([*args, "--steps", "3", "--guidance", "2", "--out", str(out)]) == 0
    settings = json.loads(out.with_suffix(".json").read_text())
    assert (settings["steps"], settings["guidance"]) == (3, 2.0)
    # a training run folder given as --model: one line naming its export (was diffusers' "no file named ...")
    capsys.readouterr()
    bad = ["generate", "--model", str(runs["sid"]), "--prompt", "a red cube", "--out", str(tmp_path / "x.png")]
    assert main(bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"its exported pipeline is --model {runs['sid'] / 'export'}" in err[0], err


def test_generate_images_dir_is_what_eval_scores(runs, tmp_path, capsys):
    """`generate --images-dir` writes one PNG per image and prompts.txt in the order diffusers returns them, the
    layout `eval --images` reads (a grid PNG is one image to eval: it used to be the only output)."""
    folder = tmp_path / "samples"
    args = ["generate", "--model", str(runs["sid"] / "export"), "--prompt", "a red cube, front view"]
    args += ["--prompt", "a blue sphere, side view", "--num-images", "2", "--out", str(tmp_path / "grid.png")]
    assert main([*args, "--images-dir", str(folder)]) == 0
    assert sorted(p.name for p in folder.glob("*.png")) == [f"{i:05d}.png" for i in range(4)]
    assert (folder / "prompts.txt").read_text().splitlines() == ["a red cube, front view"] * 2 + [
        "a blue sphere, side view"
    ] * 2
    capsys.readouterr()
    assert main(["eval", "--images", str(folder), "--reference-num", "0", "--out", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["scores"]["num_images"] == 4
    again = [*args[:-1], str(tmp_path / "grid2.png"), "--images-dir", str(folder)]
    assert main(again) == 2 and "--images-dir" in capsys.readouterr().err  # a folder with files: refused
    # --overwrite with fewer images leaves exactly this call's files (an earlier call's extra ones used to stay)
    fewer = [a if a != "2" else "1" for a in again]
    assert main([*fewer, "--overwrite"]) == 0
    assert sorted(p.name for p in folder.glob("*.png")) == ["00000.png", "00001.png"]
    assert len((folder / "prompts.txt").read_text().splitlines()) == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--guidance", "inf"], "--guidance"), (["--guidance", "nan"], "--guidance"), (["--steps", "5000"], "--steps")],
)
def test_generate_refuses_non_finite_guidance_and_too_many_steps(tmp_path, capsys, extra, message):
    out = tmp_path / "grid.png"
    assert main(["generate", "--prompt", "a red cube", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_generate_refuses_steps_the_scheduler_cannot_run(runs, tmp_path, capsys):
    out = tmp_path / "grid.png"
    args = ["generate", "--model", str(runs["flash-dmd"] / "export"), "--prompt", "a red cube", "--out", str(out)]
    assert main([*args, "--steps", "900"]) == 2  # LCMScheduler: at most original_inference_steps
    err = capsys.readouterr().err.strip()  # (after the pipeline's loading progress bars)
    assert "--steps 900" in err.splitlines()[-1] and err.count("error") == 1 and "Traceback" not in err
    assert not out.exists()


def test_generate_keeps_existing_files_unless_overwrite(runs, tmp_path, capsys):
    folder = tmp_path / "x"
    folder.mkdir()
    (folder / "photo.json").write_text("my notes")
    args = ["generate", "--model", str(runs["sid"] / "export"), "--prompt", "a red cube", "--num-images", "1"]
    assert main([*args, "--out", str(folder / "photo.png")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (folder / "photo.json").read_text() == "my notes" and not (folder / "photo.png").exists()
    (folder / "other.png").write_bytes(b"my picture")
    assert main([*args, "--out", str(folder / "other.png")]) == 2
    assert (folder / "other.png").read_bytes() == b"my picture"
    assert main([*args, "--out", str(folder / "photo.png"), "--overwrite"]) == 0
    assert json.loads((folder / "photo.json").read_text())["steps"] == 1


def test_export_refuses_to_write_into_its_source_or_a_foreign_folder(runs, tmp_path, capsys):
    run = runs["lcm-lora"]
    weights = run / "student" / "pytorch_lora_weights.safetensors"
    before = weights.read_bytes()
    for target in (run / "student", run, run.parent, run / "student" / "inner"):
        assert main(["export", str(run), str(target)]) == 2, target
        assert "being exported" in capsys.readouterr().err, target
        assert weights.read_bytes() == before
    assert (run / "student" / "export.json").is_file()
    # a non-empty folder that is not an earlier export: refused unless --overwrite, which keeps unrelated files
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["export", str(run), str(mine)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert main(["export", str(run), str(mine), "--overwrite"]) == 0
    assert (mine / "notes.txt").read_text() == "keep me" and (mine / "model_index.json").is_file()
    # an earlier export is replaced in place; files the user added to it stay
    (mine / "my_samples.txt").write_text("also mine")
    assert main(["export", str(run), str(mine)]) == 0
    assert (mine / "my_samples.txt").read_text() == "also mine" and (mine / "notes.txt").is_file()
    assert (mine / "pytorch_lora_weights.safetensors").read_bytes() == before
    # a file the user put INTO one of the export's folders is not the export's: refused, kept (it used to be
    # deleted with the folder); the same for a user's entry named like one the export writes, even --overwrite
    (mine / "unet" / "USER.txt").write_text("mine too")
    capsys.readouterr()
    assert main(["export", str(run), str(mine)]) == 2
    err = capsys.readouterr().err
    assert "unet/USER.txt was not written by sdtoolkit export" in err and len(err.strip().splitlines()) == 1, err
    assert (mine / "unet" / "USER.txt").read_text() == "mine too"
    (mine / "unet" / "USER.txt").unlink()
    assert main(["export", str(run), str(mine)]) == 0  # the export's own files alone: replaced
    theirs = tmp_path / "theirs"
    (theirs / "vae").mkdir(parents=True)
    (theirs / "vae" / "notes.md").write_text("a user's vae folder")
    assert main(["export", str(run), str(theirs), "--overwrite"]) == 2
    assert "vae/notes.md was not written" in capsys.readouterr().err
    assert (theirs / "vae" / "notes.md").read_text() == "a user's vae folder"


def test_padded_schedules_run_the_trained_steps_and_leave_the_rest_unchanged():
    """The stock schedules in isolation (no training): a 1-step TCD schedule gives the same latents at 1, 7 and the
    default 50 steps; a phased one gives the trained steps' latents at 50 steps up to float rounding; a 2-step
    LCM schedule gets a grid on which the LCM pipeline's 4-step default runs and 2 steps are still 999, 499."""
    from diffusers import StableDiffusionPipeline, TCDScheduler
    from sdtoolkit.pipelines.stock_defaults import (
        lcm_default_original_steps,
        tcd_padded_schedule,
        trained_timesteps,
        with_zero_guidance_embedding,
    )

    teacher = tiny_sd_pipeline()
    config = teacher.scheduler.config
    unet = with_zero_guidance_embedding(teacher.unet)
    assert not unet.time_embedding.cond_proj.weight.any()
    parts = {"vae": teacher.vae, "text_encoder": teacher.text_encoder, "tokenizer": teacher.tokenizer}
    parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)

    def latents(overrides, steps):
        scheduler = TCDScheduler.from_config(config, **overrides)
        pipe = StableDiffusionPipeline(unet=unet, scheduler=scheduler, **parts)
        pipe.set_progress_bar_config(disable=True)
        kwargs = {} if steps is None else {"num_inference_steps": steps}
        generator = torch.Generator().manual_seed(1)
        return pipe("a red cube", generator=generator, output_type="latent", **kwargs).images

    one_step, _ = tcd_padded_schedule([625], config, 50, final_alpha=1.0)
    assert trained_timesteps("TCDScheduler", config, one_step, 1) == [625]
    reference = latents(one_step, 1)
    for steps in (7, None):
        torch.testing.assert_close(latents(one_step, steps), reference, rtol=0, atol=0)
    phased, needs_timesteps = tcd_padded_schedule([999, 759, 499, 259], config, 50)
    assert not needs_timesteps
    assert trained_timesteps("TCDScheduler", config, phased, 4) == [999, 759, 499, 259]
    trained = latents(phased, 4)
    torch.testing.assert_close(latents(phased, None), trained, rtol=0, atol=1e-5 * float(trained.abs().max()))
    assert lcm_default_original_steps([999, 499], config, 2) == 4
    assert trained_timesteps("LCMScheduler", config, {"original_inference_steps": 4}, 2) == [999, 499]


def test_path_scrubbing_keeps_tokens_and_hub_ids():
    from sdtoolkit.pipelines.model_card import scrub_machine_paths, teacher_reference

    value = {"merges": ["/ /", "Ġ /"], "token": "/", "home": "~", "id": "org/name", "out": "/srv/runs/lcm"}
    scrubbed = scrub_machine_paths(value, "/srv/models/sd", "sd")
    assert scrubbed == {"merges": ["/ /", "Ġ /"], "token": "/", "home": "~", "id": "org/name", "out": "lcm"}
    assert scrub_machine_paths({"t": "/srv/models/sd/vae"}, "/srv/models/sd", "sd") == {"t": "sd"}
    assert teacher_reference("builtin:shapes") == "builtin:shapes"
    assert (
        teacher_reference("stable-diffusion-v1-5/stable-diffusion-v1-5")
        == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    )
    cache = "/home/u/.cache/huggingface/hub/models--org--model/snapshots/abc123"
    assert teacher_reference(cache) == "org/model"
    assert teacher_reference("/srv/models/my-sd") == "my-sd"
