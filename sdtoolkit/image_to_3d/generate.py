"""One call from reference views to an asset: optimise (or resume), then export the mesh, the turntable video, the
evaluation renders and the reference-view comparison beside the config (text-to-3D's exporters)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from sdtoolkit.image_to_3d.config import ImageTo3DConfig
from sdtoolkit.image_to_3d.trainer import CHECKPOINT_FILE, ImageTo3DRun, claim_folder, train
from sdtoolkit.runs import atomic_write_text
from sdtoolkit.text_to_3d.export import (
    EmptyFieldError,
    delight_colours,
    export_mesh,
    extract_mesh,
    no_surface,
    remove_stale_meshes,
    write_video,
)
from sdtoolkit.text_to_3d.trainer import render_turntable, save_image_grid


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Peak signal-to-noise ratio of images in [0, 1]: -10 log10 mean (x - y)^2."""
    return -10.0 * math.log10(max(float((x - y).square().mean()), 1e-12))


@torch.no_grad()
def reference_scores(run: ImageTo3DRun, resolution: int | None = None) -> dict:
    """How well the field reproduces its references from the (refined) reference cameras: PSNR of the colours over
    the background per view, and the IoU of the opacity and the mask at 0.5; plus the renders and targets."""
    config = run.config
    resolution = resolution or config.reference_resolution
    count = len(run.references)
    cameras = run.reference_cameras()[:count]
    out = run.nerf.render(cameras, resolution, background=config.background, stratified=False)
    target, mask = (t[:count].cpu() for t in run.targets(resolution))
    rgb, opacity = out["rgb"].cpu(), out["opacity"].cpu()
    inside, truth = opacity > 0.5, mask > 0.5
    iou = ((inside & truth).flatten(1).sum(1) / (inside | truth).flatten(1).sum(1).clamp_min(1)).tolist()
    return {
        "psnr": [psnr(rgb[i], target[i]) for i in range(count)],
        "mask_iou": iou,
        "renders": rgb,
        "targets": target,
    }


def pose_summary(run: ImageTo3DRun) -> dict:
    """The reference cameras as given and, with pose refinement, as refined (None without it) with the corrections."""
    given = run.references.cameras

    def columns(cameras) -> dict:
        return {
            "azimuth": cameras.azimuth_deg.tolist(),
            "elevation": cameras.elevation_deg.tolist(),
            "distance": cameras.distance.tolist(),
        }

    if run.poses is None:
        return {"given": columns(given), "refined": None, "corrections": None}
    refined = run.poses(given.to(run.nerf.device))
    return {"given": columns(given), "refined": columns(refined), "corrections": run.poses.degrees()}


def generate(
    config: ImageTo3DConfig,
    output_dir: str | Path,
    denoiser=None,
    resume: bool = False,
    progress: bool = True,
    mesh_resolution: int = 96,
    mesh_formats=("glb", "obj", "ply"),
    video_frames: int = 36,
    video_resolution: int = 64,
    references=None,
    export_settings: dict | None = None,
) -> dict:
    """Trains, exports and returns a summary dict (also `summary.json`), with the output folder claimed for the
    whole call (`sdtoolkit.image_to_3d.trainer.claim_folder`: --resume / --overwrite rules of text-to-3D)."""
    output_dir = Path(output_dir)
    resume = resume and (output_dir / CHECKPOINT_FILE).exists()
    with claim_folder(config, output_dir, resume) as folder:
        start = time.time()
        previous_config = (output_dir / "config.json").read_text() if resume else None
        run = train(
            config,
            output_dir,
            denoiser,
            resume,
            progress,
            folder=folder,
            references=references,
            export_settings=export_settings,
        )
        train_seconds = time.time() - start
        try:
            mesh = extract_mesh(run.nerf, mesh_resolution, config.iso_level, config.min_component_share)
        except EmptyFieldError as error:  # one line naming the kept checkpoint, not a traceback after a long run
            raise no_surface(error, run.step, output_dir, previous_config) from error
        if config.vertex_colours == "delit":
            mesh = delight_colours(mesh)
        paths = export_mesh(mesh, output_dir, formats=mesh_formats)
        remove_stale_meshes(output_dir, paths)
        frames = render_turntable(run.nerf, video_frames, video_resolution, background=config.background)
        video = write_video(
            (frames["rgb"].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8), output_dir / "turntable"
        )
        views = render_turntable(run.nerf, 8, 64, background=config.background)
        save_image_grid(views["rgb"], output_dir / "views.png")
        scores = reference_scores(run)
        # top row: the references over the background; bottom row: the field from the (refined) reference cameras
        grid = torch.cat([scores["targets"], scores["renders"]], dim=2)
        save_image_grid(grid, output_dir / "references.png")
        summary = {
            "images": list(config.images),
            "prompt": config.prompt,
            "steps": run.step,
            "train_seconds": round(train_seconds, 1),
            "total_seconds": round(time.time() - start, 1),
            "reference_psnr": [round(v, 2) for v in scores["psnr"]],
            "reference_mask_iou": [round(v, 4) for v in scores["mask_iou"]],
            "poses": pose_summary(run),
            "mesh": [str(p) for p in paths],
            "mesh_vertices": int(len(mesh.vertices)),
            "mesh_faces": int(len(mesh.faces)),
            "mesh_watertight": bool(mesh.is_watertight),
            "iso_level": float(mesh.metadata["iso_level"]),
            "video": str(video),
            "views": str(output_dir / "views.png"),
            "references": str(output_dir / "references.png"),
        }
        atomic_write_text(output_dir / "summary.json", json.dumps(summary, indent=2))
        return summary
