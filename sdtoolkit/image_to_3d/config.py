"""The typed config of an image-to-3D run (one dataclass, a docstring per field, paper defaults) and its JSON round
trip. The NeRF, the novel-view cameras, the regularisers and the text prior's SDS are text-to-3D's own configs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import ClassVar

from sdtoolkit.core.config import AT_LEAST_1, FRACTION, NON_NEGATIVE, POSITIVE, SEED, Bound, OneOf, Range
from sdtoolkit.image_to_3d.symmetry import SYMMETRY_METHODS
from sdtoolkit.nerf import NeRFConfig
from sdtoolkit.text_to_3d.config import (
    VERTEX_COLOURS,
    CameraConfig,
    RegularizerConfig,
    _build,
    check_field_options,
    default_guidance,
    to_dict,
)
from sdtoolkit.text_to_3d.guidance import SDSConfig


def _text_guidance() -> SDSConfig:
    """SDS of the builtin prior as text-to-3D tunes it (CFG 20, HiFA's sqrt time schedule)."""
    return default_guidance("sds", "builtin:shapes")


def _novel_view_guidance() -> SDSConfig:
    """SDS of the novel-view prior: Zero123's CFG 3 (threestudio's zero123 guidance), and the text prior's sqrt time
    schedule, so that both priors see the same t."""
    config = SDSConfig(guidance_scale=3.0)
    config.timesteps.anneal = "sqrt"
    return config


@dataclass
class ImageTo3DConfig:
    """One image-to-3D run: reference views reconstructed by a NeRF, the unseen sides filled by score distillation
    from a text prior and/or a novel-view prior (Magic123, Qian et al. 2024; DreamCar, Du et al. 2024), optionally
    with DreamCar's mirror symmetry and pose refinement."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "seed": SEED,
        "steps": AT_LEAST_1,
        "lr_encoding": POSITIVE,
        "lr_network": POSITIVE,
        "lr_pose": POSITIVE,
        "reference_resolution": Range(8),
        "resolution": Range(8),
        "start_resolution": Range(8),
        "resolution_warmup": FRACTION,
        "start_levels": AT_LEAST_1,
        "levels_warmup": FRACTION,
        "reference_batch": AT_LEAST_1,
        "lambda_rgb": NON_NEGATIVE,
        "lambda_mask": NON_NEGATIVE,
        "lambda_text": NON_NEGATIVE,
        "lambda_novel_view": NON_NEGATIVE,
        "symmetry_plane_azimuth": Range(-180, 180),
        "symmetry_planes": Range(1, 8),
        "symmetry_method": OneOf(*SYMMETRY_METHODS),
        "background": FRACTION,
        "preview_every": NON_NEGATIVE,
        "checkpoint_every": NON_NEGATIVE,
        "threads": AT_LEAST_1,
        "max_nonfinite_steps": NON_NEGATIVE,
        "max_empty_steps": NON_NEGATIVE,
        "iso_level": POSITIVE,
        "min_component_share": FRACTION,
        "vertex_colours": OneOf(*VERTEX_COLOURS),
    }
    RESUMABLE: ClassVar[tuple[str, ...]] = (
        "steps",
        "preview_every",
        "checkpoint_every",
        "threads",
        "device",
        "overwrite",
        "max_nonfinite_steps",
        "max_empty_steps",
        "iso_level",
        "min_component_share",
        "vertex_colours",
    )
    """Fields a resumed run may change (as text-to-3D's): how long it runs, how often it previews and checkpoints,
    and where it computes."""
    images: tuple[str, ...] = ()
    """Reference images: RGBA cut-outs, or RGB with `masks` (see `sdtoolkit.image_to_3d.inputs`)."""
    masks: tuple[str, ...] = ()
    """Mask files, one per image in order (white = object); empty: the alpha channels or each view's "mask"."""
    cameras: str | None = None
    """Cameras file (JSON: azimuth, elevation, distance, fov per image; "approximate": true marks estimates). None:
    a single image is a front view (elevation 0, azimuth 0, distance 2.8, fov 40)."""
    prompt: str = ""
    """Text for the text prior's SDS on novel views (e.g. "a red cube"); empty: no text prior."""
    prior: str = "builtin:shapes"
    """The 2D text prior: `builtin:shapes`, a diffusers folder, or a Hub id (SD 1.x/2.x)."""
    seed: int = 0
    """Seed of every random draw; a resumed run continues the same stream."""
    steps: int = 400
    """Optimisation steps (Stable-Zero123's config: 600; Magic123's coarse stage: 10k on a GPU)."""
    lr_encoding: float = 0.03
    """Adam learning rate of the hash tables (text-to-3D's few-hundred-step value)."""
    lr_network: float = 0.01
    """Adam learning rate of the MLP (text-to-3D's few-hundred-step value)."""
    lr_pose: float = 1e-3
    """Adam learning rate of the pose corrections (radians and log-distance per step at most; DreamCar's pose MLP
    uses 1e-5 on its own parameterisation): far below the field's, so the poses move only where the field agrees."""
    reference_resolution: int = 64
    """Side of the reference renders and of the targets (images are area-downsampled to it; their side must be a
    multiple of it)."""
    resolution: int | None = None
    """Render side of the novel views fed to the prior (None: the prior's native size, 64 for builtin:shapes)."""
    start_levels: int | None = None
    """Coarse-to-fine hash grid (text-to-3D's; BARF, Lin et al. 2021, Sec. 3.3, for joint pose refinement: a field
    without its fine levels is smooth, so the reference losses pull the poses along a smooth landscape): only the
    `start_levels` coarsest levels are on at the start, one more at even intervals until all are on at the
    `levels_warmup` fraction of the steps. None: all levels from the start ('hash' representation only)."""
    levels_warmup: float = 0.5
    """Fraction of the steps after which every hash-grid level is on (with `start_levels`)."""
    start_resolution: int | None = 32
    """Render side of every view during the first `resolution_warmup` of training (coarse-to-fine, as text-to-3D and
    Stable-Zero123's 64 -> 256 progressive resolution); None: no warm-up."""
    resolution_warmup: float = 0.5
    """Fraction of the steps rendered at `start_resolution`."""
    reference_batch: int = 1
    """Reference views rendered per step (drawn among the references and their mirrors)."""
    lambda_rgb: float = 1000.0
    """Weight of the reference views' colour loss, mean (rgb - m x - (1 - m) bg)^2 (Magic123 / DreamCar: 1000)."""
    lambda_mask: float = 100.0
    """Weight of the reference views' mask loss, mean (opacity - m)^2 (Magic123 / DreamCar: 100)."""
    lambda_text: float = 0.1
    """Weight of the text prior's SDS on novel views (DreamCar `lambda_sd`: 0.1; Magic123 with SD: 0.025)."""
    guidance: SDSConfig = field(default_factory=_text_guidance)
    """The text prior's SDS (text-to-3D's defaults for the builtin prior)."""
    novel_view_prior: str = ""
    """A Zero123-style novel-view prior (DreamCar's class-specific prior) for SDS on novel views, conditioned on a
    random reference view and the relative camera: `builtin:shapes-novel-view` or a folder written by `sdtoolkit
    train-novel-view-prior`; empty: none."""
    lambda_novel_view: float = 1.0
    """Weight of the novel-view prior's SDS (our choice; Magic123 weighs its Zero123 term 40x its SD term)."""
    novel_view_guidance: SDSConfig = field(default_factory=_novel_view_guidance)
    """The novel-view prior's SDS (CFG in the diffusers convention; the unconditional input zeroes the reference
    latent and the relative camera, as Zero123 trains it)."""
    view_dependent_prompts: bool = True
    """Append DreamFusion's view suffix (", front view", ...) to the prompt per camera."""
    mirror_views: bool = False
    """DreamCar's mirror prior: add every reference view flipped horizontally, with its camera reflected across the
    symmetry plane (for objects symmetric about that plane); with `symmetry_planes` n > 1, one moved copy per
    symmetry of the n planes' group (flipped for a reflection, as is for a rotation)."""
    symmetric_density: bool = False
    """Make the field symmetric about the plane(s) by construction (query the encoding at p and its images under
    the symmetries, 2 n points: n times the cost of one plane's)."""
    symmetry_plane_azimuth: float = 0.0
    """Azimuth phi (degrees) of the vertical symmetry plane through the centre; 0: the xz-plane (left/right of an
    object facing the front camera)."""
    symmetry_planes: int = 1
    """Number n of vertical symmetry planes, 180/n degrees apart from `symmetry_plane_azimuth` (the dihedral group
    D_n, used by `mirror_views` and `symmetric_density`): 1 is DreamCar's single plane (a car); 2 adds the
    perpendicular plane (front/back too: one front view then also fixes the unseen back); 4 a square prism's."""
    symmetry_method: str = "average"
    """How `symmetric_density` is built: 'average' (the encoding averaged over the 2 n images of p: smooth, 2 n
    queries) or 'fold' (the encoding of p's image in one wedge between planes: one query, a crease where a surface
    crosses a plane obliquely)."""
    refine_poses: bool | None = None
    """Learn a correction of each reference camera (azimuth, elevation, log distance) at `lr_pose`. None: on when the
    cameras file marks the poses approximate."""
    anchor_first_view: bool = True
    """Keep the first reference camera fixed while refining (fixes the global rotation the views cannot observe)."""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Background colour of renders and targets (the builtin prior's renders are on white)."""
    iso_level: float | None = None
    """Density level of the exported mesh's surface (None: chosen from the field, as text-to-3D)."""
    min_component_share: float | None = None
    """Floater removal at extraction (text-to-3D's): pieces of the mesh whose surface area is below this share of the
    whole are dropped, the largest always kept. None: every piece is kept."""
    vertex_colours: str = "field"
    """The exported mesh's vertex colours (text-to-3D's): 'field' (the field's colour, as rendered) or 'delit' (that
    colour divided by the shapes world's Lambert shading on the vertex normal: an albedo when the references were
    lit by that world's light, as its rendered references are)."""
    nerf: NeRFConfig = field(default_factory=NeRFConfig)
    """The radiance field and its sampling (text-to-3D's)."""
    novel_cameras: CameraConfig = field(default_factory=CameraConfig)
    """Random novel views for the prior (text-to-3D's training cameras)."""
    regularizers: RegularizerConfig = field(default_factory=RegularizerConfig)
    """Regularisers on the novel views (text-to-3D's)."""
    preview_every: int = 200
    """Save an 8-view turntable preview every this many steps (0 = off)."""
    checkpoint_every: int = 200
    """Save a resumable checkpoint every this many steps (0 = only at the end)."""
    threads: int | None = 1
    """torch CPU threads (None: torch's default; one is fastest on a busy CPU, see text-to-3D)."""
    device: str = "cpu"
    """torch device of the prior and the NeRF (random draws stay on the CPU generator)."""
    overwrite: bool = False
    """Start anew in an output folder that holds a previous asset (only the files sdtoolkit wrote are deleted)."""
    max_nonfinite_steps: int = 3
    """Non-finite guard: skip a step whose loss or gradient is NaN/inf; stop after this many in a row (0: off)."""
    max_empty_steps: int = 50
    """Empty-field guard: stop after this many steps in a row whose render is empty (mean opacity below 1e-3: the
    field vanished; 0: off)."""

    def __post_init__(self) -> None:
        check_field_options(self)
        if self.symmetry_method != "average" and not self.symmetric_density:
            raise ValueError(f"symmetry_method = {self.symmetry_method!r} needs symmetric_density")
        if self.symmetry_planes != 1 and not (self.symmetric_density or self.mirror_views):
            raise ValueError(f"symmetry_planes = {self.symmetry_planes} needs symmetric_density or mirror_views")

    @property
    def uses_text_prior(self) -> bool:
        return bool(self.prompt) and self.lambda_text > 0

    @property
    def uses_novel_view_prior(self) -> bool:
        return bool(self.novel_view_prior) and self.lambda_novel_view > 0


def from_dict(data: dict) -> ImageTo3DConfig:
    """Inverse of `to_dict` (text-to-3D's, which serialises any nested dataclass config)."""
    return _build(ImageTo3DConfig, dict(data))


def save_config(config: ImageTo3DConfig, path) -> None:
    with open(path, "w") as f:
        json.dump(to_dict(config), f, indent=2)


def load_config(path) -> ImageTo3DConfig:
    with open(path) as f:
        return from_dict(json.load(f))
