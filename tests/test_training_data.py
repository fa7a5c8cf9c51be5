"""Prompt files, image–caption folders, the text/latent caches, and fixed-timestep export schedules."""

import json

import pytest
import torch

from sdtoolkit.distill.data import (
    CachedImageDataset,
    build_latent_cache,
    build_text_cache,
    read_image_captions,
    read_prompt_file,
    sample_latents,
)


def test_prompt_file_formats(tmp_path):
    (tmp_path / "p.txt").write_text("a red cube\n\n  a blue sphere  \n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "a red cube"}\n{"caption": "a blue sphere"}\n')
    (tmp_path / "p.csv").write_text("id,text\n1,a red cube\n2,a blue sphere\n")
    for name in ("p.txt", "p.jsonl", "p.csv"):
        assert read_prompt_file(tmp_path / name) == ["a red cube", "a blue sphere"], name
    (tmp_path / "bad.csv").write_text("id,label\n1,x\n")
    with pytest.raises(ValueError, match="prompt column"):
        read_prompt_file(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_prompt_file(tmp_path / "nope.txt")


def test_image_caption_folder(tmp_path):
    from PIL import Image

    for name in ("b.png", "a.png"):
        Image.new("RGB", (20, 12), (255, 0, 0)).save(tmp_path / name)
    (tmp_path / "metadata.jsonl").write_text(
        json.dumps({"file_name": "b.png", "text": "second"})
        + "\n"
        + json.dumps({"file_name": "a.png", "caption": "first"})
    )
    assert [(p.name, c) for p, c in read_image_captions(tmp_path)] == [("a.png", "first"), ("b.png", "second")]
    (tmp_path / "metadata.jsonl").unlink()
    (tmp_path / "a.txt").write_text("first\n")
    with pytest.raises(FileNotFoundError, match="b.png"):  # b.png has no caption
        read_image_captions(tmp_path)


def test_caches_are_built_once_and_match_the_encoders(tmp_path):
    from sdtoolkit.core.denoiser import Denoiser
    from sdtoolkit.testing import tiny_sd_pipeline

    teacher = Denoiser.from_pipeline(tiny_sd_pipeline())
    prompts = ["a red cube", "a blue sphere", "a red cube"]
    text = build_text_cache(teacher, prompts, tmp_path, "tiny")
    assert text.prompts == ["a red cube", "a blue sphere"]
    cond, uncond = teacher.encode_prompt(text.prompts)
    torch.testing.assert_close(text.cond["encoder_hidden_states"], cond.encoder_hidden_states)
    torch.testing.assert_close(text.uncond["encoder_hidden_states"], uncond.encoder_hidden_states[:1])
    stamp = (tmp_path / "text.safetensors").stat().st_mtime_ns
    again = build_text_cache(teacher, prompts, tmp_path, "tiny")
    assert (tmp_path / "text.safetensors").stat().st_mtime_ns == stamp  # reused, not re-encoded
    torch.testing.assert_close(again.cond["encoder_hidden_states"], text.cond["encoder_hidden_states"])

    images = [(torch.rand(3, 16, 16) * 2 - 1, p) for p in prompts]
    latents = build_latent_cache(teacher, iter(images), len(images), tmp_path, key="k1")
    posterior = teacher.vae.encode(torch.stack([i for i, _ in images])).latent_dist
    scale = teacher.vae.config.scaling_factor
    torch.testing.assert_close(latents["mean"], posterior.mean * scale)
    dataset = CachedImageDataset(text, {k: latents[k] for k in ("mean", "std")}, latents["captions"])
    batch = torch.utils.data.default_collate([dataset[i] for i in range(3)])
    assert batch["prompt_index"].tolist() == [0, 1, 0]
    torch.testing.assert_close(batch["cond.encoder_hidden_states"][1], cond.encoder_hidden_states[1])
    z = sample_latents(batch, torch.Generator().manual_seed(0))
    assert z.shape == (3, 4, 8, 8) and not torch.equal(z, batch["latent_mean"])


def test_fixed_timestep_export_schedule():
    from diffusers import LCMScheduler
    from sdtoolkit.pipelines.export import lcm_schedule_for

    settings = lcm_schedule_for([999, 749, 499, 249])
    scheduler = LCMScheduler(beta_schedule="scaled_linear", **settings)
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == [999, 749, 499, 249]
    scheduler.set_timesteps(2)
    assert scheduler.timesteps.tolist() == [999, 499]
    with pytest.raises(ValueError, match="999, 749, 499, 249"):
        lcm_schedule_for([999, 700, 400, 100])


def test_single_step_export_schedule_keeps_the_teacher_noise_schedule():
    """A 1-step generator on timestep t exports to a stock LCMScheduler whose 1-step default is [t] and whose
    alpha_bar agrees with the teacher's for every timestep up to t (a step at t gives the teacher's x0 formula)."""
    from diffusers import LCMScheduler
    from sdtoolkit.pipelines.export import lcm_single_step_schedule

    teacher = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    full = LCMScheduler(**teacher)
    for t in (399, 625, 998):
        scheduler = LCMScheduler.from_config(teacher, **lcm_single_step_schedule(t, teacher))
        scheduler.set_timesteps(1)
        assert scheduler.timesteps.tolist() == [t]
        torch.testing.assert_close(scheduler.alphas_cumprod, full.alphas_cumprod[: t + 1], rtol=0, atol=0)
        sample, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
        x0 = scheduler.step(eps, t, sample).denoised
        a = full.alphas_cumprod[t]
        expected = (sample - (1 - a).sqrt() * eps) / a.sqrt()
        torch.testing.assert_close(x0, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="1000"):
        lcm_single_step_schedule(1000, teacher)
