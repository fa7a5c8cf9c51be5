"""One call from a config to an asset: optimise (or resume), then export the mesh, the turntable video and the
evaluation renders beside the config."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from sdtoolkit.runs import atomic_write_text
from sdtoolkit.text_to_3d.config import TextTo3DConfig
from sdtoolkit.text_to_3d.export import (
    EmptyFieldError,
    delight_colours,
    export_mesh,
    extract_layout_mesh,
    extract_mesh,
    no_surface,
    remove_stale_meshes,
    uv_texture_mesh,
    write_video,
)
from sdtoolkit.text_to_3d.mesh_refine import refine_extracted_mesh
from sdtoolkit.text_to_3d.trainer import CHECKPOINT_FILE, claim_folder, render_turntable, save_image_grid, train


def generate(
    config: TextTo3DConfig,
    output_dir: str | Path,
    denoiser=None,
    resume: bool = False,
    progress: bool = True,
    mesh_resolution: int = 96,
    mesh_formats=("glb", "obj", "ply"),
    video_frames: int = 36,
    video_resolution: int = 64,
    uv_texture: bool = False,
    export_settings: dict | None = None,
) -> dict:
    """Trains, exports and returns a summary dict (also written to `summary.json`). The output folder is claimed for
    the whole call (`sdtoolkit.text_to_3d.trainer.claim_folder`): a previous asset, its checkpoint and config are
    never overwritten unless `resume` continues the run or `config.overwrite` starts it anew."""
    output_dir = Path(output_dir)
    resume = resume and (output_dir / CHECKPOINT_FILE).exists()
    with claim_folder(config, output_dir, resume) as folder:
        return _generate(
            config,
            output_dir,
            denoiser,
            resume,
            progress,
            mesh_resolution,
            mesh_formats,
            video_frames,
            video_resolution,
            uv_texture,
            folder,
            export_settings,
        )


def _generate(
    config,
    output_dir,
    denoiser,
    resume,
    progress,
    mesh_resolution,
    mesh_formats,
    video_frames,
    video_resolution,
    uv_texture,
    folder,
    export_settings=None,
) -> dict:
    start = time.time()
    previous_config = (output_dir / "config.json").read_text() if resume else None
    run = train(
        config,
        output_dir,
        denoiser=denoiser,
        resume=resume,
        progress=progress,
        folder=folder,
        export_settings=export_settings,
    )
    train_seconds = time.time() - start
    try:
        if run.layout is not None:  # one iso-level per box: every object of the layout reaches the mesh
            mesh = extract_layout_mesh(
                run.nerf, run.layout, mesh_resolution, config.iso_level, config.min_component_share
            )
        else:
            level, share = config.iso_level, config.min_component_share
            mesh = extract_mesh(run.nerf, mesh_resolution, level, share, config.iso_mode, run.scene_scale)
    except EmptyFieldError as error:  # one line naming the kept checkpoint, not a traceback after a long run
        raise no_surface(error, run.step, output_dir, previous_config) from error
    mesh = refine_extracted_mesh(mesh, run, progress=progress)  # the mesh stage (off while mesh_refine.steps is 0)
    if config.vertex_colours == "delit":
        mesh = delight_colours(mesh)
    paths = export_mesh(mesh, output_dir, formats=mesh_formats)
    if uv_texture:
        textured = uv_texture_mesh(mesh, run.nerf)
        paths += export_mesh(textured, output_dir, name="mesh_textured", formats=("glb", "obj"))
    remove_stale_meshes(output_dir, paths)
    frames = render_turntable(run.nerf, video_frames, video_resolution, run.scene_scale, background=config.background)
    video = write_video(
        (frames["rgb"].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8), output_dir / "turntable"
    )
    views = render_turntable(run.nerf, 8, 64, run.scene_scale, background=config.background)
    save_image_grid(views["rgb"], output_dir / "views.png")
    summary = {
        "prompt": config.prompt,
        "method": config.method,
        "steps": run.step,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - start, 1),
        "mesh": [str(p) for p in paths],
        "mesh_vertices": int(len(mesh.vertices)),
        "mesh_faces": int(len(mesh.faces)),
        "mesh_watertight": bool(mesh.is_watertight),
        "iso_level": float(mesh.metadata["iso_level"]),
        "objects": mesh.metadata.get("objects"),
        "mesh_refine": mesh.metadata.get("mesh_refine"),
        "video": str(video),
        "views": str(output_dir / "views.png"),
    }
    atomic_write_text(output_dir / "summary.json", json.dumps(summary, indent=2))
    return summary
