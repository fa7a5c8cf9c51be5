"""Tests of the built-in shapes teacher: training smoke run, the shipped folder, `sdtoolkit generate`, tokenizer."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sdtoolkit.cli import main
from sdtoolkit.models.loading import builtin_model_path


def _stock_pipeline(folder):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(folder)


def _sample(pipeline, prompts, steps, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return pipeline(
        prompts, num_inference_steps=steps, guidance_scale=5.0, generator=generator, output_type="pt"
    ).images


@pytest.fixture(scope="module")
def shipped():
    """The shipped `builtin:shapes` folder, loaded with stock diffusers."""
    folder = builtin_model_path("shapes")
    assert (folder / "model_index.json").is_file(), f"the shipped teacher is missing from {folder}"
    return folder, _stock_pipeline(folder)


def test_train_teacher_keeps_the_users_files(tmp_path, capsys):
    """train-teacher used to write into any folder, deleting a user's unet/ with what was in it and replacing a
    user's training_log.json: now the output-folder rules of every run (`sdtoolkit.runs`), checked before the
    data is rendered; a finished teacher's rerun names --overwrite (train-teacher has no --resume)."""
    mine = tmp_path / "mine"
    (mine / "unet").mkdir(parents=True)
    (mine / "unet" / "mine.txt").write_text("precious")
    (mine / "training_log.json").write_text("my log")
    for extra in ([], ["--overwrite"]):
        capsys.readouterr()
        assert main(["train-teacher", "--output", str(mine), "--tiny", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and ("--overwrite" in err[0] if not extra else "training_log.json" in err[0]), err
        assert "--resume" not in err[0]
        assert (mine / "unet" / "mine.txt").read_text() == "precious"
        assert (mine / "training_log.json").read_text() == "my log"


def test_train_teacher_smoke_run_writes_a_stock_loadable_folder(tmp_path):
    from sdtoolkit.models.shapes_teacher import TeacherConfig

    out = tmp_path / "teacher"
    args = ["train-teacher", "--output", str(out), "--tiny", "--threads", "1", "--seed", "3"]
    assert main([*args, "--checkpoint-minutes", "0"]) == 0  # a loadable checkpoint after every step
    pipeline = _stock_pipeline(out)
    images = _sample(pipeline, ["a red cube, front view", "a blue torus, side view"], steps=2)
    assert images.shape == (2, 3, 64, 64)
    assert images.min() >= 0 and images.max() <= 1
    config = TeacherConfig.from_dict(json.loads((out / "training_config.json").read_text()))
    assert config.seed == 3 and config.unet_steps == 3
    log = json.loads((out / "training_log.json").read_text())
    assert log["unet"]["steps"] == 3 and log["vae"]["steps"] == 3
    # scaling_factor = 1 / std of the trained latents, as in SD
    assert pipeline.vae.config.scaling_factor == pytest.approx(log["latents"]["scaling_factor"])
    assert not (out / "checkpoint").exists(), "the final folder supersedes the checkpoint"
    assert "sdtoolkit train-teacher --output" in config.extra["command"]
    # a finished teacher is not replaced by a plain rerun (it used to be, silently); --overwrite does
    before = (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert main([*args, "--seed", "4"]) == 2
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == before

    from sdtoolkit.models.shapes_teacher_card import write_model_card

    card = write_model_card(out).read_text()
    assert f"{log['parameters']['unet']:,}" in card and "Not measured yet" in card


def test_time_budget_stops_a_stage_and_lr_anneals():
    from sdtoolkit.models.shapes_teacher_train import Budget, learning_rate

    budget = Budget(max_steps=10**9, max_seconds=0.0)
    assert budget.done(0) and budget.progress(0) == 1.0
    assert Budget(max_steps=4, max_seconds=None).done(4)
    assert learning_rate(1e-3, step=0, progress=0.0, warmup_steps=10) == pytest.approx(1e-4)
    assert learning_rate(1e-3, step=50, progress=0.0, warmup_steps=10) == pytest.approx(1e-3)
    assert learning_rate(1e-3, step=50, progress=1.0, warmup_steps=10) == pytest.approx(1e-4)
    assert learning_rate(1e-3, step=50, progress=0.5, warmup_steps=10) == pytest.approx(5.5e-4)


def test_shipped_teacher_is_sd_layout_and_samples(shipped):
    folder, pipeline = shipped
    for component in ("unet", "vae", "text_encoder"):
        weights = list((folder / component).glob("*.safetensors"))
        assert len(weights) == 1, f"{component}: expected one safetensors file, found {weights}"
    total_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
    assert total_mb <= 25, f"shipped teacher is {total_mb:.1f} MB, budget 25 MB"
    scheduler = pipeline.scheduler.config
    assert type(pipeline.scheduler).__name__ == "DDIMScheduler"
    assert (scheduler.beta_schedule, scheduler.beta_start, scheduler.beta_end) == ("scaled_linear", 0.00085, 0.012)
    assert scheduler.steps_offset == 1 and not scheduler.set_alpha_to_one and not scheduler.clip_sample
    assert scheduler.prediction_type == "epsilon"
    assert pipeline.vae_scale_factor == 4 and pipeline.unet.config.sample_size == 16
    assert pipeline.vae.config.scaling_factor != 1.0
    images = _sample(pipeline, ["a green cone, front view"], steps=4)
    assert images.shape == (1, 3, 64, 64)
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0.02
    assert torch.isfinite(images).all()


def test_tokenizer_encodes_every_caption_word_as_one_token(shipped):
    from sdtoolkit.data import VOCABULARY, all_prompts
    from sdtoolkit.models.shapes_teacher import TeacherConfig, build_tokenizer
    from sdtoolkit.models.text import split_words

    _, pipeline = shipped
    for tokenizer in (build_tokenizer(TeacherConfig()), pipeline.tokenizer):
        for word in VOCABULARY:
            assert tokenizer.tokenize(word) == [word + "</w>"], word
        for prompt in all_prompts():
            tokens = tokenizer.tokenize(prompt)
            assert tokens == [word + "</w>" for word in split_words(prompt)], prompt
            assert len(tokens) + 2 <= tokenizer.model_max_length
    assert pipeline.tokenizer.model_max_length == pipeline.text_encoder.config.max_position_embeddings


def test_generate_cli_writes_a_grid_from_the_shipped_teacher(tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "grid.png"
    args = ["generate", "--model", "builtin:shapes", "--steps", "2", "--num-images", "3", "--out", str(out)]
    args += ["--prompt", "a red cube, front view", "--prompt", "a blue sphere, overhead view"]
    assert main(args) == 0
    with Image.open(out) as image:
        assert image.size == (3 * 64, 2 * 64)
    settings = json.loads(out.with_suffix(".json").read_text())
    assert settings["prompts"] == ["a red cube, front view", "a blue sphere, overhead view"]
    assert settings["steps"] == 2 and settings["num_images"] == 3 and settings["scheduler"] == "DDIMScheduler"
    assert str(out) in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "builtin:nope"], "builtin:shapes"),
        (["--model", "./no/such/folder"], "does not exist"),
        (["--steps", "0"], "--steps"),
        (["--steps", "-3"], "--steps"),
        (["--num-images", "0"], "--num-images"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_generate_rejects_bad_input_in_one_line(tmp_path, capsys, extra, message):
    out = tmp_path / "grid.png"
    assert main(["generate", "--prompt", "a red cube", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_generate_needs_a_prompt(tmp_path, capsys):
    assert main(["generate", "--out", str(tmp_path / "g.png")]) == 2
    assert "--prompt" in capsys.readouterr().err


def test_train_teacher_rejects_bad_steps(tmp_path, capsys):
    assert main(["train-teacher", "--output", str(tmp_path / "t"), "--vae-steps", "0"]) == 2
    assert "--vae-steps" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_sample_prompts_cover_every_shape_colour_and_view():
    from sdtoolkit.data import COLOURS, SHAPES, VIEWS, parse_caption
    from sdtoolkit.models.shapes_teacher import sample_prompts

    prompts = sample_prompts(math.lcm(len(SHAPES), len(COLOURS), len(VIEWS)))
    shapes, colours, views = zip(*(parse_caption(p) for p in prompts))
    assert len(set(prompts)) == len(prompts)
    assert set(shapes) == set(SHAPES) and set(colours) == set(COLOURS) and set(views) == set(VIEWS)
