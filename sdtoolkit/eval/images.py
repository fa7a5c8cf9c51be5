"""Reading a folder of images and the prompts that go with them (for `sdtoolkit eval`)."""

from __future__ import annotations

import glob
import json
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
"""File types `find_images` picks up from a folder."""
PROMPT_KEYS = ("text", "prompt", "caption")
"""Keys of a metadata.jsonl line that may hold the prompt (Hugging Face imagefolder uses "text")."""


def natural_key(path: Path) -> list:
    """Sort key that orders img_2.png before img_10.png."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def find_images(images: str) -> list[Path]:
    """The image files of a folder, or the files a glob pattern matches, in natural order of their names."""
    path = Path(images)
    if path.is_dir():
        files = [p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    else:
        files = [Path(p) for p in glob.glob(images) if Path(p).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=natural_key)


def read_prompts(files: list[Path], prompts_file: str | None = None) -> list[str]:
    """One prompt per image: from `prompts_file` (.txt, one per line in image order; or .jsonl with `file_name`),
    else from `prompts.txt` or `metadata.jsonl` beside the images. Raises ValueError saying what is missing."""
    folder = files[0].parent if files else Path(".")
    if prompts_file is None:
        for candidate in (folder / "prompts.txt", folder / "metadata.jsonl"):
            if candidate.is_file():
                prompts_file = str(candidate)
                break
        else:
            raise ValueError(f"no --prompts given and neither prompts.txt nor metadata.jsonl is in {folder}")
    path = Path(prompts_file)
    if not path.is_file():
        raise ValueError(f"prompts file {path} does not exist")
    if path.suffix == ".jsonl":
        by_name = {}
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            key = next((k for k in PROMPT_KEYS if k in record), None)
            if "file_name" not in record or key is None:
                raise ValueError(f"{path}:{number} needs 'file_name' and one of {PROMPT_KEYS}")
            by_name[Path(record["file_name"]).name] = record[key]
        missing = [f.name for f in files if f.name not in by_name]
        if missing:
            raise ValueError(f"{path} has no prompt for {len(missing)} image(s), e.g. {missing[0]}")
        return [by_name[f.name] for f in files]
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(prompts) != len(files):
        raise ValueError(f"{path} has {len(prompts)} prompts but there are {len(files)} images; need one per image")
    return prompts


def load_images(files: list[Path]) -> Tensor:
    """Images as a float [N, 3, H, W] tensor in [0, 1] (RGB; all images must have the same size)."""
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise ValueError(f"images have different sizes {sorted(sizes)}; resize them to one size first")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def save_images(images: Tensor, folder: str | Path, prompts: list[str] | None = None, prefix: str = "") -> list[Path]:
    """Writes [N, 3, H, W] images in [0, 1] as PNGs `{prefix}{i:05d}.png` and, given prompts, a prompts.txt."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    array = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    paths = []
    for i, image in enumerate(array):
        paths.append(folder / f"{prefix}{i:05d}.png")
        Image.fromarray(image).save(paths[-1])
    if prompts is not None:
        (folder / "prompts.txt").write_text("".join(p + "\n" for p in prompts))
    return paths
