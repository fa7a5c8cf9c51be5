"""Typed configs of a text-to-3D run (nerfstudio style: one dataclass per component, a docstring per field), their
JSON round trip, and the per-method defaults."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sdtoolkit.core.config import AT_LEAST_1, FRACTION, NON_NEGATIVE, POSITIVE, SEED, Bound, OneOf, Range
from sdtoolkit.nerf import NeRFConfig
from sdtoolkit.nerf.fields import VISUAL_HULL
from sdtoolkit.text_to_3d.guidance import (
    CSDConfig,
    ISMConfig,
    SDSConfig,
    SemanticSDSConfig,
    TimestepScheduleConfig,
    VSDConfig,
)

METHODS = {"sds": SDSConfig, "csd": CSDConfig, "vsd": VSDConfig, "ism": ISMConfig, "semantic-sds": SemanticSDSConfig}
"""CLI method name -> guidance config class (the guidance registry holds the same names)."""


@dataclass
class MeshRefineConfig:
    """The mesh stage (off unless `steps` > 0). The regulariser weights are large because the SDS surrogate loss is
    (its value ~200 on builtin:shapes at 64 px; threestudio's magic3d-refine weighs normal consistency 10^4); the
    learning rate and weights are the best of four settings tried on one builtin:shapes asset ('a red cube', seed 0,
    60 steps), where the stage's gain was small; on a good NeRF mesh ('a blue sphere', seed 0) every setting tried made
    the mesh worse (SDS noise roughens the vertices, colours drift): the stage stays off by default."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "steps": NON_NEGATIVE,
        "max_step_percent": FRACTION,
        "lr_vertices": POSITIVE,
        "lr_colours": POSITIVE,
        "sigma": POSITIVE,
        "gamma": POSITIVE,
        "supersample": AT_LEAST_1,
        "lambda_laplacian": NON_NEGATIVE,
        "lambda_normal": NON_NEGATIVE,
        "lambda_edge": NON_NEGATIVE,
    }

    steps: int = 0
    """Optimisation steps of the mesh stage after extraction (0: off, the NeRF's mesh is exported as extracted)."""
    max_step_percent: float | None = 0.5
    """The guidance's diffusion times during the stage: t ~ U[the run's min_step_percent, this] (threestudio's
    magic3d-refine: 0.02 to 0.5, a refinement needs no large-t noise). None: the run's own time schedule, restarted
    over the stage's steps."""
    lr_vertices: float = 3e-3
    """Adam learning rate of the vertex offsets, in world units (the shapes are about one unit across)."""
    lr_colours: float = 0.02
    """Adam learning rate of the vertex colours' logits (colour = sigmoid(logit))."""
    sigma: float = 0.5
    """Sharpness of the soft rasteriser's coverage D = sigmoid(delta d^2 / sigma), d in pixels (SoftRas Eq. 1)."""
    gamma: float = 0.01
    """Temperature of the depth softmax over the faces at a pixel (SoftRas Eq. 6); smaller is a harder z-test."""
    supersample: int = 1
    """Rendered at `supersample` x the prior's resolution, then average-pooled."""
    lambda_laplacian: float = 1000.0
    """Weight of the uniform Laplacian smoothness (`laplacian_loss`)."""
    lambda_normal: float = 1000.0
    """Weight of the normal consistency of adjacent faces (`normal_consistency_loss`; Magic3D's mesh stage has one)."""
    lambda_edge: float = 1000.0
    """Weight of the edge-length term (`edge_length_loss`), which keeps triangles from collapsing or stretching."""


@dataclass
class CameraConfig:
    """Random training cameras (the shared model of `sdtoolkit.data.cameras`). Defaults match the builtin teacher's
    training renders (distance 2.8, fov 40, elevation -10..60 with some overhead views) with a little jitter."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "azimuth_range": Range(-360, 360),
        "elevation_range": Range(-90, 90),
        "overhead_prob": FRACTION,
        "overhead_range": Range(-90, 90),
        "distance_range": POSITIVE,
        "fov_range": Range(1, 179),
        "batch_size": AT_LEAST_1,
    }

    azimuth_range: tuple[float, float] = (-180.0, 180.0)
    """Azimuth range in degrees."""
    elevation_range: tuple[float, float] = (-10.0, 60.0)
    """Elevation range in degrees of ordinary views."""
    overhead_prob: float = 0.15
    """Probability of an overhead view, elevation drawn from `overhead_range` (the teacher saw 15 %)."""
    overhead_range: tuple[float, float] = (65.0, 85.0)
    """Elevation range of overhead views."""
    distance_range: tuple[float, float] = (2.7, 2.9)
    """Camera distance range (scaled by scene_bound for layouts)."""
    fov_range: tuple[float, float] = (38.0, 42.0)
    """Vertical field of view range in degrees."""
    batch_size: int = 1
    """Cameras (renders) per step."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name.endswith("_range") and self.__dict__[f.name][0] > self.__dict__[f.name][1]:
                low, high = self.__dict__[f.name]
                raise ValueError(f"{f.name} = [{low}, {high}]: need min <= max (values are drawn uniformly between)")


Schedule = tuple[float, float, float, float]
"""A weight that ramps over training: (start, start value, end value, end), start and end as fractions of the run's
steps (threestudio's `[start_step, start_value, end_value, end_step]`, in fractions so that it follows --steps)."""


def schedule_value(schedule: Schedule, progress: float) -> float:
    """The value of `schedule` at training progress in [0, 1]: the start value up to `start`, the end value from
    `end` on, linear in between (threestudio's `C(value, epoch, global_step)` for a 4-item list)."""
    start, start_value, end_value, end = schedule
    if end <= start:
        return end_value if progress >= end else start_value
    a = min(max((progress - start) / (end - start), 0.0), 1.0)
    return start_value + (end_value - start_value) * a


@dataclass
class RegularizerConfig:
    """Regularisers of the anchors (threestudio's DreamFusion system). Each `lambda_*` may be replaced by a
    `*_schedule` that ramps it over training (threestudio's `lambda_*: [start_step, start_value, end_value,
    end_step]`)."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "lambda_opacity": NON_NEGATIVE,
        "lambda_entropy": NON_NEGATIVE,
        "lambda_orient": NON_NEGATIVE,
        "lambda_normal_smooth": NON_NEGATIVE,
        "normal_smooth_eps": POSITIVE,
        "lambda_z_variance": NON_NEGATIVE,
        "lambda_eikonal": NON_NEGATIVE,
        "eikonal_points": AT_LEAST_1,
        "eikonal_step": POSITIVE,
        "opacity_schedule": NON_NEGATIVE,
        "entropy_schedule": NON_NEGATIVE,
        "orient_schedule": NON_NEGATIVE,
        "z_variance_schedule": NON_NEGATIVE,
    }
    SCHEDULED: ClassVar[tuple[str, ...]] = ("opacity", "entropy", "orient", "z_variance")
    """The regularisers that take a `*_schedule`."""

    lambda_opacity: float = 0.0
    """Sparsity: mean sqrt(opacity^2 + 0.01) (threestudio `lambda_sparsity`)."""
    lambda_entropy: float = 0.01
    """Opacity entropy -o log o - (1 - o) log(1 - o), pushes pixels to empty or solid (threestudio `lambda_opaque`
    is the same binary entropy)."""
    lambda_orient: float = 0.0
    """Orientation loss sum_i sg(w_i) max(0, n_i . d)^2 per pixel (DreamFusion, Appendix A.2; Ref-NeRF Eq. 10):
    normals n = -grad sigma / |grad sigma| that face away from the camera (along the ray direction d) are
    penalised, weighted by the rendering weights. Needs normals (a double backward, slow on a CPU)."""
    lambda_normal_smooth: float = 0.0
    """Normal smoothness: sum_i sg(w_i) |n(x_i) - n(x_i + delta_i)|^2 per pixel with delta_i ~ N(0,
    normal_smooth_eps^2 I), density-gradient normals of nearby points agree (threestudio's 3D normal smoothness of
    its implicit geometries). Needs normals at twice the points (two double backwards)."""
    normal_smooth_eps: float = 0.01
    """Standard deviation (world units) of the offset to the neighbouring point of the normal-smoothness loss (the
    finest hash level's cell is 2 / max_res = 0.02)."""
    lambda_z_variance: float = 0.0
    """Depth variance sum_i w_i (t_i - d)^2 of the rays whose opacity exceeds 0.5, averaged (threestudio's
    `lambda_z_variance`): the weight along a ray gathers at one depth, so the density forms a surface instead of a
    fog that only adds up to opaque (fog meshes into fragments at any one iso-level)."""
    lambda_eikonal: float = 0.0
    """Eikonal term mean (|grad d| - 1)^2 of an 'sdf' field (`nerf.field.geometry`; IGR / VolSDF / NeuS), at
    `eikonal_points` uniform points and as many of the render's samples, gradients by central differences."""
    eikonal_points: int = 1024
    """Uniform points of the eikonal term per step (plus up to as many of the render's samples)."""
    eikonal_step: float = 0.01
    """Central-difference step h of the eikonal term's gradient (world units; the finest hash cell is 0.02)."""
    opacity_schedule: Schedule | None = None
    """(start, start value, end value, end) ramp of `lambda_opacity`, start and end as fractions of the steps
    (threestudio's [start_step, start_value, end_value, end_step]); None: the constant `lambda_opacity`."""
    entropy_schedule: Schedule | None = None
    """(start, start value, end value, end) ramp of `lambda_entropy`; None: the constant `lambda_entropy`."""
    orient_schedule: Schedule | None = None
    """(start, start value, end value, end) ramp of `lambda_orient` (DreamFusion-style configs ramp it up);
    None: the constant `lambda_orient`."""
    z_variance_schedule: Schedule | None = None
    """(start, start value, end value, end) ramp of `lambda_z_variance`; None: the constant `lambda_z_variance`."""

    def __post_init__(self) -> None:
        for name in self.SCHEDULED:
            schedule = getattr(self, f"{name}_schedule")
            if schedule is not None and not 0 <= schedule[0] <= schedule[3] <= 1:
                raise ValueError(
                    f"{name}_schedule = {list(schedule)}: need 0 <= start <= end <= 1 (fractions of the steps) in "
                    "(start, start value, end value, end)"
                )

    def weight(self, name: str, progress: float) -> float:
        """The weight of regulariser `name` ('opacity', 'entropy', 'orient', 'z_variance', 'normal_smooth') at
        training progress in [0, 1]: its schedule's value when it has one, else its constant `lambda_<name>`."""
        schedule = getattr(self, f"{name}_schedule", None)
        return getattr(self, f"lambda_{name}") if schedule is None else schedule_value(schedule, progress)

    def needs_normals(self, progress: float) -> bool:
        """Whether the render at this progress must compute density-gradient normals (a regulariser using them is
        on)."""
        return self.weight("orient", progress) > 0 or self.lambda_normal_smooth > 0


VERTEX_COLOURS = ("field", "delit")
"""What the exported mesh's vertex colours are (`TextTo3DConfig.vertex_colours`)."""


def check_field_options(config) -> None:
    """The checks text-to-3D and image-to-3D share on a config with `vertex_colours`, `start_levels`, `nerf` and
    `regularizers`: a known vertex-colour mode and no 'delit' on a field whose colour is already an albedo, the
    eikonal term only on a signed distance, coarse-to-fine levels only on a hash grid."""
    if config.vertex_colours not in VERTEX_COLOURS:
        raise ValueError(
            f"unknown vertex_colours {config.vertex_colours!r}; choose one of {', '.join(VERTEX_COLOURS)}"
        )
    if config.vertex_colours == "delit" and config.nerf.shading == "lambert":
        raise ValueError(
            "vertex_colours 'delit' divides out a light that a field with nerf.shading 'lambert' does not bake in "
            "(its colour is already an albedo); use vertex_colours 'field'"
        )
    if config.regularizers.lambda_eikonal and config.nerf.field.geometry != "sdf":
        raise ValueError(
            f"regularizers.lambda_eikonal = {config.regularizers.lambda_eikonal} needs nerf.field.geometry 'sdf' "
            f"(a signed distance), not {config.nerf.field.geometry!r}"
        )
    if config.start_levels is not None and config.nerf.representation != "hash":
        raise ValueError(
            f"start_levels (coarse-to-fine hash-grid levels) applies to the 'hash' representation, not "
            f"{config.nerf.representation!r}"
        )


ISO_MODES = ("solid", "opacity")
"""How the exported mesh's automatic iso-level is chosen (`TextTo3DConfig.iso_mode`)."""


@dataclass
class TextTo3DConfig:
    """One text-to-3D run."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "method": OneOf(*METHODS),
        "seed": SEED,
        "steps": AT_LEAST_1,
        "lr_encoding": POSITIVE,
        "lr_network": POSITIVE,
        "resolution": Range(8),
        "start_resolution": Range(8),
        "resolution_warmup": FRACTION,
        "background": FRACTION,
        "preview_every": NON_NEGATIVE,
        "checkpoint_every": NON_NEGATIVE,
        "threads": AT_LEAST_1,
        "max_nonfinite_steps": NON_NEGATIVE,
        "max_empty_steps": NON_NEGATIVE,
        "iso_level": POSITIVE,
        "iso_mode": OneOf(*ISO_MODES),
        "start_levels": AT_LEAST_1,
        "levels_warmup": FRACTION,
        "min_component_share": FRACTION,
        "sdf_beta_start": POSITIVE,
        "vertex_colours": OneOf(*VERTEX_COLOURS),
        "sdf_beta_warmup": FRACTION,
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
        "iso_mode",
        "min_component_share",
        "vertex_colours",
        *(f"mesh_refine.{f.name}" for f in dataclasses.fields(MeshRefineConfig)),
    )
    """Fields a resumed run may change (`text-to-3d --resume` refuses the others): how long it runs, how often it
    previews and checkpoints, where it computes, and the mesh stage after it (so a finished run's mesh can be refined
    without training again)."""

    prompt: str = ""
    """The text prompt (for semantic-sds: the optional scene description; objects come from the layout)."""
    method: str = "sds"
    """Guidance: 'sds', 'csd', 'vsd', 'ism' (LucidDreamer's Interval Score Matching) or 'semantic-sds'."""
    prior: str = "builtin:shapes"
    """The 2D prior: `builtin:shapes`, a diffusers folder, or a Hub id (SD 1.x/2.x)."""
    layout: dict | None = None
    """SemanticSDS layout (see `sdtoolkit.text_to_3d.guidance.semantic`), as parsed JSON."""
    seed: int = 0
    """Seed of every random draw (cameras, noise, times, jitter); a resumed run continues the same stream."""
    steps: int = 400
    """Optimisation steps (DreamFusion: 15k on TPUs; 400 fit the 10-minute budget of a 2-core CPU)."""
    lr_encoding: float = 0.03
    """Adam learning rate of the hash tables (threestudio: 0.01 over 10k steps; 3x for a few-hundred-step budget)."""
    lr_network: float = 0.01
    """Adam learning rate of the MLP (threestudio: 0.001 over 10k steps; 10x for a few-hundred-step budget)."""
    resolution: int | None = None
    """Render resolution fed to the prior (None: the prior's native image size, 64 for builtin:shapes)."""
    start_resolution: int | None = 32
    """Render resolution during the first `resolution_warmup` fraction of training, upsampled to `resolution`
    (None: no warm-up; threestudio's resolution milestones do the same, coarse first)."""
    resolution_warmup: float = 0.5
    """Fraction of the steps rendered at `start_resolution`."""
    start_levels: int | None = None
    """Coarse-to-fine hash grid (Neuralangelo's progressive levels, threestudio's `ProgressiveBandHashGrid`): only the
    `start_levels` coarsest levels are on at the start (the finer levels' features are zero) and one more is switched
    on at even intervals until all are on at the `levels_warmup` fraction of the steps. None: all levels from the
    start. Applies to the 'hash' representation."""
    levels_warmup: float = 0.5
    """Fraction of the steps after which every hash-grid level is on (with `start_levels`)."""
    sdf_beta_start: float | None = None
    """Coarse-to-fine surface of an 'sdf' field (`nerf.field.geometry`): VolSDF's beta starts here and decays
    geometrically to `nerf.field.sdf_beta` over the `sdf_beta_warmup` fraction of the steps (a wide transition lets
    the guidance move the surface from far, a narrow one sharpens it). None: `nerf.field.sdf_beta` throughout."""
    sdf_beta_warmup: float = 0.5
    """Fraction of the steps over which beta decays from `sdf_beta_start` (with `sdf_beta_start`)."""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Background colour (the builtin teacher's renders are on white)."""
    iso_level: float | None = None
    """Density level of the exported mesh's surface. None: chosen from the field (`iso_mode`), one level per box for a
    layout so that no object is lost under a denser neighbour's level."""
    iso_mode: str = "solid"
    """How the automatic iso-level is chosen: 'solid' (half the typical density of the visibly solid cells,
    `auto_iso_threshold`) or 'opacity' (the median density where the rendered opacity along each ray reaches 1/2,
    `opacity_iso_level`: a foggy field is meshed at its visible boundary). Single-object prompts only; a layout's
    boxes keep 'solid'."""
    min_component_share: float | None = None
    """Floater removal at extraction: connected pieces of the mesh whose surface area is below this share of the
    whole are dropped (the largest piece is always kept; a layout's boxes each keep their own largest piece). None:
    every piece is kept."""
    vertex_colours: str = "field"
    """The exported mesh's vertex colours: 'field' (the field's colour at each vertex, as rendered) or 'delit' (that
    colour divided by the shapes world's Lambert shading on the vertex normal, `delight_colours`: an albedo, for a
    field rendered with shading 'albedo', which bakes the world's light into its colour; refused with 'lambert')."""
    view_dependent_prompts: bool = True
    """Append DreamFusion's view suffix (", front view", ...) to the prompt per camera."""
    nerf: NeRFConfig = field(default_factory=NeRFConfig)
    """The radiance field and its sampling."""
    guidance: Any = None
    """The method's guidance config (`SDSConfig`, `VSDConfig`, ...); None means the method's defaults."""
    cameras: CameraConfig = field(default_factory=CameraConfig)
    """Training cameras."""
    regularizers: RegularizerConfig = field(default_factory=RegularizerConfig)
    """Regularisers."""
    mesh_refine: MeshRefineConfig = field(default_factory=MeshRefineConfig)
    """The mesh stage after extraction (`sdtoolkit.text_to_3d.mesh_refine`; off while its steps are 0)."""
    preview_every: int = 200
    """Save an 8-view turntable preview every this many steps (0 = off)."""
    checkpoint_every: int = 200
    """Save a resumable checkpoint every this many steps (0 = only at the end)."""
    threads: int | None = 1
    """torch CPU threads (None: torch's default). One by default: the field's small gathers barely scale with
    threads, and on a busy machine extra OpenMP threads spin-wait (measured: a 2-thread run used over 7x the CPU time
    of a 1-thread run for the same steps; benchmarks/RESULTS.md)."""
    device: str = "cpu"
    """torch device of the prior and the NeRF (random draws stay on the CPU generator, so a seed means the same
    draws on every device)."""
    overwrite: bool = False
    """Start anew in an output folder that holds a previous asset (its files written by sdtoolkit are deleted first)
    or other files (kept: sdtoolkit deletes only what it wrote; a file named like one the run writes refuses the
    folder). Without it such a folder is refused (`--resume` continues a run)."""
    max_nonfinite_steps: int = 3
    """Non-finite guard: a step whose loss or guidance gradient is NaN/inf is skipped (no NeRF or Adam update);
    after this many consecutive skipped steps the run stops (exit status 1, no mesh export, the last good
    checkpoint kept). 0 turns the guard off."""
    max_empty_steps: int = 50
    """Empty-field guard: after this many consecutive steps whose render is empty (mean opacity below 1e-3: the
    field vanished, e.g. a signed distance whose zero level left the scene) the run stops (exit status 1, the last
    checkpoint kept) instead of training on to an export that finds no surface. 0 turns it off."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        check_field_options(self)
        if self.nerf.field.sdf_init == VISUAL_HULL:
            raise ValueError(
                f"nerf.field.sdf_init {VISUAL_HULL!r} is the reference masks' hull: it needs reference views "
                "(sdtoolkit image-to-3d); text-to-3D starts from 'sphere' or a mesh file"
            )
        if self.iso_mode not in ISO_MODES:
            raise ValueError(f"unknown iso_mode {self.iso_mode!r}; choose one of {', '.join(ISO_MODES)}")
        if self.mesh_refine.steps and self.method == "semantic-sds":
            raise ValueError("mesh_refine.steps > 0 (the mesh stage) does not support method 'semantic-sds' yet")
        if self.guidance is None:
            self.guidance = default_guidance(self.method, self.prior)
        if self.sdf_beta_start is not None and self.nerf.field.geometry != "sdf":
            raise ValueError(
                f"sdf_beta_start = {self.sdf_beta_start} needs nerf.field.geometry 'sdf', not "
                f"{self.nerf.field.geometry!r}"
            )


def default_guidance(method: str, prior: str) -> Any:
    """The method's guidance config, with the CFG scale tuned for the builtin teacher when it is the prior."""
    config = METHODS[method]()
    if prior.startswith("builtin:") and method in ("sds", "semantic-sds", "ism"):
        # the small builtin teacher saturates far below SD's 100 (diffusers convention), and a CPU budget of a few
        # hundred steps wants HiFA's coarse-to-fine sqrt time schedule; see benchmarks/RESULTS.md
        config.guidance_scale = 20.0
        config.timesteps.anneal = "sqrt"
    if prior.startswith("builtin:") and method == "ism":
        # ISM with SDS's builtin tuning and w(t) = sigma_t^2: LucidDreamer's own CFG 7.5, uniform t and
        # w = sigma_t / alpha_t lost the blue sphere (mesh IoU 0.10, 0/8 views) where these kept it (0.87, 6/8)
        config.weighting = "sds"
    return config


# ------------------------------------------------------------------------------------------------- JSON round trip


def to_dict(config: Any) -> Any:
    """A JSON-ready dict of a (nested) dataclass config, with the guidance's class name recorded."""
    if dataclasses.is_dataclass(config):
        out = {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
        if isinstance(config, TextTo3DConfig):
            out["guidance_type"] = type(config.guidance).__name__
        return out
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    return config


def _build(cls: type, data: dict) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        kwargs[f.name] = _coerce(hint, value)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(options[0], value) if len(options) == 1 else value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value)
    if origin is tuple:
        return tuple(value)
    return value


def from_dict(data: dict) -> TextTo3DConfig:
    """Inverse of `to_dict` for a `TextTo3DConfig`."""
    data = dict(data)
    guidance_type = data.pop("guidance_type", None)
    guidance = data.pop("guidance", None)
    config = _build(TextTo3DConfig, data)
    if guidance is not None:
        classes = {c.__name__: c for c in (*METHODS.values(), TimestepScheduleConfig)}
        config.guidance = _build(classes.get(guidance_type, METHODS[config.method]), guidance)
    return config


def save_config(config: TextTo3DConfig, path, extra: dict | None = None) -> None:
    """config.json: the config's fields, plus `extra` keys (the CLI's export settings under "command")."""
    with open(path, "w") as f:
        json.dump({**to_dict(config), **(extra or {})}, f, indent=2)


def load_config(path) -> TextTo3DConfig:
    with open(path) as f:
        return from_dict(json.load(f))
