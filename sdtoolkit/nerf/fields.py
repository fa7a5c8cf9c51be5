"""The radiance field optimised by text-to-3D: a hash-grid encoding and a small MLP giving density, albedo colour and
(for SemanticSDS) per-region semantic logits at every point (nerfstudio's `Field`: `get_density` / `get_outputs`).

Two geometries (`FieldConfig.geometry`):
- 'density': threestudio's Magic3D blob initialisation (Lin et al. 2023): sigma = softplus(raw + b(x)) with
  b(x) = blob_density (1 - |x| / blob_radius), so optimisation starts from a soft ball at the origin instead of
  empty space.
- 'sdf': the network predicts a signed distance d(x) = raw + |x| - sdf_radius (a sphere at the start, threestudio's
  implicit-sdf `shape_init: sphere`; or the distance to a given mesh, `sdf_init`) and the density is VolSDF's
  sigma = (1 / beta) Psi_beta(-d) (Yariv et al. 2021, Eq. 2-3; `volsdf_density`): matter is solid inside the zero
  level set and empty outside, with a transition beta wide, so the field cannot settle into a fog that is opaque
  only in sum, and the mesh is the zero level set.
Colour is view-independent albedo through a sigmoid (DreamFusion's "albedo" shading mode).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from sdtoolkit.core.config import AT_LEAST_1, NON_NEGATIVE, POSITIVE, Bound, OneOf, Range
from sdtoolkit.nerf.encodings import HashEncoding

GEOMETRIES = ("density", "sdf")
"""What the field's first output is (`FieldConfig.geometry`)."""

VISUAL_HULL = "visual-hull"
"""`FieldConfig.sdf_init` value: start from the reference masks' visual hull (image-to-3D)."""

_RESTORING = contextvars.ContextVar("sdtoolkit_restoring_checkpoint", default=False)


@contextlib.contextmanager
def restoring_checkpoint(active: bool = True) -> Iterator[None]:
    """Configs and fields built inside are about to be filled by a checkpoint (a resumed run, a finished asset loaded
    as a PVD teacher): a mesh `sdf_init` is neither read nor required to exist any more. It shaped step 0 only, and
    the checkpoint carries its tabulated distance (the `sdf_grid` buffer), so moving or deleting the mesh after the
    run started loses nothing. The field's grid is a zero placeholder until the checkpoint's replaces it."""
    token = _RESTORING.set(bool(active) or _RESTORING.get())
    try:
        yield
    finally:
        _RESTORING.reset(token)


def laplace_cdf(s: Tensor, beta: float) -> Tensor:
    """Psi_beta(s), the CDF of the zero-mean Laplace distribution of scale beta (VolSDF, Eq. 3):
    1/2 exp(s / beta) for s <= 0, 1 - 1/2 exp(-s / beta) for s > 0 (written with |s| so neither branch overflows)."""
    half = 0.5 * torch.exp(-s.abs() / beta)
    return torch.where(s <= 0, half, 1 - half)


def volsdf_density(sdf: Tensor, beta: float) -> Tensor:
    """sigma(x) = alpha Psi_beta(-d(x)) with alpha = 1 / beta (VolSDF, Yariv et al. 2021, Eq. 2): 1 / beta deep
    inside (d < 0), 1 / (2 beta) on the surface d = 0, decaying as exp(-d / beta) / (2 beta) outside."""
    return laplace_cdf(-sdf, beta) / beta


@dataclass
class FieldConfig:
    """Hyper-parameters of `TextTo3DField`."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "bound": POSITIVE,
        "num_levels": AT_LEAST_1,
        "features_per_level": AT_LEAST_1,
        "log2_hashmap_size": Range(4, 30),
        "min_res": AT_LEAST_1,
        "max_res": AT_LEAST_1,
        "hidden_dim": AT_LEAST_1,
        "blob_density": NON_NEGATIVE,
        "blob_radius": POSITIVE,
        "num_semantic": NON_NEGATIVE,
        "implementation": OneOf("auto", "torch", "tcnn"),
        "geometry": OneOf(*GEOMETRIES),
        "sdf_beta": POSITIVE,
        "sdf_radius": POSITIVE,
        "sdf_init_resolution": Range(8, 256),
    }

    bound: float = 1.0
    """The field lives in the cube [-bound, bound]^3 (world units); the procedural shapes fit in radius 0.75."""
    num_levels: int = 6
    """Hash-grid levels L (Instant-NGP uses 16; the encoding dominates a CPU step, and 6 levels up to `max_res`
    resolve 64x64 renders of simple objects)."""
    features_per_level: int = 2
    """Features per level F (Instant-NGP: 2)."""
    log2_hashmap_size: int = 15
    """log2 of the table size T per level (Instant-NGP: 14-24)."""
    min_res: int = 16
    """Coarsest grid resolution N_min (Instant-NGP: 16)."""
    max_res: int = 96
    """Finest grid resolution N_max over the cube (64 cells over 2 units are ~1 px at the 64x64 default views)."""
    hidden_dim: int = 32
    """Width of the two hidden layers of the shared MLP."""
    blob_density: float = 10.0
    """Magic3D density blob scale (threestudio `density_blob_scale`)."""
    blob_radius: float = 0.5
    """Magic3D density blob radius (threestudio `density_blob_std`)."""
    num_semantic: int = 0
    """Number of semantic regions K (SemanticSDS objects); 0 disables the semantic head."""
    implementation: str = "auto"
    """Hash-grid implementation: 'torch', 'tcnn' (tiny-cuda-nn, CUDA only) or 'auto' (tcnn when importable)."""
    geometry: str = "density"
    """'density' (a free density, softplus, starting as the Magic3D blob) or 'sdf' (a signed distance d starting as
    a sphere, density (1 / beta) Psi_beta(-d) as in VolSDF: solid inside, empty outside, a beta-wide transition; the
    mesh is its zero level set; train it with `regularizers.lambda_eikonal`)."""
    sdf_beta: float = 0.03
    """VolSDF's beta (world units) with geometry 'sdf': the width of the surface's density transition; the density
    inside is 1 / beta. ~1 sample spacing of the default 48 samples per ray (0.0375)."""
    sdf_radius: float = 0.5
    """Radius of the initial sphere with geometry 'sdf' (threestudio's `shape_init: sphere:0.5`); a layout places
    one sphere per box, scaled to the box like the density blobs."""
    sdf_init: str = "sphere"
    """Starting shape of geometry 'sdf': 'sphere' (radius `sdf_radius`), a closed mesh file (.glb/.obj/.ply in
    world coordinates, e.g. a density run's `mesh.glb`) whose signed distance the field starts from (threestudio's
    `shape_init: mesh:PATH`): the density run finds the topology, the SDF run makes its surface clean; or
    'visual-hull' (image-to-3D only): the signed distance of the reference masks' visual hull, which the run
    tabulates from its references and cameras (`sdtoolkit.image_to_3d.visual_hull`). Read when a run starts only:
    every checkpoint carries its tabulated distance, so a resume or a PVD conversion of the finished asset does not
    need the file (`restoring_checkpoint`)."""
    sdf_init_resolution: int = 64
    """Grid resolution of a mesh or visual-hull `sdf_init`'s tabulated signed distance over the field's cube."""

    def __post_init__(self) -> None:
        if self.min_res > self.max_res:
            raise ValueError(f"need min_res <= max_res (the hash grid's coarsest and finest), got {self.min_res} and "
                             f"{self.max_res}")  # fmt: skip
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"geometry={self.geometry!r}; choose one of {', '.join(GEOMETRIES)}")
        if self.sdf_init == VISUAL_HULL:
            if self.geometry != "sdf":
                raise ValueError(f"sdf_init={self.sdf_init!r} needs geometry 'sdf', not {self.geometry!r}")
        elif self.sdf_init != "sphere":
            from pathlib import Path

            from sdtoolkit.nerf.sdf_init import MESH_SUFFIXES

            if self.geometry != "sdf":
                raise ValueError(f"sdf_init={self.sdf_init!r} needs geometry 'sdf', not {self.geometry!r}")
            if Path(self.sdf_init).suffix.lower() not in MESH_SUFFIXES:
                raise ValueError(
                    f"sdf_init={self.sdf_init!r}: give 'sphere', {VISUAL_HULL!r} (image-to-3D) or a mesh file "
                    f"({', '.join(MESH_SUFFIXES)})"
                )
            if not Path(self.sdf_init).is_file() and not _RESTORING.get():
                raise ValueError(f"sdf_init={self.sdf_init!r}: no such file")
            self.sdf_init = str(Path(self.sdf_init).absolute())  # a run's config.json must find it from anywhere


class TextTo3DField(nn.Module):
    """Density, colour and semantic logits from one hash encoding and one small MLP.

    `region_prior`, when set (SemanticSDS), is a module with `density_mask(x) -> [N]` (multiplies the density: no
    matter outside the layout's boxes) and `logits(x) -> [N, K]` (added to the semantic head: each box starts as
    its own region).
    """

    def __init__(self, config: FieldConfig, region_prior: nn.Module | None = None, encoding: nn.Module | None = None):
        super().__init__()
        self.config = config
        if encoding is None:
            encoding = HashEncoding(
                num_levels=config.num_levels,
                features_per_level=config.features_per_level,
                log2_hashmap_size=config.log2_hashmap_size,
                min_res=config.min_res,
                max_res=config.max_res,
                implementation=config.implementation,
            )
        self.encoding = encoding
        """The representation's encoding (`sdtoolkit.nerf.representations`; the hash grid by default)."""
        self.mlp = nn.Sequential(
            nn.Linear(self.encoding.out_dim, config.hidden_dim),
            nn.ReLU(),
            nn.Linear(config.hidden_dim, config.hidden_dim),
            nn.ReLU(),
            nn.Linear(config.hidden_dim, 1 + 3 + config.num_semantic),
        )
        self.region_prior = region_prior
        grid = None  # a mesh `sdf_init`'s tabulated distance: a buffer, so checkpoints carry it
        if config.geometry == "sdf" and config.sdf_init != "sphere":
            from sdtoolkit.nerf.sdf_init import mesh_sdf_grid

            # the checkpoint being restored holds the grid (`restoring_checkpoint`); a visual hull's is filled by
            # the image-to-3D run that owns the references (`sdtoolkit.image_to_3d.visual_hull.start_from_hull`)
            if _RESTORING.get() or config.sdf_init == VISUAL_HULL:
                grid = torch.zeros((config.sdf_init_resolution,) * 3)
            else:
                grid = mesh_sdf_grid(config.sdf_init, config.bound, config.sdf_init_resolution)
        self.register_buffer("sdf_grid", grid)
        self.beta = config.sdf_beta
        """VolSDF's beta in use (geometry 'sdf'); text-to-3D's `sdf_beta_start` anneals it to `config.sdf_beta`."""

    def normalize(self, positions: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs 3"]:
        """World coordinates in [-bound, bound] -> the hash grid's unit cube."""
        return (positions / self.config.bound + 1) / 2

    def density_bias(self, positions: Float[Tensor, "*bs 3"]) -> Float[Tensor, " *bs"]:
        """Magic3D blob: blob_density (1 - |x| / blob_radius); a region prior with its own `density_bias` (a layout:
        one blob per box) places the blobs instead."""
        blobs = getattr(self.region_prior, "density_bias", None)
        if blobs is not None:
            return blobs(positions, self.config.blob_density, self.config.blob_radius)
        return self.config.blob_density * (1 - positions.norm(dim=-1) / self.config.blob_radius)

    def features(self, positions: Float[Tensor, "N 3"]) -> Float[Tensor, "N hidden_dim"]:
        """PVD's volume feature (Fang et al. 2023, Sec. 3.1): the encoding and the first layer, `[N, hidden_dim]`."""
        return self.mlp[:2](self.encoding(self.normalize(positions)))

    def decode(self, features: Float[Tensor, "N hidden_dim"]) -> Float[Tensor, "N out"]:
        """PVD's decoder: raw outputs (density logit before the blob bias, 3 albedo logits, K semantic logits)."""
        return self.mlp[2:](features)

    def sdf_bias(self, positions: Float[Tensor, "*bs 3"]) -> Float[Tensor, " *bs"]:
        """The initial signed distance of geometry 'sdf': |x| - sdf_radius (a sphere); a region prior with its own
        `sdf_bias` (a layout: one sphere per box) places the spheres instead; a mesh `sdf_init` replaces both."""
        if self.sdf_grid is not None:
            from sdtoolkit.nerf.sdf_init import sample_grid

            return sample_grid(self.sdf_grid, positions, self.config.bound)
        spheres = getattr(self.region_prior, "sdf_bias", None)
        if spheres is not None:
            return spheres(positions, self.config.sdf_radius)
        return positions.norm(dim=-1) - self.config.sdf_radius

    def signed_distance(self, positions: Float[Tensor, "*bs 3"]) -> Float[Tensor, " *bs"]:
        """d(x) of geometry 'sdf' (differentiable; the eikonal regulariser's input)."""
        return self._raw(positions)[..., 0] + self.sdf_bias(positions)

    def log_density(self, raw: Tensor, positions: Tensor) -> Tensor:
        """log sigma from the raw outputs (PVD clips this, the pre-activation of its exp-activated density)."""
        return torch.log(self._activation(raw, positions).clamp_min(1e-30))

    def _activation(self, raw: Tensor, positions: Tensor) -> Tensor:
        """sigma before the bound and region masks: softplus(raw + blob) or VolSDF's density of raw + sphere."""
        if self.config.geometry == "sdf":
            return volsdf_density(raw[..., 0] + self.sdf_bias(positions), self.beta)
        return F.softplus(raw[..., 0] + self.density_bias(positions))

    def activate_density(self, raw: Tensor, positions: Tensor) -> Tensor:
        """sigma from the raw outputs at `positions` (what `forward` returns as `density`)."""
        return self._density(raw, positions)

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(grid parameters, network parameters): text-to-3D's `lr_encoding` and `lr_network` groups."""
        if getattr(self.encoding, "grid", True):
            return list(self.encoding.parameters()), list(self.mlp.parameters())
        return [], [*self.encoding.parameters(), *self.mlp.parameters()]

    def _raw(self, positions: Tensor) -> Tensor:
        return self.decode(self.features(positions))

    def _density(self, raw: Tensor, positions: Tensor) -> Tensor:
        density = self._activation(raw, positions)
        inside = (positions.abs() <= self.config.bound).all(-1)
        density = density * inside
        if self.region_prior is not None:
            density = density * self.region_prior.density_mask(positions)
        return density

    def normals(self, positions: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        """Outward density-gradient normals at `positions` (`density_normals`), differentiable in the field's
        parameters (for regularisers on normals)."""
        positions = positions.detach().requires_grad_(True)
        return density_normals(self.get_density(positions), positions)

    def get_density(self, positions: Float[Tensor, "*bs 3"]) -> Float[Tensor, " *bs"]:
        """Volume density sigma(x) >= 0 (zero outside the cube and, with a layout, outside every box)."""
        return self._density(self._raw(positions), positions)

    def forward(self, positions: Float[Tensor, "N 3"]) -> dict[str, Tensor]:
        """`density` [N], `rgb` [N, 3] in [0, 1], with geometry 'sdf' the signed distance `sdf` [N] and, with K > 0
        regions, `semantic_logits` [N, K]."""
        raw = self._raw(positions)
        outputs = {"density": self._density(raw, positions), "rgb": torch.sigmoid(raw[..., 1:4])}
        if self.config.geometry == "sdf":
            outputs["sdf"] = raw[..., 0] + self.sdf_bias(positions)
        if self.config.num_semantic > 0:
            logits = raw[..., 4:]
            if self.region_prior is not None:
                logits = logits + self.region_prior.logits(positions)
            outputs["semantic_logits"] = logits
        return outputs


def sdf_normals(sdf: Float[Tensor, " N"], positions: Float[Tensor, "N 3"], create_graph: bool = True) -> Tensor:
    """Outward normals n = grad d / |grad d| of signed distances computed from `positions` (which require grad), kept
    in the graph with `create_graph` (a loss or shading on them trains the field through a double backward)."""
    (gradient,) = torch.autograd.grad(sdf.sum(), positions, create_graph=create_graph)
    return gradient / gradient.norm(dim=-1, keepdim=True).clamp_min(1e-8)


def density_normals(density: Float[Tensor, " N"], positions: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
    """Outward normals n = -grad sigma / |grad sigma| (DreamFusion, Sec. 3.1) of densities computed from `positions`
    (which require grad), kept in the graph (`create_graph`) so that a loss on them trains the field (a double
    backward). Where the gradient vanishes the normal is zero."""
    (gradient,) = torch.autograd.grad(density.sum(), positions, create_graph=True)
    return -gradient / gradient.norm(dim=-1, keepdim=True).clamp_min(1e-8)
