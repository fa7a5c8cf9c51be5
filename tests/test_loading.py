"""Tests for sdtoolkit.models.loading: local folders, offline Hub errors, built-in ids, and refusing pickles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sdtoolkit.models.loading import (
    BUILTIN_MODELS,
    ModelNotAvailableError,
    UnsafeWeightsError,
    builtin_model_path,
    folder_pixel_multiple,
    folder_vae_scale_factor,
    load_component,
    load_teacher,
    resolve_model_id,
    vae_scale_factor,
)
from sdtoolkit.testing import tiny_sd_pipeline


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory):
    pipeline = tiny_sd_pipeline()
    folder = tmp_path_factory.mktemp("tiny_sd")
    pipeline.save_pretrained(folder)
    return pipeline, folder


def generate(pipeline) -> np.ndarray:
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(7)
    out = pipeline(
        "a photo of red cube",
        height=16,
        width=16,
        num_inference_steps=2,
        guidance_scale=2.0,
        generator=generator,
        output_type="np",
    )
    return out.images


def test_local_folder_round_trip(saved_pipeline):
    from diffusers import StableDiffusionPipeline

    original, folder = saved_pipeline
    assert resolve_model_id(str(folder)) == folder
    loaded = load_teacher(str(folder))
    assert isinstance(loaded, StableDiffusionPipeline)
    for name in ("unet", "vae", "text_encoder"):
        expected = getattr(original, name).state_dict()
        actual = getattr(loaded, name).state_dict()
        assert expected.keys() == actual.keys()
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=f"{name}.{key}")
    images = generate(loaded)
    assert images.shape == (1, 16, 16, 3)
    np.testing.assert_allclose(images, generate(original), rtol=0, atol=1e-6)


def test_dtype_and_component(saved_pipeline):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    original, folder = saved_pipeline
    loaded = load_teacher(folder, torch_dtype=torch.float64)
    assert loaded.unet.dtype == torch.float64
    unet = load_component(folder, UNet2DConditionModel, "unet")
    torch.testing.assert_close(unet.state_dict(), original.unet.state_dict(), rtol=0, atol=0)
    text_encoder = load_component(folder, CLIPTextModel, "text_encoder", torch_dtype=torch.float64)
    assert text_encoder.dtype == torch.float64


def test_offline_hub_id_gives_one_clear_error():
    with pytest.raises(ModelNotAvailableError) as info:
        load_teacher("someone/does-not-exist")
    message = str(info.value)
    assert "someone/does-not-exist" in message
    assert "download" in message
    assert "hf download someone/does-not-exist" in message
    from huggingface_hub import constants

    assert str(constants.HF_HUB_CACHE) in message
    assert "HF_HUB_OFFLINE" in message
    assert isinstance(info.value, OSError)


def test_distill_names_an_uncached_hub_teacher_before_the_data_checks(tmp_path, capsys):
    """`distill scm --teacher nosuch/folder` (no folder of that name, a Hub id not in the offline cache) asked for
    --data first; now the teacher's line says what to download, before anything is written. A cached id passes."""
    from sdtoolkit.cli import main
    from sdtoolkit.models.loading import uncached_hub_model

    assert main(["distill", "scm", "--teacher", "nosuch/folder", "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--teacher nosuch/folder: no such folder" in err[0] and "hf download" in err[0], err
    assert not (tmp_path / "run").exists()
    assert "hf download nosuch/folder" in uncached_hub_model("nosuch/folder")


def test_a_cached_hub_id_is_not_called_missing(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from sdtoolkit.models.loading import uncached_hub_model

    repo = tmp_path / "models--org--model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "model_index.json").write_text("{}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert uncached_hub_model("org/model") is None
    assert uncached_hub_model("org/other") is not None


def test_offline_component_error():
    from diffusers import UNet2DConditionModel

    with pytest.raises(ModelNotAvailableError, match="someone/does-not-exist"):
        load_component("someone/does-not-exist", UNet2DConditionModel, "unet")


def test_builtin_ids():
    with pytest.raises(ValueError) as info:
        resolve_model_id("builtin:foo")
    message = str(info.value)
    assert "builtin:foo" in message
    for name in BUILTIN_MODELS:
        assert f"builtin:{name}" in message
    path = builtin_model_path("shapes")
    assert path.name == "shapes-teacher"
    if path.is_dir():
        assert resolve_model_id("builtin:shapes") == path
    else:  # the folder ships later; until then the error must name it
        with pytest.raises(ModelNotAvailableError, match="shapes-teacher"):
            resolve_model_id("builtin:shapes")


def test_missing_local_folder():
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        resolve_model_id("./no/such/folder")
    assert resolve_model_id("org/name") == "org/name"


def test_pickle_only_folder_is_refused(saved_pipeline, tmp_path):
    original, _ = saved_pipeline
    original.save_pretrained(tmp_path, safe_serialization=False)
    assert list(Path(tmp_path, "unet").glob("*.bin"))
    assert not list(Path(tmp_path, "unet").glob("*.safetensors"))
    with pytest.raises(UnsafeWeightsError, match="safetensors") as info:
        load_teacher(tmp_path)
    assert "unet" in str(info.value)
    with pytest.raises(UnsafeWeightsError):
        load_component(tmp_path / "unet", type(original.unet))


def test_diffusers_itself_refuses_bin_with_use_safetensors(saved_pipeline, tmp_path):
    """Independent of our pre-check: `use_safetensors=True` makes diffusers refuse a .bin-only component."""
    from diffusers import DiffusionPipeline

    original, _ = saved_pipeline
    original.save_pretrained(tmp_path, safe_serialization=False)
    with pytest.raises(OSError, match="safetensors"):
        DiffusionPipeline.from_pretrained(tmp_path, use_safetensors=True)


def test_folder_vae_scale_factor_and_pixel_multiple_read_the_configs_without_loading(saved_pipeline, tmp_path):
    """The one rule the CLIs check resolutions with (text-to-3d, train-video-teacher, train-novel-view-prior):
    the VAE's 2^(levels - 1), which is what the loaded pipeline's `vae_scale_factor` says, times the UNet's
    2^(levels - 1) for a multiple; None (no check) when a config is missing."""
    pipeline, folder = saved_pipeline
    assert folder_vae_scale_factor(folder) == vae_scale_factor(pipeline)
    levels = len(pipeline.unet.config.down_block_types)
    assert folder_pixel_multiple(folder) == vae_scale_factor(pipeline) * 2 ** (levels - 1)
    assert folder_pixel_multiple(folder, unet_levels=3) == vae_scale_factor(pipeline) * 4
    shapes = builtin_model_path("shapes")
    if shapes.is_dir():  # the embedded teacher: a 3-level VAE (64 px images, 16 px latents)
        assert folder_vae_scale_factor(shapes) == vae_scale_factor(load_teacher(shapes)) == 4
    assert folder_vae_scale_factor(tmp_path) is None and folder_pixel_multiple(tmp_path) is None
    assert folder_vae_scale_factor("org/hub-id") is None
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text("not json")
    assert folder_vae_scale_factor(tmp_path) is None
