"""Progressive Volume Distillation (Fang et al., AAAI 2023, "One is All: Bridging the Gap Between Neural Radiance
Fields Architectures with Progressive Volume Distillation"): converts a trained radiance field into another
representation without images.

Every step draws random rays from random cameras around the object, runs the *teacher's* own sampler on them
(collider, stratified samples, its occupancy grid, nerfacc-style pruning: `NeRF.sample_along`) and queries teacher
and student at exactly those points: the samples the teacher renders with, plus a random share of the ones it
pruned (`empty_fraction`), so that the student also learns where the teacher is empty. The converted student
renders with the teacher's occupancy grid, as PVD's student inherits it (`inherit_occupancy`).

The losses come in three stages (PVD Sec. 3.2-3.3, the reference code's `stage_iters`): first the volume features
alone (the output of each model's front, `TextTo3DField.features`), then also the density and colour at the points,
then also the colour rendered along the rays. All are PVD's `normL2` (the reference's `torch.norm` of the whole
difference over the batch: `norm_l2`). The density is compared after clipping its pre-activation, log sigma, to
[-2, 7] (PVD's `sigma_clip_min/max`: the reference's density is exp-activated, so the clip is of log
sigma; ours is softplus-activated and we clip log softplus(.), the same quantity), so empty space far below and
solid interiors far above the visible range cost nothing.

Deviations, on purpose: the per-point density and colour losses weigh 100x the reference's 0.002 (measured on
sdtoolkit and nerfacto teachers: `PVDConfig.loss_density`). And the reference also renders with the clipped
density. Our teachers' renders (the reference of every PSNR) use the unclipped density, and a floor of sigma = e^-2
everywhere would fog our renders (2 units of empty space at e^-2 absorb 24 %), so stage 3 renders teacher and
student with their own unclipped densities.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from sdtoolkit.core.config import AT_LEAST_1, FRACTION, NON_NEGATIVE, POSITIVE, SEED, Bound, OneOf, Range
from sdtoolkit.data.cameras import Cameras, wrap_azimuth_deg
from sdtoolkit.nerf.colliders import RayBundle
from sdtoolkit.nerf.model import NeRF
from sdtoolkit.nerf.renderers import render_rgb, render_weights
from sdtoolkit.nerf.representations import REPRESENTATIONS, MLPConfig, TensoRFConfig, VoxelConfig


@dataclass
class PVDConfig:
    """One PVD conversion. Schedule, losses and weights default to the reference code's (`main_distill_mutual.py`:
    30k iterations, `stage_iters` {'stage1': 2000, 'stage2': 5000}, lr 1e-2, `normL2` losses), but for the weights of
    the per-point density and colour losses (see there)."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "to": OneOf(*REPRESENTATIONS.names()),
        "seed": SEED,
        "steps": AT_LEAST_1,
        "stage1_steps": NON_NEGATIVE,
        "stage2_steps": NON_NEGATIVE,
        "lr": POSITIVE,
        "lr_final_ratio": Range(0, 1, low_open=True),
        "rays_per_step": AT_LEAST_1,
        "cameras_per_step": AT_LEAST_1,
        "ray_resolution": Range(2),
        "loss_feature": NON_NEGATIVE,
        "feature_decay": FRACTION,
        "empty_fraction": FRACTION,
        "student_samples": OneOf("teacher", "own"),
        "student_occupancy_every": AT_LEAST_1,
        "teacher_cache": NON_NEGATIVE,
        "cache_refresh": NON_NEGATIVE,
        "occupancy_pruning": OneOf("auto", "cached", "exact"),
        "loss_density": NON_NEGATIVE,
        "loss_colour": NON_NEGATIVE,
        "loss_rgb": NON_NEGATIVE,
        "elevation_range": Range(-90, 90),
        "distance_range": POSITIVE,
        "fov": Range(1, 179),
        "checkpoint_every": NON_NEGATIVE,
        "threads": AT_LEAST_1,
        "max_nonfinite_steps": NON_NEGATIVE,
    }
    RESUMABLE: ClassVar[tuple[str, ...]] = (
        "steps", "checkpoint_every", "threads", "overwrite", "max_nonfinite_steps", "compile_teacher",
    )  # fmt: skip
    """Fields a resumed conversion may change (`convert-nerf --resume` refuses the others)."""

    to: str = "mlp"
    """Target representation: 'hash', 'mlp', 'tensorf' or 'voxel' (`sdtoolkit.nerf.representations`)."""
    seed: int = 0
    """Seed of the student's initialisation and of every random draw (cameras, rays, sample jitter)."""
    steps: int = 30000
    """Total optimisation steps (PVD: 30k)."""
    stage1_steps: int = 2000
    """Steps of stage 1, volume features only (PVD `stage_iters['stage1']`)."""
    stage2_steps: int = 5000
    """Step at which stage 2 (features, density, colour) ends and stage 3 adds the rendered colour (PVD
    `stage_iters['stage2']`, counted from step 0)."""
    lr: float = 1e-2
    """Adam learning rate of every student parameter (PVD: 1e-2)."""
    lr_final_ratio: float = 0.1
    """The learning rate decays exponentially to `lr_final_ratio` x `lr` at the last step, lr 0.1^(step / steps)
    (torch-ngp's `LambdaLR`, the trainer PVD's code is built on); 1: constant."""
    rays_per_step: int = 4096
    """Random rays per step (PVD: 4096)."""
    cameras_per_step: int = 8
    """Random cameras the rays of one step are drawn from."""
    ray_resolution: int = 64
    """Pixel grid of those cameras (the rays go through its pixel centres; the teacher's renders are 64 px)."""
    loss_feature: float = 0.002
    """Weight of the volume-feature loss (PVD `loss_rate_fea_sc`)."""
    feature_decay: float = 0.995
    """The feature weight is multiplied by this at every step from the first (the reference's
    `update_loss_rate(loss_rate_fea_sc, 0.995)` in every training step, stage 1 included)."""
    loss_density: float = 0.2
    """Weight of the clipped log-density loss from stage 2: 100x PVD's 0.002 (`loss_rate_sigma`), measured
    (benchmarks/RESULTS.md, teacher cache 100): from a text-to-3D asset (fifth round, 50 s of PVD) tensorf 51.7 dB
    against 48.0 with 0.002, mlp 43.9 against 41.8 (1.0: 43.9); from three nerfacto teachers (sixth round, 100 s)
    +1.8 to +4.1 dB on four of six conversions, the blue cube's two within 0.25 dB. 2.0 lowered the cube's
    tensorf (35.3 against 36.6 dB with 0.002 after 900 steps)."""
    loss_colour: float | None = None
    """Weight of the per-point colour loss from stage 2 (None: as `loss_density`)."""
    loss_rgb: float = 1.0
    """Weight of the rendered-colour loss in stage 3 (PVD: 1)."""
    density_clip: tuple[float, float] = (-2.0, 7.0)
    """[min, max] of log sigma before it is compared (PVD `sigma_clip_min/max`)."""
    empty_fraction: float = 0.1
    """Share of the teacher's pruned samples (those its occupancy grid and nerfacc pruning skip: empty space, or
    hidden behind a surface) at which the student is also queried, for the feature and density losses, so that it
    learns where the teacher is empty. The reference samples only occupied cells and renders the student with the
    teacher's grid (`inherit_occupancy`); without these points a student keeps its initial density wherever the
    teacher's grid is empty, which shows once it renders with a grid of its own. 0: kept samples only. For a
    teacher whose samples partition each ray (nerfacto's proposal sampler), the points are instead this share of
    its samples per ray drawn uniformly along the ray, with the density of the teacher's interval that holds each
    (`interval_points`)."""
    student_samples: str = "teacher"
    """Where stage 3 renders the student. 'teacher': composited at the teacher's kept samples, on the teacher's
    intervals (PVD). 'own': along the whole ray with the student's own sampler and occupancy grid (refreshed from
    its density every `occupancy_update_every` steps, as in text-to-3D), against the teacher's rendered colour, so
    that everything the student would render on the ray is supervised, not only the teacher's samples. A teacher
    whose samples partition its rays (nerfacto) gets 'own': composited at nerfacto's 32 samples per ray the student
    keeps density between them, which its own renders show (benchmarks/RESULTS.md, PVD and nerfstudio)."""
    student_occupancy_every: int = 64
    """With `student_samples='own'`: every this many steps the occupancy grid the student renders its own samples
    with is refreshed from its density (the student's `NeRFConfig.occupancy_update_every`; Instant-NGP and
    text-to-3D: 16). A refresh queries the student at every cell (64^3 points): at 16 about a quarter of an mlp
    student's step time. Measured from nerfacto teachers (benchmarks/RESULTS.md, PVD seventh round), 64 against 16,
    100 s: mlp students take 1.4-2x the steps and end 1.3 dB (red torus) and 0.8 dB (blue cube) higher; tensorf
    students, on the plateau of a fixed cache either way, end 0.6 and 0.35 dB lower."""
    teacher_cache: int = 0
    """0: fresh teacher points every step (PVD). N > 0: N batches of rays and teacher points are drawn once, before
    step 0 (with a generator seeded by `seed`, so a resumed run redraws the same ones), and step k uses batch k mod
    N. For a teacher whose queries dominate the step (a nerfacto teacher: its proposal sampler, then its field at
    every sample; about 90 % of the step on the CPU) this trades fresh rays for speed."""
    cache_refresh: int = 0
    """With `teacher_cache`: every this many steps, the cached batch the step is about to use is replaced by a
    freshly drawn one (refresh r from a generator seeded by `seed` and r, so a resumed run redraws the same), so the
    student keeps meeting new rays instead of overfitting N batches. 0: the cache never changes."""
    occupancy_pruning: str = "auto"
    """The student's `NeRFConfig.occupancy_pruning`, how its occupancy grid prunes samples when it renders (in
    stage 3 with `student_samples='own'`, in the evaluation and in the exported asset). 'auto': as it was trained.
    With `student_samples='teacher'` the student learns the teacher's values at the teacher's samples and renders
    with the teacher's grid, so it keeps the teacher's setting and renders at the samples it was taught (with
    'exact' instead, from a hash teacher: mlp 38.5 and tensorf 39.0 dB against 44.3 and 50.5). With 'own' it
    renders its own samples, and 'exact' (the grid skips empty cells, the field's own density prunes the rest)
    keeps its fit from collapsing: with 'cached', mlp and tensorf fits reached about 34 dB and fell to 17-28 dB
    (benchmarks/RESULTS.md, PVD and nerfstudio, third round)."""
    inherit_occupancy: bool = True
    """The converted student renders with the teacher's occupancy grid (PVD's `inherited_params`: the student
    marches the teacher's occupied cells); False: a grid rebuilt from the student's own density."""
    inherit_decoder: bool | None = None
    """Start the student's decoder as a copy of the teacher's (the features it decodes are fitted in stage 1). Off
    in PVD; here every representation is a front and one shared decoder, so the copy fits. None: on for a teacher
    whose features are comparable (an sdtoolkit teacher), off for a nerfstudio field (no such decoder; True is
    refused for it). Measured from a hash teacher (benchmarks/RESULTS.md, PVD fourth round): PVD reached the
    from-scratch fits' best in 45 / 10 / 10 / 10 s (mlp / tensorf / voxel / hash) with it, 55 / 25 / 25 / 20 s
    without."""
    elevation_range: tuple[float, float] = (-10.0, 85.0)
    """Elevation range in degrees of the random cameras (the teacher's training views and some overhead ones)."""
    distance_range: tuple[float, float] = (2.5, 3.0)
    """Distance range of the random cameras (the text-to-3D views are at 2.7-2.9)."""
    fov: float = 40.0
    """Vertical field of view in degrees of the random cameras."""
    mlp: MLPConfig = field(default_factory=MLPConfig)
    """The student's front when `to` is 'mlp'."""
    tensorf: TensoRFConfig = field(default_factory=TensoRFConfig)
    """The student's front when `to` is 'tensorf'."""
    voxel: VoxelConfig = field(default_factory=VoxelConfig)
    """The student's front when `to` is 'voxel'."""
    checkpoint_every: int = 1000
    """Save a resumable checkpoint every this many steps (0 = only at the end)."""
    compile_teacher: bool | None = None
    """torch.compile a nerfstudio teacher's hash-grid encodings (its field's and its proposal networks'): the same
    values, a nerfacto teacher's queries 4-6x faster on the CPU (benchmarks/RESULTS.md, PVD eighth round), after a
    one-time compilation of about 20 s (`sdtoolkit.nerfstudio_plugin.teacher.compile_hash_encodings`). None: on for
    a nerfstudio teacher where torch.compile can run (on the CPU it needs a C++ compiler), off otherwise; True:
    required (refused where it cannot run, and for an sdtoolkit teacher: nothing of it would be compiled). It changes
    no result, so a resumed conversion may switch it."""
    threads: int | None = 1
    """torch CPU threads (None: torch's default)."""
    overwrite: bool = False
    """Start anew in an output folder holding a previous conversion (its files written by sdtoolkit are deleted)."""
    max_nonfinite_steps: int = 3
    """Non-finite guard (as text-to-3d's): a step whose loss or gradient norm is NaN/inf is skipped (no student or
    Adam update); after this many consecutive skipped steps the conversion stops (exit status 1, nothing exported,
    the last good checkpoint kept). 0 turns the guard off."""

    def __post_init__(self) -> None:
        for name in ("elevation_range", "distance_range"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name} = [{low}, {high}]: the first value must not exceed the second")
        low, high = self.density_clip
        if low >= high:
            raise ValueError(f"density_clip = [{low}, {high}]: need min < max (log sigma is clipped to [min, max])")


def point_weights(config: PVDConfig) -> tuple[float, float]:
    """(density, colour) loss weights, the colour weight None resolved to the density weight."""
    density = config.loss_density
    return density, density if config.loss_colour is None else config.loss_colour


def stage_of(config: PVDConfig, step: int) -> int:
    """1, 2 or 3: the PVD stage of step `step` (0-based)."""
    if step < config.stage1_steps:
        return 1
    return 2 if step < config.stage2_steps else 3


def learning_rate(config: PVDConfig, step: int) -> float:
    """lr r^(step / steps) with r = `lr_final_ratio` (torch-ngp's exponential decay to 0.1 x lr)."""
    return config.lr * config.lr_final_ratio ** (step / config.steps)


def feature_weight(config: PVDConfig, step: int) -> float:
    """The feature loss weight at step `step`: `loss_feature` x `feature_decay`^step (the reference multiplies its
    `loss_rate_fea_sc` by 0.995 at every training step from the first, stage 1 included)."""
    return config.loss_feature * config.feature_decay**step


def norm_l2(student: Tensor, teacher: Tensor) -> Tensor:
    """PVD's `normL2` between student and teacher values (Fang et al. 2023, Sec. 3.3: every term of the objective is
    an L2 distance; the reference's `get_loss` with `loss_type='normL2'`, `torch.norm(pred - gt)`): the Euclidean
    norm of the whole difference, ||s - t||_2 = sqrt(sum_i ||s_i - t_i||^2) over every point (or ray) of the batch;
    not squared and not averaged, so its gradient (s - t) / ||s - t|| has unit norm at any size of the error."""
    difference = student - teacher
    return torch.linalg.vector_norm(difference) if difference.numel() else student.sum() * 0


def clip_log_density(log_sigma: Tensor, clip: tuple[float, float]) -> Tensor:
    """PVD's density clipping (Fang et al. 2023, Sec. 3.3; code `sigma_clip_min/max` = -2, 7): the pre-activation
    density, log sigma, clamped to [min, max] before it is compared or activated."""
    return log_sigma.clamp(clip[0], clip[1])


def random_rays(config: PVDConfig, generator: torch.Generator, device) -> RayBundle:
    """`rays_per_step` rays through random pixel centres of `cameras_per_step` random cameras looking at the origin
    (azimuth uniform over the circle, elevation and distance uniform in their ranges)."""
    n = config.cameras_per_step
    u = torch.rand(3, n, generator=generator)
    azimuth = wrap_azimuth_deg(u[0] * 360.0)
    elevation = config.elevation_range[0] + (config.elevation_range[1] - config.elevation_range[0]) * u[1]
    distance = config.distance_range[0] + (config.distance_range[1] - config.distance_range[0]) * u[2]
    cameras = Cameras(azimuth, elevation, distance, torch.full((n,), float(config.fov)))
    origins, directions = cameras.generate_rays(config.ray_resolution, config.ray_resolution)
    pick = torch.randint(origins[..., 0].numel(), (config.rays_per_step,), generator=generator)
    return RayBundle(origins.reshape(-1, 3)[pick].to(device), directions.reshape(-1, 3)[pick].to(device))


@dataclass
class TeacherPoints:
    """The teacher's samples on a batch of rays and its outputs there (everything the losses compare with)."""

    rays: RayBundle
    """The rays that hit the scene bound (after the teacher's collider)."""
    hit: Tensor
    """Their indices in the drawn batch."""
    samples: object
    """Their `RaySamples`."""
    keep: Tensor
    """`[R, S]` mask of the contributing samples (the teacher's pruning)."""
    positions: Float[Tensor, "P 3"]
    """World positions where the student is queried: the kept samples (the first `num_kept`), then a random share
    of the pruned ones (`PVDConfig.empty_fraction`)."""
    num_kept: int
    """How many of `positions` are kept samples (the ones the renderer composites)."""
    features: Tensor
    """Teacher volume features `[F, hidden_dim]` at the first F of `positions` (all of them, or the kept samples
    where the extra points come from `interval_points`)."""
    raw: Tensor
    """Teacher decoder outputs `[F, 1 + 3 + K]` at the same points."""
    density: Tensor
    """Teacher sigma `[P]` (unclipped, as it renders)."""
    log_density: Tensor
    """Teacher log sigma `[P]` (unclipped), the quantity PVD clips and compares."""


@torch.no_grad()
def teacher_points(
    teacher: NeRF, rays: RayBundle, generator: torch.Generator, empty_fraction: float = 0.0
) -> TeacherPoints:
    """Runs the teacher's collider and sampler (`NeRF.sample_along`, stratified) on `rays` and evaluates the teacher
    at the kept samples and at a random `empty_fraction` of the pruned ones."""
    rays = teacher.collider(rays)
    hit, sub, samples, densities, keep = teacher.sample_along(rays, generator, stratified=True)
    if samples is None:
        empty = torch.zeros(0, 3, device=rays.origins.device)
        return TeacherPoints(sub, hit, None, None, empty, 0, empty, empty, empty[:, 0], empty[:, 0])
    all_positions = samples.positions(sub)
    all_directions = sub.directions[:, None, :].expand_as(all_positions)
    positions, directions = all_positions[keep], all_directions[keep]
    num_kept = len(positions)
    if empty_fraction > 0 and getattr(teacher, "samples_partition_rays", False):
        count = max(1, round(empty_fraction * samples.starts.shape[1]))
        extra, extra_density = interval_points(samples, sub, densities, count, generator)
        features = _teacher_features(teacher, positions, directions)
        raw = teacher.field.decode(features)
        # the teacher as it renders: sigma constant over each of its intervals, zero outside them; only the density
        # is compared at these points (features and colour: at the kept samples)
        density = torch.cat([teacher.field.activate_density(raw, positions), extra_density])
        log_density = torch.cat([teacher.field.log_density(raw, positions), torch.log(extra_density.clamp_min(1e-30))])
        positions = torch.cat([positions, extra])
        return TeacherPoints(sub, hit, samples, keep, positions, num_kept, features, raw, density, log_density)
    if empty_fraction > 0:
        pruned = all_positions[~keep]
        chosen = torch.rand(len(pruned), generator=generator).to(pruned.device) < empty_fraction
        positions = torch.cat([positions, pruned[chosen]])
        directions = torch.cat([directions, all_directions[~keep][chosen]])
    features = _teacher_features(teacher, positions, directions)
    raw = teacher.field.decode(features)
    density = teacher.field.activate_density(raw, positions)
    log_density = teacher.field.log_density(raw, positions)
    return TeacherPoints(sub, hit, samples, keep, positions, num_kept, features, raw, density, log_density)


def _teacher_features(teacher: NeRF, positions: Tensor, directions: Tensor) -> Tensor:
    """The teacher's volume features at points of rays; a view-dependent field (a nerfstudio teacher's) gives its
    colour as seen along each point's ray (`features_along`), as its renders show it."""
    along = getattr(teacher.field, "features_along", None)
    return teacher.field.features(positions) if along is None else along(positions, directions)


def interval_points(
    samples, rays: RayBundle, densities: Tensor, count: int, generator: torch.Generator
) -> tuple[Float[Tensor, "N 3"], Float[Tensor, " N"]]:
    """`count` uniform random points on each ray between its near and far, and the density the teacher renders
    there: the density sigma_i of the sample interval [t_i, t_i+1) that holds the point (volume rendering takes
    sigma constant over each interval, Max 1995 / Mildenhall et al. 2020, Eq. 3), 0 outside every interval. For a
    teacher whose own samples partition the ray (a proposal sampler's), this is its volume exactly as its renders
    see it, everywhere on the ray, not only at its samples."""
    n = len(rays)
    u = torch.rand(n, count, generator=generator).to(rays.origins)
    t = rays.nears[:, None] + (rays.fars - rays.nears)[:, None] * u
    index = torch.searchsorted(samples.ends.contiguous(), t, right=True)  # first interval ending after t
    inside = index < samples.ends.shape[1]
    index = index.clamp_max(samples.ends.shape[1] - 1)
    inside &= samples.starts.gather(1, index) <= t
    sigma = torch.where(inside, densities.gather(1, index), torch.zeros_like(t))
    positions = rays.origins[:, None, :] + rays.directions[:, None, :] * t[..., None]
    return positions.reshape(-1, 3), sigma.reshape(-1)


def composite(points: TeacherPoints, density: Tensor, rgb: Tensor, background: Tensor) -> Tensor:
    """Colour of each ray from values at the kept samples (the others empty): C = sum_i w_i c_i + (1 - sum w) c_bg
    with w_i = T_i (1 - exp(-sigma_i delta_i)) (Mildenhall et al. 2020, Eq. 3), on the teacher's intervals; the
    values past `num_kept` (pruned samples) take no part, as in the teacher's own render."""
    kept = points.num_kept
    sigma = torch.zeros(points.keep.shape, dtype=density.dtype, device=density.device)
    sigma = sigma.masked_scatter(points.keep, density[:kept])
    colours = torch.zeros(*points.keep.shape, 3, dtype=rgb.dtype, device=rgb.device)
    colours = colours.masked_scatter(points.keep[..., None], rgb[:kept])
    return render_rgb(colours, render_weights(sigma, points.samples), background)


def pvd_losses(
    config: PVDConfig, step: int, student: NeRF, teacher: NeRF, points: TeacherPoints, background: Tensor
) -> dict[str, Tensor]:
    """The weighted losses of step `step` (PVD's objective, Fang et al. 2023, Sec. 3.3): feature (all stages, its
    weight decaying after stage 1), clipped log density and point colour (from stage 2), rendered colour (stage 3).
    The student runs only as far as the stage needs (stage 1 stops after its front)."""
    stage = stage_of(config, step)
    features = student.field.features(points.positions)
    losses = {}
    weight = feature_weight(config, step)
    if weight > 0 or stage == 1:
        losses["loss_feature"] = weight * norm_l2(features[: len(points.features)], points.features)
    if stage == 1:
        return losses
    raw = student.field.decode(features)
    student_log = clip_log_density(student.field.log_density(raw, points.positions), config.density_clip)
    teacher_log = clip_log_density(points.log_density, config.density_clip)
    density_weight, colour_weight = point_weights(config)
    losses["loss_density"] = density_weight * norm_l2(student_log[:, None], teacher_log[:, None])
    student_rgb = torch.sigmoid(raw[..., 1:4])
    kept = points.num_kept  # colour only where the teacher renders it (empty space has no meaningful colour)
    teacher_rgb = torch.sigmoid(points.raw[..., 1:4])
    losses["loss_colour"] = colour_weight * norm_l2(student_rgb[:kept], teacher_rgb[:kept])
    if stage == 3 and config.student_samples == "teacher":
        density = student.field.activate_density(raw, points.positions)
        student_colour = composite(points, density, student_rgb, background)
        with torch.no_grad():
            teacher_colour = composite(points, points.density, teacher_rgb, background)
        losses["loss_rgb"] = config.loss_rgb * norm_l2(student_colour, teacher_colour)
    return losses


@torch.no_grad()
def teacher_ray_colours(points: TeacherPoints, num_rays: int, background: Tensor) -> Float[Tensor, "R 3"]:
    """The teacher's rendered colour of every drawn ray (its composite at its kept samples; the background for a
    ray that misses the scene bound)."""
    colours = background.expand(num_rays, 3).clone()
    if points.samples is not None:
        rgb = torch.sigmoid(points.raw[: points.num_kept, 1:4])
        colours[points.hit] = composite(points, points.density, rgb, background.expand(len(points.hit), 3))
    return colours


def own_render_loss(
    config: PVDConfig,
    student: NeRF,
    rays: RayBundle,
    teacher_colours: Tensor,
    background: Tensor,
    generator: torch.Generator,
) -> Tensor:
    """Stage 3 with `student_samples='own'`: the student renders the rays as it will be rendered (its collider,
    sampler and occupancy grid, stratified), compared with the teacher's rendered colours by PVD's `normL2`."""
    rgb = student.render_rays(rays, background, generator)["rgb"]
    return config.loss_rgb * norm_l2(rgb, teacher_colours)


def student_pruning(config: PVDConfig, teacher: NeRF) -> str:
    """The student's occupancy pruning: `config.occupancy_pruning`, 'auto' resolved (see there)."""
    if config.occupancy_pruning != "auto":
        return config.occupancy_pruning
    return "exact" if config.student_samples == "own" else teacher.config.occupancy_pruning


def build_student(config: PVDConfig, teacher: NeRF) -> NeRF:
    """A fresh student of representation `config.to` with the teacher's field settings (bound, density blob,
    decoder width: the features must have the teacher's width), collider and sampling."""
    import copy

    nerf_config = copy.deepcopy(teacher.config)
    nerf_config.representation = config.to
    nerf_config.occupancy_pruning = student_pruning(config, teacher)
    if config.student_samples == "own":
        nerf_config.occupancy_update_every = config.student_occupancy_every
    nerf_config.mlp, nerf_config.tensorf, nerf_config.voxel = (
        copy.deepcopy(config.mlp),
        copy.deepcopy(config.tensorf),
        copy.deepcopy(config.voxel),
    )
    student = NeRF(nerf_config).to(teacher.device)
    if config.inherit_occupancy and student.occupancy is not None and teacher.occupancy is not None:
        student.occupancy.load_state_dict(teacher.occupancy.state_dict())
    if inherits_decoder(config, teacher):
        student.field.mlp[2:].load_state_dict(teacher.field.mlp[2:].state_dict())
    return student


def inherits_decoder(config: PVDConfig, teacher: NeRF) -> bool:
    """`config.inherit_decoder`, None resolved: whether the teacher has a decoder the student can copy."""
    if config.inherit_decoder is None:
        return bool(getattr(teacher.field, "comparable_features", True))
    return config.inherit_decoder
