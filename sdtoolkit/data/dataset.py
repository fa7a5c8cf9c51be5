"""The procedural shapes dataset: captions, the prompt vocabulary, and seeded batches of rendered shapes.

A sample is one shape in one colour seen by one random camera; its caption is "a <colour> <shape>, <view> view"
with DreamFusion's view word for that camera. Samples are drawn in chunks of `CHUNK_SIZE`; chunk c of seed s uses
its own generator (seeded from `numpy.random.SeedSequence([s, c])`), so sample i depends only on (seed, i), never
on how many samples are asked for, and `ShapesDataset(n, seed)[i]` equals `render_batch(m, seed)` row i for any
n, m > i. Images are quantized to 8 bits, exactly like an image file of them.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from sdtoolkit.data.cameras import DEFAULT_DISTANCE, DEFAULT_FOV_DEG, Cameras, view_word, wrap_azimuth_deg
from sdtoolkit.data.render import render
from sdtoolkit.data.shapes import COLOUR_NAMES, COLOURS, SHAPES, VIEWS

CHUNK_SIZE = 256
"""Samples per chunk: the unit of seeding and of rendering."""
OVERHEAD_FRACTION = 0.15
"""Fraction of cameras drawn with elevation in `OVERHEAD_ELEVATION_RANGE`; the rest use `ELEVATION_RANGE`. The
default range never exceeds DreamFusion's 60-degree threshold, so without these there would be no overhead views."""
ELEVATION_RANGE = (-10.0, 60.0)
"""Elevation range (degrees) of ordinary cameras."""
OVERHEAD_ELEVATION_RANGE = (65.0, 85.0)
"""Elevation range (degrees) of overhead cameras."""

VOCABULARY: list[str] = ["a", *COLOUR_NAMES, *SHAPES, *VIEWS, "view"]
"""Every word any caption uses (punctuation aside), for building the teacher's word tokenizer."""

_CAPTION = re.compile(r"^(?P<article>\w+)\s+(?P<colour>\w+)\s+(?P<shape>\w+)(?:\s*,\s*(?P<view>\w+)\s+view)?$")


def caption(shape: str, colour: str, view: str | None = None) -> str:
    """The caption of a sample: "a red cube, front view" (or "a red cube" when `view` is None)."""
    _check_word(shape, SHAPES, "shape", shape)
    _check_word(colour, COLOUR_NAMES, "colour", colour)
    if view is None:
        return f"a {colour} {shape}"
    _check_word(view, VIEWS, "view", view)
    return f"a {colour} {shape}, {view} view"


def all_prompts(with_view: bool = True) -> list[str]:
    """Every caption: each shape x colour (x view when `with_view`), shapes outermost."""
    views = VIEWS if with_view else (None,)
    return [caption(s, c, v) for s in SHAPES for c in COLOUR_NAMES for v in views]


def _check_word(word: str, vocabulary, kind: str, text: str) -> None:
    if word not in vocabulary:
        raise ValueError(f"unknown {kind} {word!r} in caption {text!r}; valid {kind}s: {', '.join(vocabulary)}")


def parse_caption(text: str) -> tuple[str, str, str | None]:
    """Reads (shape, colour, view or None) back from a caption; case, spacing and a final period are forgiven."""
    cleaned = " ".join(text.strip().lower().rstrip(".").split())
    match = _CAPTION.match(cleaned)
    if match is None:
        raise ValueError(
            f"cannot parse caption {text!r}: expected 'a <colour> <shape>' or 'a <colour> <shape>, <view> view' "
            f"with words from {VOCABULARY}"
        )
    if match["article"] not in ("a", "an"):
        raise ValueError(f"unknown article {match['article']!r} in caption {text!r}; expected 'a'")
    _check_word(match["colour"], COLOUR_NAMES, "colour", text)
    _check_word(match["shape"], SHAPES, "shape", text)
    if match["view"] is not None:
        _check_word(match["view"], VIEWS, "view", text)
    return match["shape"], match["colour"], match["view"]


def chunk_generator(seed: int, chunk: int) -> torch.Generator:
    """The generator of chunk `chunk` of dataset seed `seed`."""
    state = np.random.SeedSequence([int(seed), int(chunk)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def sample_chunk(seed: int, chunk: int) -> dict[str, Tensor]:
    """Draws the CHUNK_SIZE sample parameters of one chunk: shape, colour, azimuth, elevation, view ids."""
    generator = chunk_generator(seed, chunk)
    shape = torch.randint(len(SHAPES), (CHUNK_SIZE,), generator=generator)
    colour = torch.randint(len(COLOURS), (CHUNK_SIZE,), generator=generator)
    u = torch.rand(3, CHUNK_SIZE, generator=generator, dtype=torch.float64)
    azimuth = wrap_azimuth_deg(-180.0 + 360.0 * u[0])
    low, high = ELEVATION_RANGE
    overhead_low, overhead_high = OVERHEAD_ELEVATION_RANGE
    elevation = torch.where(
        u[1] < OVERHEAD_FRACTION,
        overhead_low + (overhead_high - overhead_low) * u[2],
        low + (high - low) * u[2],
    )
    view = torch.tensor([VIEWS.index(w) for w in view_word(azimuth, elevation)])
    return {
        "shape": shape,
        "colour": colour,
        "view": view,
        "azimuth_deg": azimuth.float(),
        "elevation_deg": elevation.float(),
    }


def sample_parameters(num: int, seed: int) -> dict[str, Tensor]:
    """The parameters of samples 0..num-1 of seed `seed`."""
    chunks = [sample_chunk(seed, c) for c in range((num + CHUNK_SIZE - 1) // CHUNK_SIZE)]
    return {key: torch.cat([chunk[key] for chunk in chunks])[:num] for key in chunks[0]} if chunks else {}


def render_parameters(params: dict[str, Tensor], resolution: int = 64, device=None) -> Tensor:
    """Renders sampled parameters to uint8 images [B, 3, H, W] (one renderer call per CHUNK_SIZE samples)."""
    num = params["shape"].shape[0]
    out = torch.empty(num, 3, resolution, resolution, dtype=torch.uint8)
    for start in range(0, num, CHUNK_SIZE):
        part = slice(start, start + CHUNK_SIZE)
        cameras = Cameras(
            params["azimuth_deg"][part],
            params["elevation_deg"][part],
            torch.full_like(params["azimuth_deg"][part], DEFAULT_DISTANCE),
            torch.full_like(params["azimuth_deg"][part], DEFAULT_FOV_DEG),
        )
        if device is not None:
            cameras = cameras.to(device)
        images = render(params["shape"][part], params["colour"][part], cameras, resolution=resolution)
        out[part] = (images * 255).round().to(torch.uint8).cpu()
    return out


def to_pixel_values(images_uint8: Tensor) -> Tensor:
    """uint8 images to float pixel values in [-1, 1] (the diffusers convention)."""
    return images_uint8.float() / 127.5 - 1.0


def captions_of(params: dict[str, Tensor]) -> list[str]:
    """The caption of every sample."""
    return [
        caption(SHAPES[s], COLOUR_NAMES[c], VIEWS[v])
        for s, c, v in zip(params["shape"].tolist(), params["colour"].tolist(), params["view"].tolist())
    ]


def render_batch(num: int, seed: int = 0, resolution: int = 64, device=None, progress: bool = False) -> dict:
    """Samples 0..num-1 of seed `seed`, rendered in bulk.

    Returns a dict with "pixel_values" [num, 3, H, W] float in [-1, 1]; "shape", "colour", "view" long [num];
    "azimuth_deg", "elevation_deg" float [num]; and "caption", a list of num strings. This is what
    `default_collate` makes of `ShapesDataset(num, seed, resolution)` items, plus the two camera angles.
    """
    params = sample_parameters(num, seed)
    images = torch.empty(num, 3, resolution, resolution, dtype=torch.uint8)
    starts = range(0, num, CHUNK_SIZE)
    for start in tqdm(starts, desc="rendering shapes", unit="chunk", disable=not progress):
        part = {key: value[start : start + CHUNK_SIZE] for key, value in params.items()}
        images[start : start + CHUNK_SIZE] = render_parameters(part, resolution, device)
    return {"pixel_values": to_pixel_values(images), **params, "caption": captions_of(params)}


class ShapesDataset(torch.utils.data.Dataset):
    """`num_samples` rendered shapes, deterministic from `seed` (see the module docstring).

    Parameters are drawn up front (cheap); images are rendered a chunk at a time on first access and kept as
    uint8 (12 KiB per 64x64 image). Each DataLoader worker keeps its own cache, so for many epochs prefer
    `num_workers=0` or call `prerender()` before forking workers.
    """

    def __init__(self, num_samples: int, seed: int = 0, resolution: int = 64):
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}")
        self.num_samples, self.seed, self.resolution = num_samples, seed, resolution
        self.params = sample_parameters(num_samples, seed)
        self.captions = captions_of(self.params)
        self._chunks: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return self.num_samples

    def _chunk(self, chunk: int) -> Tensor:
        if chunk not in self._chunks:
            part = {key: value[chunk * CHUNK_SIZE : (chunk + 1) * CHUNK_SIZE] for key, value in self.params.items()}
            self._chunks[chunk] = render_parameters(part, self.resolution)
        return self._chunks[chunk]

    def prerender(self, progress: bool = True) -> ShapesDataset:
        """Renders every chunk now (with a progress bar) instead of on first access."""
        chunks = range((self.num_samples + CHUNK_SIZE - 1) // CHUNK_SIZE)
        for chunk in tqdm(chunks, desc="rendering shapes", unit="chunk", disable=not progress):
            self._chunk(chunk)
        return self

    def __getitem__(self, index: int) -> dict:
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for a dataset of {self.num_samples} samples")
        index %= self.num_samples
        image = self._chunk(index // CHUNK_SIZE)[index % CHUNK_SIZE]
        return {
            "pixel_values": to_pixel_values(image),
            "caption": self.captions[index],
            "shape": int(self.params["shape"][index]),
            "colour": int(self.params["colour"][index]),
            "view": int(self.params["view"][index]),
        }
