"""The image-to-3D loop (Magic123, Qian et al. 2024, Sec. 3; DreamCar, Du et al. 2024, Sec. 3): every step renders
reference views and matches them (colour and mask losses, threestudio's `loss_rgb` / `loss_mask`), and renders a
random novel view and applies a text prior's SDS and/or a Zero123-style novel-view prior's SDS to it (conditioned on
a random reference view and the relative camera, `sdtoolkit.models.novel_view_prior`; Magic123's joint 2D + 3D
prior); the reference cameras may carry learnable corrections (`sdtoolkit.image_to_3d.poses`) and mirrored copies
(`sdtoolkit.image_to_3d.symmetry`).

Everything else is text-to-3D's: the NeRF, the guidance, the coarse-to-fine resolution, the regularisers, the
checkpoint format and the loop with its exact resume, non-finite guard, Ctrl-C handling and previews
(`sdtoolkit.text_to_3d.trainer.train` runs this module's `setup` and `training_step`).

    L = lambda_rgb mean(rgb - x_ref)^2 + lambda_mask mean(opacity - m_ref)^2 + lambda_text L_SDS(novel view | text)
        + lambda_novel_view L_SDS(novel view | x_ref, T)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from sdtoolkit.core.denoiser import Denoiser
from sdtoolkit.data.cameras import Cameras, cat_cameras
from sdtoolkit.image_to_3d.config import ImageTo3DConfig
from sdtoolkit.image_to_3d.inputs import References, load_references
from sdtoolkit.image_to_3d.novel_view import relative_camera
from sdtoolkit.image_to_3d.poses import PoseCorrections
from sdtoolkit.image_to_3d.symmetry import make_symmetric, symmetry_group, transform_cameras, transform_images
from sdtoolkit.image_to_3d.visual_hull import start_from_hull, uses_hull
from sdtoolkit.nerf import NeRF
from sdtoolkit.runs import RunFolder, claim_output, inspect_output
from sdtoolkit.text_to_3d import trainer as text_trainer
from sdtoolkit.text_to_3d.guidance import ViewDependentPrompts, build
from sdtoolkit.text_to_3d.trainer import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    current_levels,
    current_resolution,
    load_prior,
    prior_image_size,
    regularizers,
    sample_training_cameras,
    set_levels,
)

RUN_KIND = "image-to-3d"
"""The kind of run recorded in the output folder's manifest (`sdtoolkit.runs`)."""
RUN_ENTRIES = (*text_trainer.RUN_ENTRIES, "references.png")
"""The top-level entries an image-to-3D run writes: text-to-3D's, and the reference-view comparison."""


@dataclass
class ImageTo3DRun:
    """Everything a run holds; the attribute names are text-to-3D's (its checkpoints and loop read them)."""

    config: ImageTo3DConfig
    denoiser: Denoiser | None
    nerf: NeRF
    guidance: object
    prompts: list[ViewDependentPrompts]
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    references: References
    poses: PoseCorrections | None = None
    novel_view: Denoiser | None = None
    """The novel-view prior (`config.novel_view_prior`), frozen."""
    novel_view_guidance: object = None
    layout: object = None
    step: int = 0
    history: list[dict] = field(default_factory=list)
    _targets: dict = field(default_factory=dict)

    @property
    def scene_scale(self) -> float:
        return 1.0

    @property
    def extra_modules(self) -> dict:
        """Checkpointed with the NeRF (`text_to_3d.trainer.checkpoint_modules`)."""
        return {} if self.poses is None else {"poses": self.poses}

    def reference_cameras(self) -> Cameras:
        """The reference cameras as the run sees them now: corrected when refining, then their mirrors."""
        cameras = self.references.cameras.to(self.nerf.device)
        if self.poses is not None:
            cameras = self.poses(cameras)
        if self.config.mirror_views:  # one moved copy of every view per non-identity symmetry
            moved = [transform_cameras(cameras, g) for g in self._symmetries()]
            cameras = cat_cameras(cameras, *moved)
        return cameras

    @property
    def num_reference_views(self) -> int:
        """The references and, with `mirror_views`, their moved copies (one per non-identity symmetry)."""
        return len(self.references) * (1 + len(self._symmetries()) if self.config.mirror_views else 1)

    def _symmetries(self) -> list[tuple[bool, float]]:
        """The symmetry group's elements other than the identity (`symmetry.symmetry_group`)."""
        return symmetry_group(self.config.symmetry_planes, self.config.symmetry_plane_azimuth)[1:]

    def targets(self, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(colours over the background [V, 3, r, r], masks [V, 1, r, r]) of every reference view (and mirror)."""
        if resolution not in self._targets:
            refs = self.references.resized(resolution)
            rgb, mask = refs.composite(self.config.background), refs.masks
            if self.config.mirror_views:
                groups = self._symmetries()
                rgb = torch.cat([rgb, *(transform_images(rgb, g) for g in groups)])
                mask = torch.cat([mask, *(transform_images(mask, g) for g in groups)])
            self._targets[resolution] = (rgb.to(self.nerf.device), mask.to(self.nerf.device))
        return self._targets[resolution]


def refines_poses(config: ImageTo3DConfig, references: References) -> bool:
    """`refine_poses`, or (None) whether the cameras file marked the poses approximate."""
    return references.approximate if config.refine_poses is None else config.refine_poses


def setup(config: ImageTo3DConfig, denoiser: Denoiser | None = None, references: References | None = None):
    """Builds the run: reads the references (unless given), the prior (only with a text prior), the NeRF (made
    symmetric if asked), the pose corrections, and one Adam with the pose group at its own low rate."""
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    if references is None:
        references = load_references(
            list(config.images), config.cameras, list(config.masks) or None, config.reference_resolution
        )
    guidance, prompts = None, []
    if config.uses_text_prior:
        denoiser = denoiser if denoiser is not None else load_prior(config.prior, config.device)
        guidance = build("sds", denoiser, config.guidance)
        prompts = [ViewDependentPrompts(denoiser, config.prompt, config.view_dependent_prompts)]
    nerf = NeRF(config.nerf).to(config.device)
    if config.symmetric_density:
        make_symmetric(nerf, config.symmetry_plane_azimuth, config.symmetry_planes, config.symmetry_method)
    grid_params, network_params = nerf.field.parameter_groups()
    groups = [
        {"params": grid_params, "lr": config.lr_encoding},
        {"params": network_params, "lr": config.lr_network},
    ]
    poses = None
    if refines_poses(config, references):
        poses = PoseCorrections(len(references), anchor=0 if config.anchor_first_view else None).to(config.device)
        groups.append({"params": list(poses.parameters()), "lr": config.lr_pose})
    optimizer = torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15)
    run = ImageTo3DRun(config, denoiser, nerf, guidance, prompts, optimizer, generator, references, poses)
    if uses_hull(config):
        start_from_hull(run)  # (a resumed run's checkpoint then replaces it with the saved grid)
    if config.uses_novel_view_prior:
        from sdtoolkit.models.novel_view_prior import load_novel_view_prior

        run.novel_view = load_novel_view_prior(config.novel_view_prior, config.device)
        run.novel_view_guidance = build("sds", run.novel_view, config.novel_view_guidance)
    return run


def reference_losses(run: ImageTo3DRun, resolution: int, views: torch.Tensor) -> dict[str, torch.Tensor]:
    """lambda_rgb mean(rgb - x)^2 and lambda_mask mean(opacity - m)^2 on the reference views `views` rendered at
    `resolution` (threestudio's zero123 system: `loss_rgb`, `loss_mask`)."""
    config = run.config
    cameras = run.reference_cameras()[views]
    out = run.nerf.render(cameras, resolution, background=config.background, generator=run.generator)
    rgb, mask = run.targets(resolution)
    views = views.to(rgb.device)
    losses = {}
    if config.lambda_rgb:
        losses["loss_rgb"] = config.lambda_rgb * F.mse_loss(out["rgb"], rgb[views])
    if config.lambda_mask:
        losses["loss_mask"] = config.lambda_mask * F.mse_loss(out["opacity"], mask[views])
    return losses


def novel_view_condition(run: ImageTo3DRun, cameras: Cameras, size: int):
    """(cond, uncond) of the novel-view prior for `cameras`: one random reference view (its latent at the prior's
    `size`, its current camera) and the relative camera T from it to each novel view (Zero123's conditioning)."""
    from sdtoolkit.models.novel_view_prior import novel_view_conditioning, unconditional

    index = int(torch.randint(len(run.references), (1,), generator=run.generator))
    key = ("novel_view_latents", size)
    if key not in run._targets:  # the references' latents, encoded once
        rgb, _ = run.targets(size)
        with torch.no_grad():
            run._targets[key] = run.novel_view.encode(rgb[: len(run.references)] * 2 - 1, sample=False)
    reference = run._targets[key][index : index + 1]
    with torch.no_grad():
        camera = run.reference_cameras()[index : index + 1]
        relative = relative_camera(camera, cameras).detach()
    cond = novel_view_conditioning(reference.expand(len(cameras), -1, -1, -1), relative)
    return cond, unconditional(cond)


def prior_losses(run: ImageTo3DRun, step: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """On one batch of random novel views: lambda_text times text-to-3D's SDS and lambda_novel_view times the
    novel-view prior's SDS (each where configured), plus text-to-3D's regularisers; and their logs."""
    config, g = run.config, run.generator
    full = config.resolution or prior_image_size(run.denoiser if run.denoiser is not None else run.novel_view)
    resolution = current_resolution(config, step, full)
    cameras = sample_training_cameras(config.novel_cameras, config.novel_cameras.batch_size, g).to(run.nerf.device)
    out = run.nerf.render(cameras, resolution, background=config.background, generator=g)
    rgb = out["rgb"]
    if resolution != full:
        rgb = F.interpolate(rgb, size=(full, full), mode="bilinear", align_corners=False)
    progress = step / max(config.steps, 1)
    losses = dict(regularizers(config, out, progress, field=run.nerf.field, generator=g))  # eikonal needs the field
    logs = {"res": resolution}
    if config.uses_text_prior:
        latents = run.denoiser.encode(rgb * 2 - 1, sample=False)
        result = run.guidance(latents, [run.prompts[0](cameras)], progress, cameras=cameras, generator=g)
        losses["loss_guidance"] = config.lambda_text * result.loss
        logs.update(t=float(result.t.float().mean()), grad_norm=float(result.grad_norm))
    if config.uses_novel_view_prior:
        latents = run.novel_view.encode(rgb * 2 - 1, sample=False)
        conds = [novel_view_condition(run, cameras, full)]
        result = run.novel_view_guidance(latents, conds, progress, cameras=cameras, generator=g)
        losses["loss_novel_view"] = config.lambda_novel_view * result.loss
        logs.update(t_novel_view=float(result.t.float().mean()), grad_norm_novel_view=float(result.grad_norm))
    return losses, logs


def training_step(run: ImageTo3DRun) -> dict[str, float]:
    """One step: reference losses on `reference_batch` reference views (and mirrors), the priors' SDS on one batch
    of novel views, one Adam step of field and poses (skipped when a loss or gradient is not finite); returns its
    logs."""
    config, step, g = run.config, run.step, run.generator
    if config.start_levels is not None:
        set_levels(run.nerf, current_levels(config, step, run.nerf.field.encoding.num_levels))
    run.nerf.update_occupancy(step, g)
    views = torch.randint(run.num_reference_views, (config.reference_batch,), generator=g)
    reference_resolution = current_resolution(config, step, config.reference_resolution)
    losses = reference_losses(run, reference_resolution, views)
    logs = {"t": 0.0, "grad_norm": 0.0, "res": reference_resolution}
    if config.uses_text_prior or config.uses_novel_view_prior:
        novel, prior_logs = prior_losses(run, step)
        losses.update(novel)
        logs.update(prior_logs)
    loss = sum(losses.values())
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    values = {k: float(v.detach()) for k, v in losses.items()}
    values.setdefault("loss_guidance", 0.0)
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if config.max_nonfinite_steps > 0 and not bad:
        grads = [p.grad for group in run.optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads and not math.isfinite(float(torch.nn.utils.get_total_norm(grads))):
            bad = ["grad_norm"]
    if config.max_nonfinite_steps > 0 and bad:  # text-to-3D's non-finite guard: no update this step
        run.optimizer.zero_grad(set_to_none=True)
        values.update(skipped=1.0, nonfinite_term=bad[0])
    else:
        run.optimizer.step()
    run.step += 1
    values.update(logs, step=run.step, loss_reference=values.get("loss_rgb", 0.0) + values.get("loss_mask", 0.0))
    return values


# ------------------------------------------------------------------------------------------------- the run folder


def _folder_rules(config: ImageTo3DConfig, resume: bool) -> dict:
    return {
        "resume": resume,
        "overwrite": config.overwrite,
        "has_checkpoint": lambda folder: (folder / CHECKPOINT_FILE).exists(),
        "reserved": RUN_ENTRIES,
    }


def check_output_folder(config: ImageTo3DConfig, output_dir: str | Path, resume: bool = False) -> str:
    """Whether an image-to-3D run may write into `output_dir` (`sdtoolkit.runs.inspect_output`); writes nothing."""
    return inspect_output(output_dir, RUN_KIND, **_folder_rules(config, resume))


def claim_folder(config: ImageTo3DConfig, output_dir: str | Path, resume: bool = False) -> RunFolder:
    """Claims `output_dir` for an image-to-3D run (lock + manifest, `sdtoolkit.runs.claim_output`)."""
    return claim_output(output_dir, RUN_KIND, **_folder_rules(config, resume))


def train(
    config: ImageTo3DConfig,
    output_dir: str | Path,
    denoiser: Denoiser | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_at: int | None = None,
    folder: RunFolder | None = None,
    references: References | None = None,
    export_settings: dict | None = None,
) -> ImageTo3DRun:
    """Runs (or resumes) the optimisation in `output_dir` through text-to-3D's loop (`text_to_3d.trainer.train`):
    config.json, previews, checkpoints that resume exactly, the non-finite guard and Ctrl-C handling."""
    output_dir = Path(output_dir)
    resume = resume and (output_dir / CHECKPOINT_FILE).exists()
    owned = folder is None
    folder = folder if folder is not None else claim_folder(config, output_dir, resume)
    try:
        return text_trainer.train(
            config,
            output_dir,
            denoiser,
            resume=resume,
            progress=progress,
            stop_at=stop_at,
            folder=folder,
            setup_fn=lambda c, d: setup(c, d, references),
            step_fn=training_step,
            command=RUN_KIND,
            export_settings=export_settings,
        )
    finally:
        if owned:
            folder.release()


__all__ = [
    "CONFIG_FILE",
    "ImageTo3DRun",
    "RUN_ENTRIES",
    "RUN_KIND",
    "check_output_folder",
    "claim_folder",
    "novel_view_condition",
    "prior_losses",
    "reference_losses",
    "setup",
    "train",
    "training_step",
]
