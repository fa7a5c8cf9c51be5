"""Loading teachers (built-in, local folder or Hub id): safetensors only, one clear error when unavailable."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "absent_components",
    "BUILTIN_MODELS",
    "BUILTIN_TEACHERS",
    "BUILTIN_PREFIX",
    "ModelNotAvailableError",
    "UnsafeWeightsError",
    "builtin_model_path",
    "load_component",
    "load_teacher",
    "resolve_model_id",
]

BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS: dict[str, str] = {
    "shapes": "shapes-teacher",
    "shapes-flow": "shapes-flow",
    "shapes-novel-view": "shapes-novel-view",
}
"""`builtin:NAME` -> folder inside the installed `sdtoolkit.assets` package (a diffusers `save_pretrained` folder)."""
BUILTIN_TEACHERS: tuple[str, ...] = ("shapes", "shapes-flow")
"""The built-in models that are text-to-image pipelines (teachers and 2D priors); `shapes-novel-view` is the
image-to-3D novel-view prior (`sdtoolkit.models.novel_view_prior`)."""
BUILTIN_TRAIN_COMMANDS: dict[str, str] = {
    "shapes-flow": (
        "sdtoolkit train-teacher --family sd3 --output assets/shapes-flow --threads 2 --num-images 20000 "
        "--transformer-steps 100000 --max-minutes 70 --checkpoint-minutes 5 --eval-samples 1200"
    ),
    "shapes-novel-view": (
        "sdtoolkit train-novel-view-prior --output assets/shapes-novel-view --steps 6000 --max-minutes 48 --threads 1"
    ),
}
"""`builtin:NAME` -> the command that trained it (the CPU recipe: 2 threads, about 70 minutes plus scoring)."""

ASSETS_PACKAGE = "sdtoolkit.assets"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class ModelNotAvailableError(OSError):
    """The model cannot be found locally and cannot be downloaded; the message says how to get it."""


class UnsafeWeightsError(OSError):
    """The folder holds only pickled weights (.bin/.ckpt/...), which sdtoolkit refuses to load."""


def hub_cache_dir() -> str:
    """Where Hugging Face Hub downloads live (`HF_HUB_CACHE`, default ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    """True when `HF_HUB_OFFLINE` forbids network access."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def builtin_model_path(name: str) -> Path:
    """The folder of built-in model `name` inside `sdtoolkit.assets` (it may not exist; see `resolve_model_id`)."""
    if name not in BUILTIN_MODELS:
        raise ValueError(
            f"unknown built-in model {BUILTIN_PREFIX}{name}; valid: "
            + ", ".join(BUILTIN_PREFIX + valid for valid in BUILTIN_MODELS)
        )
    return Path(str(resources.files(ASSETS_PACKAGE).joinpath(BUILTIN_MODELS[name])))


def _looks_like_path(id_or_path: str) -> bool:
    return (
        id_or_path.startswith(("/", ".", "~"))
        or "\\" in id_or_path
        or id_or_path.count("/") > 1
        or os.path.splitdrive(id_or_path)[0] != ""
    )


def resolve_model_id(id_or_path: str | os.PathLike) -> str | Path:
    """`builtin:NAME` -> its folder in `sdtoolkit.assets`; an existing directory -> that `Path`; else a Hub id (str).

    Raises `ValueError` for an unknown built-in name (listing the valid ones) and `ModelNotAvailableError` for a
    missing built-in folder or a path-like string that is not a directory.
    """
    if isinstance(id_or_path, os.PathLike):
        id_or_path = os.fspath(id_or_path)
    if id_or_path.startswith(BUILTIN_PREFIX):
        name = id_or_path[len(BUILTIN_PREFIX) :]
        path = builtin_model_path(name)
        if not path.is_dir() and name in BUILTIN_TRAIN_COMMANDS:
            raise ModelNotAvailableError(
                f"built-in model {id_or_path} has not been trained yet (no {path}); train it (about 70 minutes on 2 "
                f"CPU threads) with: {BUILTIN_TRAIN_COMMANDS[name]}"
            )
        if not path.is_dir():
            raise ModelNotAvailableError(
                f"built-in model {id_or_path} is not installed: folder {BUILTIN_MODELS[name]!r} is missing from the "
                f"{ASSETS_PACKAGE} package (looked in {path}); reinstall sdtoolkit with its assets"
            )
        return path
    path = Path(id_or_path).expanduser()
    if path.is_dir():
        return path
    if _looks_like_path(id_or_path) or path.exists():
        raise ModelNotAvailableError(f"model folder {id_or_path!r} does not exist or is not a directory")
    return id_or_path


def _refuse_pickles(folder: Path) -> None:
    """Refuse a local folder (or one of its component subfolders) whose weights are pickles only."""
    offenders = []
    for directory in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
        files = [p for p in directory.iterdir() if p.is_file()]
        pickles = [p.name for p in files if p.suffix in PICKLE_SUFFIXES]
        if pickles and not any(p.suffix == ".safetensors" for p in files):
            offenders.append(f"{directory} ({', '.join(sorted(pickles))})")
    if offenders:
        raise UnsafeWeightsError(
            "refusing pickled weights (loading them can run arbitrary code); sdtoolkit loads .safetensors only. "
            f"No safetensors beside: {'; '.join(offenders)}. Convert once in a trusted environment: load the model "
            "with diffusers and call save_pretrained(folder, safe_serialization=True)"
        )


def _network_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError

    errors: tuple[type[BaseException], ...] = (OSError, EntryNotFoundError, HFValidationError)
    try:
        import httpx

        errors += (httpx.HTTPError,)
    except ImportError:
        pass
    return errors


def uncached_hub_model(model_id: str, revision: str | None = None) -> str | None:
    """Why the Hub pipeline `model_id` cannot be loaded offline (no model_index.json of it in the local cache: the
    message of `_not_available`, naming what to download), or None when it is cached."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(model_id, "model_index.json", revision=revision)
    except Exception as error:  # an id the Hub client refuses (its own validation error types)
        return str(_not_available(model_id, revision, error))
    if isinstance(found, str):
        return None
    return str(_not_available(model_id, revision, FileNotFoundError("model_index.json not in the cache")))


def _not_available(model_id: str, revision: str | None, cause: BaseException) -> ModelNotAvailableError:
    """The one error for a Hub model that cannot be loaded here."""
    fetch = f"hf download {model_id}" + (f" --revision {revision}" if revision else "")
    if "safetensors" in str(cause).lower():
        return ModelNotAvailableError(
            f"model {model_id!r} has no safetensors weights (sdtoolkit never loads pickled .bin/.ckpt files); "
            f"convert it with save_pretrained(folder, safe_serialization=True) and pass that folder. Cause: {cause}"
        )
    where = (
        "it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set, so nothing can be downloaded"
        if hub_offline()
        else "it could not be downloaded (no network, a wrong id, or a gated repo that needs `hf auth login`)"
    )
    return ModelNotAvailableError(
        f"model {model_id!r} is not available: {where}. On a machine with network, download it with `{fetch}` "
        f"(older clients: `huggingface-cli download {model_id}`) into the cache at {hub_cache_dir()} "
        f"(HF_HUB_CACHE) and copy that cache here, or pass a local diffusers folder instead. Cause: "
        f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
    )


def _pipeline_source(resolved: str | Path, subfolder: str | None, revision: str | None) -> str | Path:
    """DiffusionPipeline has no `subfolder`: for a local folder join it; for a Hub id fetch just that subfolder."""
    if subfolder is None:
        return resolved
    if isinstance(resolved, Path):
        return resolved / subfolder
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(resolved, revision=revision, allow_patterns=[f"{subfolder}/*"])) / subfolder


def load_teacher(
    id_or_path: str | os.PathLike,
    *,
    torch_dtype: torch.dtype | None = None,
    variant: str | None = None,
    revision: str | None = None,
    subfolder: str | None = None,
    device: torch.device | str | None = None,
    pipeline_class: type | None = None,
    **kwargs: Any,
):
    """Load a diffusers pipeline (safetensors only) from `builtin:NAME`, a local folder, or a Hub id.

    Args:
        id_or_path: `builtin:shapes`, a `save_pretrained` folder, or a Hub id such as
            `stable-diffusion-v1-5/stable-diffusion-v1-5`.
        torch_dtype: dtype of the loaded weights (None: as stored).
        variant: weights variant, e.g. "fp16".
        revision: Hub branch, tag or commit.
        subfolder: the pipeline lives in this subfolder of the folder / repo.
        device: move the pipeline there after loading.
        pipeline_class: a `DiffusionPipeline` subclass to load with (default: the class in `model_index.json`).
        **kwargs: passed on to `from_pretrained`.

    Raises:
        ModelNotAvailableError: a Hub model that is neither cached nor downloadable (message says how to fetch it).
        UnsafeWeightsError: a local folder with pickled weights only.
    """
    from diffusers import DiffusionPipeline

    resolved = resolve_model_id(id_or_path)
    cls = pipeline_class or DiffusionPipeline
    try:
        source = _pipeline_source(resolved, subfolder, revision)
        if isinstance(source, Path):
            if not source.is_dir():
                raise ModelNotAvailableError(f"model folder {source} does not exist")
            _refuse_pickles(source)
        if torch_dtype is not None:  # diffusers >= 0.42 and transformers >= 5 call it `dtype`
            kwargs["dtype"] = torch_dtype
        if isinstance(source, Path):
            kwargs = {**absent_components(source), **kwargs}
        pipeline = cls.from_pretrained(source, variant=variant, revision=revision, use_safetensors=True, **kwargs)
    except (ModelNotAvailableError, UnsafeWeightsError):
        raise
    except _network_errors() as error:
        if isinstance(resolved, Path):
            raise
        raise _not_available(str(resolved), revision, error) from error
    if device is not None:
        pipeline = pipeline.to(device)
    return pipeline


def absent_components(folder: Path) -> dict[str, None]:
    """`{name: None}` for the components a folder's model_index.json lists as absent (`[null, null]`, e.g. SD3 saved
    without its T5 encoder): stock `from_pretrained` refuses such a folder unless they are passed as None."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: None for k, v in index.items() if isinstance(v, list) and len(v) == 2 and v[0] is None and v[1] is None}


def load_component(
    id_or_path: str | os.PathLike,
    cls: type,
    subfolder: str | None = None,
    *,
    torch_dtype: torch.dtype | None = None,
    variant: str | None = None,
    revision: str | None = None,
    device: torch.device | str | None = None,
    **kwargs: Any,
):
    """Load one component (e.g. `UNet2DConditionModel` from subfolder "unet") with `cls.from_pretrained`, safetensors
    only, with the same errors as `load_teacher`."""
    resolved = resolve_model_id(id_or_path)
    try:
        if isinstance(resolved, Path):
            folder = resolved / subfolder if subfolder else resolved
            if not folder.is_dir():
                raise ModelNotAvailableError(f"model folder {folder} does not exist")
            _refuse_pickles(folder)
        if subfolder:
            kwargs["subfolder"] = subfolder
        if torch_dtype is not None:  # diffusers >= 0.42 and transformers >= 5 call it `dtype`
            kwargs["dtype"] = torch_dtype
        model = cls.from_pretrained(resolved, variant=variant, revision=revision, use_safetensors=True, **kwargs)
    except (ModelNotAvailableError, UnsafeWeightsError):
        raise
    except _network_errors() as error:
        if isinstance(resolved, Path):
            raise
        raise _not_available(str(resolved), revision, error) from error
    if device is not None:
        model = model.to(device)
    return model


def load_teacher_pipeline(spec: str) -> Any:
    """The teacher's diffusers pipeline for `builtin:shapes`, a local folder or a Hub id (via `load_teacher`)."""
    teacher = load_teacher(spec)
    return getattr(teacher, "pipeline", teacher)


def teacher_network(pipeline: Any) -> Any:
    """The pipeline's denoising network: its `unet` (SD, SDXL) or `transformer` (SD3, SANA, FLUX)."""
    network = getattr(pipeline, "unet", None)
    return network if network is not None else pipeline.transformer


def vae_scale_factor(pipeline: Any) -> int:
    """Image pixels per latent pixel: the pipeline's `vae_scale_factor`, else 2^(VAE levels - 1)."""
    factor = getattr(pipeline, "vae_scale_factor", None)
    if factor:
        return int(factor)
    config = pipeline.vae.config
    channels = getattr(config, "block_out_channels", None) or config.encoder_block_out_channels
    return 2 ** (len(channels) - 1)


def folder_vae_scale_factor(folder: Any) -> int | None:
    """`vae_scale_factor` of a local pipeline folder read from its vae/config.json, without loading weights:
    2^(VAE levels - 1); None when the folder or that config cannot be read."""
    try:
        config = json.loads((Path(folder) / "vae" / "config.json").read_text())
    except (OSError, TypeError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    channels = config.get("block_out_channels") or config.get("encoder_block_out_channels")
    return 2 ** (len(channels) - 1) if isinstance(channels, list) and channels else None


def folder_pixel_multiple(folder: Any, unet_levels: int | None = None) -> int | None:
    """What every image side must be a multiple of for a UNet on a local folder's VAE: the VAE scale factor times
    the UNet's downsampling 2^(levels - 1). `unet_levels` defaults to the folder's unet/config.json
    (len(down_block_types)); None when a config cannot be read."""
    factor = folder_vae_scale_factor(folder)
    if factor is None:
        return None
    if unet_levels is None:
        try:
            unet_levels = len(json.loads((Path(folder) / "unet" / "config.json").read_text())["down_block_types"])
        except (OSError, TypeError, ValueError, KeyError):
            return None
    return factor * 2 ** (unet_levels - 1)


def teacher_resolution(pipeline: Any) -> int:
    """The teacher's native image size: the network's latent sample size (`sample_size`, else the pipeline's
    `default_sample_size`, e.g. FLUX) x the VAE scale factor."""
    from sdtoolkit.core.families import family_for

    network = teacher_network(pipeline)
    return int(family_for(network).sample_size(network, pipeline) * vae_scale_factor(pipeline))


def latent_size(pipeline: Any, resolution: int | None = None) -> tuple[int, int]:
    """(height, width) of the latents at image `resolution` (default: the teacher's native one)."""
    side = (resolution or teacher_resolution(pipeline)) // vae_scale_factor(pipeline)
    return side, side
