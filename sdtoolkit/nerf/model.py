"""The NeRF that text-to-3D optimises: collider -> sampler -> field -> renderer, top to bottom (nerfstudio's
`Model.get_outputs`), rendering `sdtoolkit.data.cameras.Cameras` (the camera model of the shapes renderer)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from jaxtyping import Float
from torch import Tensor, nn

from sdtoolkit.core.config import AT_LEAST_1, FRACTION, NON_NEGATIVE, POSITIVE, Bound, OneOf
from sdtoolkit.data.cameras import Cameras
from sdtoolkit.data.render import lambert
from sdtoolkit.nerf.colliders import COLLIDERS, RayBundle
from sdtoolkit.nerf.fields import FieldConfig, TextTo3DField, density_normals, sdf_normals
from sdtoolkit.nerf.occupancy import OccupancyGrid
from sdtoolkit.nerf.renderers import (
    render_accumulation,
    render_depth,
    render_depth_variance,
    render_rgb,
    render_semantics,
    render_weights,
)
from sdtoolkit.nerf.representations import REPRESENTATIONS, MLPConfig, TensoRFConfig, VoxelConfig, build_encoding
from sdtoolkit.nerf.samplers import PDFSampler, RaySamples, UniformSampler, contributing_samples

SHADINGS = ("albedo", "lambert")
"""How a sample's colour is formed (`NeRFConfig.shading`)."""


@dataclass
class NeRFConfig:
    """Hyper-parameters of `NeRF` (field, collider, sampling)."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "representation": OneOf(*REPRESENTATIONS.names()),
        "collider": OneOf(*COLLIDERS),
        "scene_radius": POSITIVE,
        "num_samples": AT_LEAST_1,
        "num_importance_samples": NON_NEGATIVE,
        "alpha_threshold": FRACTION,
        "transmittance_threshold": FRACTION,
        "chunk": AT_LEAST_1,
        "occupancy_resolution": NON_NEGATIVE,
        "occupancy_update_every": AT_LEAST_1,
        "occupancy_pruning": OneOf("cached", "exact"),
        "occupancy_threshold": NON_NEGATIVE,
        "shading": OneOf(*SHADINGS),
    }

    field: FieldConfig = field(default_factory=FieldConfig)
    """The radiance field (its decoder, bound and density blob for every representation; its hash grid for 'hash')."""
    representation: str = "hash"
    """Volume representation (`sdtoolkit.nerf.representations`): 'hash' (Instant-NGP hash grid), 'mlp' (NeRF's
    positional encoding + MLP), 'tensorf' (TensoRF VM) or 'voxel' (dense grid)."""
    mlp: MLPConfig = dataclasses.field(default_factory=MLPConfig)
    """The 'mlp' representation's front."""
    tensorf: TensoRFConfig = dataclasses.field(default_factory=TensoRFConfig)
    """The 'tensorf' representation's front."""
    voxel: VoxelConfig = dataclasses.field(default_factory=VoxelConfig)
    """The 'voxel' representation's front."""
    collider: str = "sphere"
    """Ray interval through the scene: 'sphere' (|x| <= radius) or 'aabb' (the field's cube)."""
    scene_radius: float = 0.9
    """Radius of the sphere collider (world units)."""
    num_samples: int = 48
    """Stratified samples per ray of the first (no-grad) pass."""
    num_importance_samples: int = 0
    """Extra PDF samples per ray drawn from the first pass's weights (0 = off)."""
    alpha_threshold: float = 1e-3
    """nerfacc `alpha_thre`: samples with smaller opacity are skipped in the differentiable pass."""
    transmittance_threshold: float = 1e-2
    """nerfacc `early_stop_eps`: samples behind this much accumulated opacity are skipped."""
    chunk: int = 1 << 17
    """Points per field call in the no-grad passes (bounds memory)."""
    occupancy_resolution: int = 64
    """Cells per axis of the occupancy grid that replaces the no-grad pass (0 = evaluate the field instead)."""
    occupancy_update_every: int = 16
    """Refresh period of the occupancy grid in optimisation steps (Instant-NGP: 16)."""
    occupancy_pruning: str = "cached"
    """What the no-grad pass prunes with. 'cached': the grid's cached density (a decayed maximum over each cell)
    stands for the field's density at every sample, for both the opacity and the transmittance tests. 'exact':
    the grid only skips samples in cells whose cached density is at most `occupancy_threshold`, and the field's own
    density (no gradient) at the other samples decides the pruning, as nerfacc's `OccGridEstimator.sampling` does
    with a `sigma_fn`. The cached maximum overstates a sharp surface across its whole cell, so 'cached' prunes the
    samples behind a cell's front face although the surface may lie deeper; photometric and PVD fits of the mlp,
    tensorf and voxel fronts then lose the surface and diverge (benchmarks/RESULTS.md, PVD and nerfstudio, third
    round). 'exact' costs one no-grad field pass over the occupied cells' samples."""
    occupancy_threshold: float = 0.01
    """Density at or below which a cell counts as empty for 'exact' pruning (nerfacc's `occ_thre`: 0.01)."""
    shading: str = "albedo"
    """'albedo' (the field's colour as it is: DreamFusion's "albedo" mode, any shading baked in) or 'lambert' (the
    colour is an albedo shaded by the shapes world's own light, albedo (ambient + diffuse max(0, n . l)) with the
    field's normals, `sdtoolkit.data.render.lambert`: DreamFusion's shaded mode, whose point is that the shading
    of a surface tells the prior its shape; the mesh then keeps the unshaded albedo as its vertex colours). Lambert
    needs normals at every sample: a double backward per render."""

    def __post_init__(self) -> None:
        if self.shading not in SHADINGS:
            raise ValueError(f"shading={self.shading!r}; choose one of {', '.join(SHADINGS)}")


class NeRF(nn.Module):
    """Renders rays and cameras through a `TextTo3DField`."""

    def __init__(self, config: NeRFConfig, region_prior: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.field = TextTo3DField(config.field, region_prior=region_prior, encoding=build_encoding(config))
        if config.collider not in COLLIDERS:
            raise ValueError(f"collider={config.collider!r}; choose one of {', '.join(COLLIDERS)}")
        radius = config.scene_radius if config.collider == "sphere" else config.field.bound
        self.collider = COLLIDERS[config.collider](radius)
        self.sampler = UniformSampler(config.num_samples)
        self.pdf_sampler = PDFSampler(config.num_importance_samples) if config.num_importance_samples else None
        self.occupancy = None
        if config.occupancy_resolution:
            self.occupancy = OccupancyGrid(
                config.field.bound, config.occupancy_resolution, update_every=config.occupancy_update_every
            )

    def update_occupancy(self, step: int, generator: torch.Generator | None = None, force: bool = False) -> bool:
        """Refreshes the occupancy grid from the field (every `occupancy_update_every` steps, or when forced)."""
        if self.occupancy is None:
            return False
        return self.occupancy.update(self.field.get_density, step, generator, self.config.chunk, force)

    @torch.no_grad()
    def _densities(self, positions: Tensor) -> Tensor:
        if self.occupancy is not None:
            if not bool(self.occupancy.initialised):
                self.update_occupancy(0, force=True)
            densities = self.occupancy.query(positions)
            if self.config.occupancy_pruning == "exact":
                occupied = densities > self.config.occupancy_threshold
                densities = torch.zeros_like(densities)
                densities[occupied] = self.exact_densities(positions[occupied])
            # the grid caches the density under the region prior it was updated with (a layout's union of boxes);
            # a prior that removes more for this render (one box alone) must remove it from the cached values too,
            # or matter it hides would still prune the samples behind it
            restrict = getattr(self.field.region_prior, "occupancy_mask", None)
            return densities if restrict is None else densities * restrict(positions)
        return self.exact_densities(positions)

    @torch.no_grad()
    def exact_densities(self, positions: Tensor) -> Tensor:
        """The field's density at `positions` (any batch shape), chunked, without gradients."""
        flat = positions.reshape(-1, 3)
        out = [self.field.get_density(part) for part in flat.split(self.config.chunk)]
        return torch.cat(out).reshape(positions.shape[:-1])

    def sample_along(
        self, rays: RayBundle, generator: torch.Generator | None = None, stratified: bool | None = None
    ) -> tuple[Tensor, RayBundle, RaySamples | None, Tensor | None, Tensor | None]:
        """The samples the renderer evaluates the field at, for rays already through the collider: (indices of the
        rays that hit the bound, those rays, their samples, the no-grad densities, the mask of contributing
        samples). The no-grad pass reads the occupancy grid (or the field), draws optional importance samples,
        then prunes nerfacc-style (`contributing_samples`). PVD queries its student at exactly these points."""
        hit = rays.hit.nonzero().squeeze(1)
        sub = RayBundle(rays.origins[hit], rays.directions[hit], rays.nears[hit], rays.fars[hit], rays.hit[hit])
        if not len(hit):
            return hit, sub, None, None, None
        samples, densities = self.draw_samples(sub, generator, stratified)
        keep = contributing_samples(
            densities, samples, self.config.alpha_threshold, self.config.transmittance_threshold
        )
        return hit, sub, samples, densities, keep

    def draw_samples(
        self, rays: RayBundle, generator: torch.Generator | None = None, stratified: bool | None = None
    ) -> tuple[RaySamples, Tensor]:
        """The samples along rays that hit the bound, and their no-grad densities, before pruning: uniform samples
        (through the occupancy grid when there is one), then optional importance samples. Subclasses with another
        sampler (a nerfstudio teacher's proposal sampler) override this step only."""
        sampler = self.sampler
        if stratified is not None:
            sampler = UniformSampler(self.config.num_samples, stratified)
        samples = sampler(rays, generator)
        densities = self._densities(samples.positions(rays))
        if self.pdf_sampler is not None:
            samples = self.pdf_sampler(samples, render_weights(densities, samples), generator)
            densities = self._densities(samples.positions(rays))
        return samples, densities

    def render_rays(
        self,
        rays: RayBundle,
        background: Float[Tensor, 3] | Float[Tensor, "R 3"],
        generator: torch.Generator | None = None,
        stratified: bool | None = None,
        compute_normals: bool = False,
    ) -> dict[str, Tensor]:
        """`rgb` [R, 3], `accumulation` [R], `depth` [R], `depth_variance` [R] (`render_depth_variance`),
        `semantics` [R, K] (with a semantic head), and the differentiable samples' `weights` / `positions` /
        `densities` (packed) for the regularisers."""
        rays = self.collider(rays)
        background = background.expand(len(rays), 3).to(rays.origins)
        num_rays = len(rays)
        k = self.field.config.num_semantic
        rgb = background.clone()
        accumulation = torch.zeros(num_rays, device=rays.origins.device)
        depth = rays.fars.clone() if rays.fars is not None else accumulation.clone()
        depth_variance = torch.zeros(num_rays, device=rays.origins.device)
        semantics = torch.full((num_rays, k), 1.0 / max(k, 1), device=rays.origins.device)
        hit, sub, samples, densities, keep = self.sample_along(rays, generator, stratified)
        outputs = {"packed_weights": torch.zeros(0), "packed_positions": torch.zeros(0, 3)}
        if len(hit):
            # 2. differentiable pass on the contributing samples only; the rest are empty
            shaded = self.config.shading == "lambert"
            out, positions = self._field_on(samples, sub, keep, compute_normals or shaded)
            sigma = torch.zeros_like(densities).masked_scatter(keep, out["density"])
            weights = render_weights(sigma, samples)
            colours = torch.zeros(*densities.shape, 3, device=sigma.device)
            sample_rgb = lambert(out["rgb"], out["normals"].T) if shaded else out["rgb"]
            colours = colours.masked_scatter(keep[..., None], sample_rgb)
            rgb = rgb.index_copy(0, hit, render_rgb(colours, weights, background[hit]))
            accumulation = accumulation.index_copy(0, hit, render_accumulation(weights))
            depth = depth.index_copy(0, hit, render_depth(weights, samples))
            depth_variance = depth_variance.index_copy(0, hit, render_depth_variance(weights, samples))
            if k:
                probabilities = self._semantic_probabilities(samples, sub, keep, out)
                semantics = semantics.index_copy(0, hit, render_semantics(probabilities, weights))
            outputs = {"packed_weights": weights[keep], "packed_positions": positions, "packed_densities": sigma[keep]}
            if compute_normals:
                outputs["packed_normals"] = out["normals"]
                outputs["packed_directions"] = sub.directions[:, None, :].expand(*keep.shape, 3)[keep]
        outputs.update(rgb=rgb, accumulation=accumulation, depth=depth, depth_variance=depth_variance)
        if k:
            outputs["semantics"] = semantics
        return outputs

    def _field_on(
        self, samples: RaySamples, rays: RayBundle, keep: Tensor, compute_normals: bool = False
    ) -> tuple[dict[str, Tensor], Tensor]:
        positions = samples.positions(rays)[keep]
        if not compute_normals:
            along = getattr(self.field, "forward_along", None)  # a view-dependent field (a nerfstudio teacher's)
            if along is not None:
                return along(positions, rays.directions[:, None, :].expand(*keep.shape, 3)[keep]), positions
            return self.field(positions), positions
        training = torch.is_grad_enabled()
        with torch.enable_grad():  # (a no-grad render, e.g. a turntable, still needs the gradient in x)
            # positions that carry a graph (learnable cameras: image-to-3D's pose corrections) keep it, so that the
            # shaded colour and the density still pass their gradient to the cameras; others become a leaf
            if not (training and positions.requires_grad):
                positions = positions.detach().requires_grad_(True)
            out = self.field(positions)
            if "sdf" in out:
                out["normals"] = sdf_normals(out["sdf"], positions, create_graph=training)
            else:
                out["normals"] = density_normals(out["density"], positions)
        if not training:
            out = {k: v.detach() for k, v in out.items()}
        return out, positions

    def _semantic_probabilities(self, samples: RaySamples, rays: RayBundle, keep: Tensor, out: dict) -> Tensor:
        """Region probabilities at every sample: the field's softmax where it ran, the layout prior elsewhere."""
        positions = samples.positions(rays)
        prior = self.field.region_prior
        with torch.no_grad():
            if prior is not None:
                base = torch.softmax(prior.logits(positions.reshape(-1, 3)), -1).reshape(*keep.shape, -1)
            else:
                k = self.field.config.num_semantic
                base = torch.full((*keep.shape, k), 1.0 / k, device=positions.device)
        return base.masked_scatter(keep[..., None], torch.softmax(out["semantic_logits"], -1))

    def render(
        self,
        cameras: Cameras,
        resolution: int,
        background: tuple[float, float, float] | Tensor = (1.0, 1.0, 1.0),
        generator: torch.Generator | None = None,
        stratified: bool | None = None,
        ray_transform: tuple[Tensor, Tensor] | None = None,
        compute_normals: bool = False,
    ) -> dict[str, Tensor]:
        """Renders one `resolution`^2 image per camera: `rgb` [B, 3, H, W] in [0, 1], `opacity` [B, 1, H, W],
        `depth` [B, 1, H, W], `depth_variance` [B, 1, H, W], `semantics` [B, K, H, W]; plus the packed samples for
        regularisers.

        `background` is one colour or `[B, 3]` per image. `ray_transform = (centres [B, 3], scales [B])` moves each
        camera's rays to look at `centre` from `scale` times closer (object-centric views of a layout box)."""
        origins, directions = cameras.generate_rays(resolution, resolution)  # [B, H, W, 3]
        if ray_transform is not None:
            centres, scales = ray_transform
            origins = origins * scales[:, None, None, None] + centres[:, None, None, :]
        batch = len(cameras)
        bg = torch.as_tensor(background, dtype=origins.dtype, device=origins.device)
        bg = bg.reshape(-1, 1, 3).expand(batch, resolution * resolution, 3).reshape(-1, 3)
        rays = RayBundle(origins.reshape(-1, 3), directions.reshape(-1, 3))
        out = self.render_rays(rays, bg, generator, stratified, compute_normals)

        def image(x: Tensor) -> Tensor:
            return x.reshape(batch, resolution, resolution, -1).permute(0, 3, 1, 2)

        result = {
            "rgb": image(out["rgb"]),
            "opacity": image(out["accumulation"][:, None]),
            "depth": image(out["depth"][:, None]),
            "depth_variance": image(out["depth_variance"][:, None]),
        }
        if "semantics" in out:
            result["semantics"] = image(out["semantics"])
        result.update({k: v for k, v in out.items() if k.startswith("packed_")})
        return result

    @property
    def device(self) -> torch.device:
        return next(self.field.parameters()).device

    @torch.no_grad()
    def density_grid(self, resolution: int) -> tuple[Tensor, Tensor]:
        """Density on a `resolution`^3 grid of cell centres over the field's cube; (densities [N, N, N], the
        coordinates of the grid's first and last sample along each axis as a `[2]` tensor)."""
        bound = self.field.config.bound
        half_cell = bound / resolution
        axis = torch.linspace(-bound + half_cell, bound - half_cell, resolution, device=self.device)
        grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)
        return self.exact_densities(grid).cpu(), torch.tensor([axis[0].item(), axis[-1].item()])

    @torch.no_grad()
    def colours_at(self, positions: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        """The field's albedo at world points (vertex colours of an exported mesh)."""
        positions = positions.to(self.device)
        return torch.cat([self.field(part)["rgb"] for part in positions.split(self.config.chunk)]).cpu()
