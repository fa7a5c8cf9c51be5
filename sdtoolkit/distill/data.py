"""Training data for the distillation loop: prompt files, image–caption folders, and a safetensors cache of text
embeddings and VAE latents so the teacher's encoders run once, not every epoch.

Two kinds of data, chosen by the method (`DistillationMethod.data`):

- `"prompts"` (data-free methods: DMD2's generator, SiD): a prompt file — `.txt` (one prompt per line), `.jsonl`
  (one object per line with a `prompt`, `text` or `caption` key) or `.csv` (a `prompt`, `text` or `caption`
  column). Items carry the cached text conditioning of one prompt.
- `"images"` (methods that noise real latents: LCM, PCM): an image–caption folder — images (`.png`, `.jpg`,
  `.jpeg`, `.webp`, `.bmp`) with captions either in `metadata.jsonl` (`{"file_name": ..., "text"|"caption"|"prompt":
  ...}`, the 🤗 ImageFolder layout) or in a `.txt` file of the same name beside each image. Items carry the VAE
  posterior (mean and std) of one image and the cached text conditioning of its caption.

The cache lives in one folder (`<run>/cache` by default; share it between runs with `--cache-dir`): `text.safetensors`
(one row per unique prompt, every `Conditioning` field, plus the unconditional "" row), `latents.safetensors`
(`mean`, `std`, `prompt_index`) and `cache.json` (what it was built from; a mismatch rebuilds it).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import Dataset

from sdtoolkit.core.denoiser import Conditioning, Denoiser, vae_moments

PROMPT_KEYS = ("prompt", "text", "caption")
"""Keys (jsonl) or columns (csv) read as the prompt, first match wins."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
"""Image files an image–caption folder may hold."""
COND_PREFIX = "cond."
"""Batch keys holding text conditioning start with this, followed by the `Conditioning` field name."""

__all__ = [
    "CachedImageDataset",
    "CachedPromptDataset",
    "TextCache",
    "batch_conditioning",
    "build_latent_cache",
    "build_text_cache",
    "read_image_captions",
    "read_prompt_file",
    "sample_latents",
]


# ---------------------------------------------------------------------------------------------------- sources


def read_prompt_file(path: str | Path) -> list[str]:
    """Prompts from a `.txt` (one per line), `.jsonl` (`prompt`/`text`/`caption` key) or `.csv` (a column of that
    name) file; blank lines and empty prompts are skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {str(path)!r} does not exist; pass a .txt, .jsonl or .csv file")
    suffix = path.suffix.lower()
    prompts: list[str] = []
    if suffix == ".jsonl":
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                prompts.append(_prompt_from_record(json.loads(line), f"{path}:{number}"))
    elif suffix == ".csv":
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            column = next((key for key in PROMPT_KEYS if key in (reader.fieldnames or [])), None)
            if column is None:
                raise ValueError(
                    f"{path}: no prompt column; columns are {reader.fieldnames}, expected one of {list(PROMPT_KEYS)}"
                )
            prompts = [row[column] for row in reader]
    elif suffix in (".txt", ""):
        prompts = path.read_text().splitlines()
    else:
        raise ValueError(f"prompt file {str(path)!r}: unknown type {suffix!r}; use .txt, .jsonl or .csv")
    prompts = [p.strip() for p in prompts if p and p.strip()]
    if not prompts:
        raise ValueError(f"prompt file {str(path)!r} holds no prompts")
    return prompts


def _prompt_from_record(record: dict, where: str) -> str:
    for key in PROMPT_KEYS:
        if key in record:
            return str(record[key])
    raise ValueError(f"{where}: no prompt key; keys are {sorted(record)}, expected one of {list(PROMPT_KEYS)}")


def read_image_captions(folder: str | Path) -> list[tuple[Path, str]]:
    """(image path, caption) pairs of an image–caption folder, sorted by file name.

    Captions come from `metadata.jsonl` when present (`file_name` plus `text`/`caption`/`prompt`), else from a
    same-name `.txt` file beside each image; an image without a caption is an error naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist")
    metadata = folder / "metadata.jsonl"
    pairs: list[tuple[Path, str]] = []
    if metadata.is_file():
        for number, line in enumerate(metadata.read_text().splitlines(), 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if "file_name" not in record:
                raise ValueError(f"{metadata}:{number}: no 'file_name' key")
            image = folder / record["file_name"]
            if not image.is_file():
                raise FileNotFoundError(f"{metadata}:{number}: image {str(image)!r} does not exist")
            pairs.append((image, _prompt_from_record(record, f"{metadata}:{number}")))
    else:
        for image in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            caption = image.with_suffix(".txt")
            if not caption.is_file():
                raise FileNotFoundError(
                    f"image {str(image)!r} has no caption: add {caption.name} or a metadata.jsonl to {str(folder)!r}"
                )
            pairs.append((image, caption.read_text().strip()))
    if not pairs:
        raise ValueError(f"image folder {str(folder)!r} holds no captioned images ({', '.join(IMAGE_SUFFIXES)})")
    return sorted(pairs, key=lambda pair: str(pair[0]))


def load_image(path: Path, resolution: int) -> Tensor:
    """An RGB image resized (shorter side, Lanczos) and centre-cropped to `resolution`², in [-1, 1], `[3, H, W]`."""
    import numpy as np
    from PIL import Image

    image = Image.open(path).convert("RGB")
    scale = resolution / min(image.size)
    size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.LANCZOS)
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    array = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
    return array * 2 - 1


# ---------------------------------------------------------------------------------------------------- text cache


def conditioning_to_tensors(cond: Conditioning) -> dict[str, Tensor]:
    """Flattens a `Conditioning` into named tensors (`added_cond_kwargs.<key>` for the nested dict)."""
    out: dict[str, Tensor] = {}
    for name in (
        "encoder_hidden_states",
        "pooled_projections",
        "encoder_attention_mask",
        "class_labels",
        "encoder_log_multiplicity",
    ):
        value = getattr(cond, name)
        if value is not None:
            out[name] = value
    for key, value in cond.added_cond_kwargs.items():
        out[f"added_cond_kwargs.{key}"] = value
    return out


def tensors_to_conditioning(tensors: dict[str, Tensor]) -> Conditioning:
    """Inverse of `conditioning_to_tensors`."""
    cond = Conditioning()
    for name, value in tensors.items():
        if name.startswith("added_cond_kwargs."):
            cond.added_cond_kwargs[name.split(".", 1)[1]] = value
        else:
            setattr(cond, name, value)
    return cond


def batch_conditioning(batch: dict[str, Tensor]) -> Conditioning:
    """The text conditioning of a collated batch (the `cond.*` entries)."""
    return tensors_to_conditioning({k[len(COND_PREFIX) :]: v for k, v in batch.items() if k.startswith(COND_PREFIX)})


@dataclass
class TextCache:
    """Text conditioning of every unique prompt (rows of `cond`) and of the empty prompt (`uncond`, one row)."""

    prompts: list[str]
    cond: dict[str, Tensor]
    uncond: dict[str, Tensor]

    def conditioning(self, index: Tensor | list[int] | slice) -> Conditioning:
        return tensors_to_conditioning({k: v[index] for k, v in self.cond.items()})

    def unconditional(self, batch_size: int) -> Conditioning:
        return tensors_to_conditioning({k: v.expand(batch_size, *v.shape[1:]) for k, v in self.uncond.items()})


def fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cache_is_valid(cache_dir: Path, name: str, key: str) -> bool:
    meta = cache_dir / "cache.json"
    if not meta.is_file() or not (cache_dir / f"{name}.safetensors").exists():
        return False
    try:
        return json.loads(meta.read_text()).get(name) == key
    except ValueError:  # an index torn by an older version: rebuild
        return False


def _mark_cache(cache_dir: Path, name: str, key: str | None) -> None:
    """Sets (or, with key None, removes) the index entry of cache `name` in `cache.json`, atomically (a temporary
    file, then one rename). A cache is rebuilt as: unmark, write its data files atomically, mark; so a process killed
    at any moment leaves the index pointing only at complete data of the key it names."""
    from sdtoolkit.runs import atomic_write_text

    meta_path = cache_dir / "cache.json"
    try:
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    except ValueError:
        meta = {}
    if key is None:
        if name not in meta:
            return
        meta.pop(name)
    else:
        meta[name] = key
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")


def _write_cache(cache_dir: Path, name: str, key: str, tensors: dict[str, Tensor], extra: dict[str, str]) -> None:
    """Writes cache `name` (its safetensors and `extra` text files) in the order unmark, data, mark (see
    `_mark_cache`), every file atomically."""
    from sdtoolkit.runs import atomic_output, atomic_write_text

    cache_dir.mkdir(parents=True, exist_ok=True)
    _mark_cache(cache_dir, name, None)
    with atomic_output(cache_dir / f"{name}.safetensors") as tmp:
        save_file(tensors, str(tmp))
    for file_name, text in extra.items():
        atomic_write_text(cache_dir / file_name, text)
    _mark_cache(cache_dir, name, key)


@torch.no_grad()
def build_text_cache(
    teacher: Denoiser, prompts: list[str], cache_dir: str | Path, teacher_id: str, batch_size: int = 64
) -> TextCache:
    """Encodes each unique prompt once with the teacher's own `encode_prompt` and stores the result in
    `cache_dir/text.safetensors`; reuses the file when it was built from the same teacher and prompts."""
    from tqdm.auto import tqdm

    cache_dir = Path(cache_dir)
    unique = list(dict.fromkeys(prompts))
    key = fingerprint("text", teacher_id, unique)
    if _cache_is_valid(cache_dir, "text", key):
        stored = load_file(str(cache_dir / "text.safetensors"))
        cond = {k[len("cond.") :]: v for k, v in stored.items() if k.startswith("cond.")}
        uncond = {k[len("uncond.") :]: v for k, v in stored.items() if k.startswith("uncond.")}
        return TextCache(unique, cond, uncond)
    rows: list[dict[str, Tensor]] = []
    uncond: dict[str, Tensor] = {}
    for start in tqdm(range(0, len(unique), batch_size), desc="caching text embeddings", leave=False):
        chunk = unique[start : start + batch_size]
        cond_chunk, uncond_chunk = teacher.encode_prompt(chunk)
        rows.append({k: v.float().cpu() for k, v in conditioning_to_tensors(cond_chunk).items()})
        if not uncond:
            uncond = {k: v[:1].float().cpu() for k, v in conditioning_to_tensors(uncond_chunk).items()}
    cond = {k: torch.cat([row[k] for row in rows]) for k in rows[0]}
    tensors = {f"cond.{k}": v.contiguous() for k, v in cond.items()}
    tensors.update({f"uncond.{k}": v.contiguous() for k, v in uncond.items()})
    _write_cache(cache_dir, "text", key, tensors, {"prompts.txt": "\n".join(unique) + "\n"})
    return TextCache(unique, cond, uncond)


# ---------------------------------------------------------------------------------------------------- latent cache


@torch.no_grad()
def build_latent_cache(
    teacher: Denoiser,
    images: Iterable[tuple[Tensor, str]],
    num_images: int,
    cache_dir: str | Path,
    key: str,
    batch_size: int = 32,
) -> dict[str, Tensor]:
    """Encodes `images` (`[3, H, W]` in [-1, 1], with captions) once through the teacher's VAE and stores the
    posterior's `mean` and `std` (already scaled like `Denoiser.encode`) plus each image's caption in
    `cache_dir/latents.safetensors`. `key` identifies the source; the cache is reused when it matches."""
    from tqdm.auto import tqdm

    cache_dir = Path(cache_dir)
    if _cache_is_valid(cache_dir, "latents", key):
        stored = load_file(str(cache_dir / "latents.safetensors"))
        captions = json.loads((cache_dir / "captions.json").read_text())
        return {**stored, "captions": captions}
    vae = teacher.vae
    if vae is None:
        raise ValueError("the teacher has no VAE; image–caption data needs one to cache latents")
    scale = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    means, stds, captions = [], [], []
    pending: list[Tensor] = []

    def flush() -> None:
        batch = torch.stack(pending).to(device=teacher.device, dtype=vae.dtype)
        mean, std = vae_moments(vae, batch)
        if std is None:  # a deterministic autoencoder (SANA's AutoencoderDC): no posterior spread
            std = torch.zeros_like(mean)
        # z = (E(x) - shift) * scale as in Denoiser.encode; a Gaussian posterior maps to mean and std likewise
        means.append(((mean - shift) * scale).float().cpu())
        stds.append((std * scale).float().cpu())
        pending.clear()

    for image, caption in tqdm(images, total=num_images, desc="caching VAE latents", leave=False):
        pending.append(image)
        captions.append(caption)
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    tensors = {"mean": torch.cat(means).contiguous(), "std": torch.cat(stds).contiguous()}
    _write_cache(cache_dir, "latents", key, tensors, {"captions.json": json.dumps(captions)})
    return {**tensors, "captions": captions}


def folder_images(pairs: list[tuple[Path, str]], resolution: int) -> Iterator[tuple[Tensor, str]]:
    """Loads the images of `read_image_captions` one by one."""
    for path, caption in pairs:
        yield load_image(path, resolution), caption


def folder_key(pairs: list[tuple[Path, str]], resolution: int, teacher_id: str) -> str:
    """Cache key of an image–caption folder: file names, sizes, modification times, captions, resolution."""
    files = [(str(p), p.stat().st_size, p.stat().st_mtime_ns, c) for p, c in pairs]
    return fingerprint("latents", teacher_id, resolution, files)


# ---------------------------------------------------------------------------------------------------- datasets


class CachedPromptDataset(Dataset):
    """Prompts with their cached text conditioning: item = `{"prompt_index", "cond.<field>": ...}`."""

    def __init__(self, text: TextCache, prompts: list[str]):
        index = {p: i for i, p in enumerate(text.prompts)}
        self.text = text
        self.prompt_index = torch.tensor([index[p] for p in prompts], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.prompt_index)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        j = int(self.prompt_index[i])
        item = {f"{COND_PREFIX}{k}": v[j] for k, v in self.text.cond.items()}
        item["prompt_index"] = self.prompt_index[i]
        return item


class CachedImageDataset(CachedPromptDataset):
    """Cached VAE posteriors with their captions' conditioning: adds `latent_mean` and `latent_std` `[C, h, w]`."""

    def __init__(self, text: TextCache, latents: dict[str, Tensor], captions: list[str]):
        super().__init__(text, captions)
        self.mean, self.std = latents["mean"], latents["std"]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        item = super().__getitem__(i)
        item["latent_mean"], item["latent_std"] = self.mean[i], self.std[i]
        return item


def sample_latents(batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
    """Draws z = mean + std * n from the cached VAE posteriors of a batch (a fresh VAE sample every time, as when
    encoding on the fly; `Denoiser.encode(sample=True)`)."""
    mean, std = batch["latent_mean"], batch["latent_std"]
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + std * noise
