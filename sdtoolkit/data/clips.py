"""Procedural clips of the shapes: a primitive turning clockwise / counter-clockwise about the vertical axis, or
bobbing, rendered frame by frame by the shapes renderer (`sdtoolkit.data.render.render`) with exact ground truth.

Motion, exactly:

- **turning**: the object (and the scene light, fixed in the object's frame: `sdtoolkit.data.render` lights the
  WORLD frame, which is the object's) rotates about +z by yaw(f) = +/- `turn_deg` f / (F - 1). Rotating the object by
  yaw with the camera fixed is the same image as the camera orbiting by -yaw around the fixed object, so frame f is
  rendered with camera azimuth a_0 - yaw(f). `yaw_deg` follows the right-hand rule about +z (the cameras'
  convention): counter-clockwise seen from above is positive, so a **clockwise** clip's yaw DEcreases per frame and
  its camera azimuth increases. The light turning with the object makes the motion visible also on the shapes that
  are symmetric about z (sphere, cylinder, cone, torus): their shading pattern turns with them.
- **bobbing**: the object moves along +z by lift(f) = A sin(2 pi f / F) (one period per clip) with the camera fixed:
  rendered exactly by moving the rays' origins by -lift into the object's frame (`LiftedCameras`).

a_0 is drawn so that every frame of a turning clip keeps the view word of its caption (DreamFusion's thresholds,
`sdtoolkit.data.cameras.view_word`); the caption is "a <colour> <shape>, <view> view, <motion>". Clip i depends
only on (seed, i), like `ShapesDataset`; frames are quantized to 8 bits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from sdtoolkit.data.cameras import (
    BACK_THRESHOLD_DEG,
    DEFAULT_DISTANCE,
    DEFAULT_FOV_DEG,
    FRONT_THRESHOLD_DEG,
    Cameras,
    view_word,
    wrap_azimuth_deg,
)
from sdtoolkit.data.dataset import ELEVATION_RANGE, OVERHEAD_ELEVATION_RANGE, OVERHEAD_FRACTION, caption
from sdtoolkit.data.render import render
from sdtoolkit.data.shapes import COLOUR_NAMES, SHAPES, VIEWS

MOTIONS: tuple[str, ...] = ("turning clockwise", "turning counter-clockwise", "bobbing")
"""Motion phrases; a motion id is an index into this tuple."""
CLIP_VOCABULARY: list[str] = ["turning", "clockwise", "counter", "-", "bobbing"]
"""Words the motion phrases add to the image captions' vocabulary."""

VIEW_MARGIN_DEG = 1.0
"""Degrees every frame of a clip keeps from its view word's azimuth thresholds."""
MAX_TURN_DEG = min(
    FRONT_THRESHOLD_DEG * 2, BACK_THRESHOLD_DEG * 2, 180.0 - FRONT_THRESHOLD_DEG - BACK_THRESHOLD_DEG
) - (2 * VIEW_MARGIN_DEG)
"""Largest `ClipConfig.turn_deg` whose every frame keeps the caption's view word (the narrowest view interval, 90
degrees with DreamFusion's thresholds, less the margins): 88."""

_CLIP_CAPTION = re.compile(r"^(?P<image>.+?)\s*,\s*(?P<motion>turning clockwise|turning counter-clockwise|bobbing)$")


@dataclass
class ClipConfig:
    """How clips are drawn and rendered."""

    num_frames: int = 16
    """Frames per clip (8-16 in the toolkit's video jobs)."""
    resolution: int = 64
    """Frame side in pixels."""
    turn_deg: float = 60.0
    """Total rotation of a turning clip from its first to its last frame (degrees)."""
    bob_amplitude: float = 0.15
    """Amplitude A of bobbing along +z (world units; the frame is ~2 units wide, so ~5 px at 64 px)."""
    motion_weights: tuple[float, float, float] = field(default=(1.0, 1.0, 1.0))
    """Relative frequency of each of `MOTIONS`."""


def clip_caption(shape: str, colour: str, view: str, motion: str) -> str:
    """ "a red cube, front view, turning clockwise"."""
    if motion not in MOTIONS:
        raise ValueError(f"unknown motion {motion!r}; valid: {', '.join(MOTIONS)}")
    return f"{caption(shape, colour, view)}, {motion}"


def parse_clip_caption(text: str) -> tuple[str, str, str | None, str]:
    """(shape, colour, view or None, motion) of a clip caption."""
    from sdtoolkit.data.dataset import parse_caption

    match = _CLIP_CAPTION.match(" ".join(text.strip().lower().rstrip(".").split()))
    if match is None:
        raise ValueError(
            f"cannot parse clip caption {text!r}: expected 'a <colour> <shape>, <view> view, <motion>' "
            f"with a motion of {MOTIONS}"
        )
    shape, colour, view = parse_caption(match["image"])
    return shape, colour, view, match["motion"]


def swap_direction(text: str) -> str:
    """The clip caption with its turning direction reversed ("... turning clockwise" <-> "... turning
    counter-clockwise"); a bobbing caption comes back unchanged. What the video teacher's direction probe feeds it."""
    shape, colour, view, motion = parse_clip_caption(text)
    swapped = {MOTIONS[0]: MOTIONS[1], MOTIONS[1]: MOTIONS[0]}.get(motion, motion)
    return f"{caption(shape, colour, view)}, {swapped}"


def all_clip_prompts() -> list[str]:
    """Every clip caption: shape x colour x view x motion."""
    return [clip_caption(s, c, v, m) for s in SHAPES for c in COLOUR_NAMES for v in VIEWS for m in MOTIONS]


def image_prompt(clip_prompt: str) -> str:
    """The image caption inside a clip caption (what the per-frame evaluator scores)."""
    shape, colour, view, _ = parse_clip_caption(clip_prompt)
    return caption(shape, colour, view)


# ---------------------------------------------------------------------------------------------------- exact motion


def yaw_deg(motion: Tensor, num_frames: int, turn_deg: float) -> Tensor:
    """yaw(f) `[N, F]` of each clip: +/- turn_deg f / (F - 1) (counter-clockwise positive), 0 when bobbing."""
    f = torch.arange(num_frames, dtype=torch.float64) / max(num_frames - 1, 1)
    sign = torch.where(motion == 0, -1.0, torch.where(motion == 1, 1.0, 0.0)).double()
    return sign[:, None] * turn_deg * f[None]


def lift(motion: Tensor, num_frames: int, amplitude: float) -> Tensor:
    """lift(f) `[N, F]`: A sin(2 pi f / F) for bobbing clips, 0 for turning ones."""
    phase = 2 * np.pi * torch.arange(num_frames, dtype=torch.float64) / num_frames
    return (motion == 2).double()[:, None] * amplitude * torch.sin(phase)[None]


@dataclass
class LiftedCameras(Cameras):
    """Orbit cameras looking at an object lifted by `lift` along +z: rays start at the camera centre minus the lift,
    i.e. in the object's own frame (the renderer's SDFs are centred at the origin), with unchanged directions."""

    lift: Tensor = None  # type: ignore[assignment]
    """Lift of the object along +z for each camera `[B]`."""

    def generate_rays(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        origins, directions = super().generate_rays(height, width)
        offset = torch.zeros(len(self), 3, dtype=origins.dtype, device=origins.device)
        offset[:, 2] = self.lift.to(origins)
        return origins - offset[:, None, None, :], directions


def _view_range(view: int, elevation: float) -> tuple[float, float]:
    """An azimuth interval (degrees, possibly crossing +/-180) inside which `view_word` says `VIEWS[view]`."""
    name = VIEWS[view]
    if name == "overhead":
        return -180.0, 180.0
    if name == "front":
        return -FRONT_THRESHOLD_DEG, FRONT_THRESHOLD_DEG
    if name == "back":
        return 180.0 - BACK_THRESHOLD_DEG, 180.0 + BACK_THRESHOLD_DEG
    return FRONT_THRESHOLD_DEG, 180.0 - BACK_THRESHOLD_DEG  # side (the +y side; the -y side is its mirror)


def sample_clip_parameters(num: int, seed: int, config: ClipConfig | None = None) -> dict[str, Tensor]:
    """Shape, colour, view, motion, elevation and per-frame azimuth, yaw and lift of clips 0..num-1 of `seed`."""
    config = config or ClipConfig()
    frames = config.num_frames
    if frames < 2:
        raise ValueError(f"num_frames {frames}: a clip needs at least 2 frames")
    shape, colour, view, motion, elevation, start = [], [], [], [], [], []
    weights = torch.tensor(config.motion_weights, dtype=torch.float64)
    if not 0 <= config.turn_deg <= MAX_TURN_DEG:
        raise ValueError(
            f"turn_deg {config.turn_deg} must be in [0, {MAX_TURN_DEG:g}]: every frame keeps its caption's view word"
        )
    margin = VIEW_MARGIN_DEG
    for i in range(num):
        state = np.random.SeedSequence([int(seed), 7, i]).generate_state(2, dtype=np.uint32)
        g = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        shape.append(int(torch.randint(len(SHAPES), (1,), generator=g)))
        colour.append(int(torch.randint(len(COLOUR_NAMES), (1,), generator=g)))
        m = int(torch.multinomial(weights, 1, generator=g))
        motion.append(m)
        u = torch.rand(4, generator=g, dtype=torch.float64).tolist()
        if u[0] < OVERHEAD_FRACTION:
            e = OVERHEAD_ELEVATION_RANGE[0] + (OVERHEAD_ELEVATION_RANGE[1] - OVERHEAD_ELEVATION_RANGE[0]) * u[1]
            v = VIEWS.index("overhead")
        else:
            e = ELEVATION_RANGE[0] + (ELEVATION_RANGE[1] - ELEVATION_RANGE[0]) * u[1]
            v = [VIEWS.index(w) for w in ("front", "side", "back")][min(int(u[2] * 3), 2)]
        low, high = _view_range(v, e)
        if VIEWS[v] == "side" and u[2] * 3 % 1 < 0.5:  # the -y side: the mirror interval
            low, high = -high, -low
        # every azimuth a_0 - yaw(f) stays in [low + margin, high - margin]; a clockwise clip (yaw falling to
        # -sweep) sweeps the azimuth up from a_0, a counter-clockwise one down
        sweep = config.turn_deg if m < 2 else 0.0
        span = max(high - low - 2 * margin - sweep, 0.0)
        a0 = low + margin + (sweep if m == 1 else 0.0) + span * u[3]
        view.append(v), elevation.append(e), start.append(a0)
    motion_t = torch.tensor(motion)
    yaw = yaw_deg(motion_t, frames, config.turn_deg)
    azimuth = wrap_azimuth_deg(torch.tensor(start, dtype=torch.float64)[:, None] - yaw)
    return {
        "shape": torch.tensor(shape),
        "colour": torch.tensor(colour),
        "view": torch.tensor(view),
        "motion": motion_t,
        "elevation_deg": torch.tensor(elevation, dtype=torch.float64).float(),
        "azimuth_deg": azimuth.float(),
        "yaw_deg": yaw.float(),
        "lift": lift(motion_t, frames, config.bob_amplitude).float(),
    }


def render_clip_parameters(
    params: dict[str, Tensor], resolution: int = 64, device: str | torch.device = "cpu", chunk: int = 2048
) -> Tensor:
    """uint8 clips `[N, F, 3, H, W]` on the CPU, rendered on `device`, `chunk` frames per renderer call (every frame
    is rendered on its own, so the chunking changes no pixel; it bounds the renderer's memory)."""
    n, frames = params["azimuth_deg"].shape
    total = n * frames
    azimuth = params["azimuth_deg"].reshape(-1)
    elevation = params["elevation_deg"][:, None].expand(n, frames).reshape(-1)
    lifts = params["lift"].reshape(-1)
    shapes = params["shape"][:, None].expand(n, frames).reshape(-1)
    colours = params["colour"][:, None].expand(n, frames).reshape(-1)
    out = torch.empty(total, 3, resolution, resolution, dtype=torch.uint8)
    for start in range(0, total, chunk):
        part = slice(start, min(start + chunk, total))
        size = part.stop - part.start
        cameras = LiftedCameras(
            azimuth[part].to(device),
            elevation[part].to(device),
            torch.full((size,), DEFAULT_DISTANCE, device=device),
            torch.full((size,), DEFAULT_FOV_DEG, device=device),
            lift=lifts[part].to(device),
        )
        images = render(shapes[part], colours[part], cameras, resolution=resolution)
        out[part] = (images * 255).round().to(torch.uint8).cpu()
    return out.reshape(n, frames, 3, resolution, resolution)


def clip_captions(params: dict[str, Tensor]) -> list[str]:
    keys = ("shape", "colour", "view", "motion")
    return [
        clip_caption(SHAPES[s], COLOUR_NAMES[c], VIEWS[v], MOTIONS[m])
        for s, c, v, m in zip(*(params[k].tolist() for k in keys))
    ]


def render_clips(num: int, seed: int = 0, config: ClipConfig | None = None) -> dict:
    """Clips 0..num-1 of `seed`: "frames" `[N, F, 3, H, W]` float in [0, 1] (8-bit quantized), every ground-truth
    parameter of `sample_clip_parameters`, and "caption" (N strings)."""
    config = config or ClipConfig()
    params = sample_clip_parameters(num, seed, config)
    frames = render_clip_parameters(params, config.resolution).float() / 255.0
    return {"frames": frames, **params, "caption": clip_captions(params)}


def frame_views(params: dict[str, Tensor]) -> list[list[str]]:
    """The view word of every frame (`view_word` of its camera), for checking captions against frames."""
    n, frames = params["azimuth_deg"].shape
    words = view_word(
        params["azimuth_deg"].reshape(-1), params["elevation_deg"][:, None].expand(n, frames).reshape(-1)
    )
    return [words[i * frames : (i + 1) * frames] for i in range(n)]


class ClipDataset(torch.utils.data.Dataset):
    """`num_clips` rendered clips (rendered once, kept as uint8): item = {"pixel_values" `[F, 3, H, W]` in [-1, 1],
    "caption", "shape", "colour", "view", "motion"}."""

    def __init__(
        self, num_clips: int, seed: int = 0, config: ClipConfig | None = None, device: str | torch.device = "cpu"
    ):
        if num_clips < 1:
            raise ValueError(f"num_clips must be at least 1, got {num_clips}")
        self.config = config or ClipConfig()
        self.params = sample_clip_parameters(num_clips, seed, self.config)
        self.captions = clip_captions(self.params)
        self.frames = render_clip_parameters(self.params, self.config.resolution, device)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict:
        item = {k: int(self.params[k][index]) for k in ("shape", "colour", "view", "motion")}
        return {"pixel_values": self.frames[index].float() / 127.5 - 1.0, "caption": self.captions[index], **item}
