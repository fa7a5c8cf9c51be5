"""`convert-nerf`'s run: load a saved NeRF asset as the teacher, distil it into another representation with PVD
(`sdtoolkit.nerf.pvd`), checkpoint so that a stopped run resumes exactly, and export the student like a text-to-3D
asset (checkpoint, mesh, turntable) plus a teacher-vs-student comparison sheet and held-out PSNR.

A teacher is an output folder of `text-to-3d` or of `convert-nerf` (or the `checkpoint.safetensors` inside one):
its `config.json` holds the `NeRFConfig` under "nerf" and its checkpoint the NeRF's tensors under "nerf.". Or a
nerfstudio run (nerfacto, tensorf, vanilla-nerf, instant-ngp; `sdtoolkit.nerfstudio_plugin.teacher`), whose features
are not comparable with the student's: its conversion has no feature stage (`teacher_config`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from sdtoolkit.core.config import ConfigError, build
from sdtoolkit.data.cameras import Cameras, turntable_cameras
from sdtoolkit.nerf.fields import restoring_checkpoint
from sdtoolkit.nerf.model import NeRF, NeRFConfig
from sdtoolkit.nerf.pvd import (
    PVDConfig,
    build_student,
    inherits_decoder,
    learning_rate,
    own_render_loss,
    point_weights,
    pvd_losses,
    random_rays,
    stage_of,
    teacher_points,
    teacher_ray_colours,
)
from sdtoolkit.runs import (
    RunDiverged,
    RunInterrupted,
    StopSignals,
    a_kind,
    atomic_output,
    atomic_write_text,
    claim_output,
    inspect_output,
    nonfinite_term,
    read_manifest,
)

RUN_KIND = "convert-nerf"
"""The kind of run recorded in the output folder's manifest (`sdtoolkit.runs`)."""
CHECKPOINT_FILE = "checkpoint.safetensors"
STATE_FILE = "checkpoint.json"
CONFIG_FILE = "config.json"
TEACHER_KINDS = ("text-to-3d", RUN_KIND)
"""Output folders whose checkpoint is a NeRF asset a conversion can start from."""
RUN_ENTRIES = (
    CONFIG_FILE,
    CHECKPOINT_FILE,
    STATE_FILE,
    "summary.json",
    "comparison.png",
    "turntable.mp4",
    "turntable.gif",
    *(f"mesh.{fmt}" for fmt in ("glb", "obj", "ply")),
)
"""The top-level entries a conversion writes in its output folder."""


class TeacherError(ValueError):
    """The TEACHER argument is not a NeRF asset sdtoolkit can load; the message says why and what is valid."""


def _teacher_files(path: Path) -> tuple[Path, Path]:
    valid = (
        "give a text-to-3d or convert-nerf output folder, or the checkpoint.safetensors inside one; or a nerfstudio "
        "run (its outputs/EXPERIMENT/METHOD/TIMESTAMP folder, config.yml or .ckpt)"
    )
    if not path.exists():
        raise TeacherError(f"TEACHER {str(path)!r}: no such file or folder; {valid}")
    folder = path if path.is_dir() else path.parent
    if path.is_file() and path.suffix != ".safetensors":
        raise TeacherError(f"TEACHER {str(path)!r} is not a .safetensors checkpoint; {valid}")
    manifest = read_manifest(folder)
    kind = manifest.get("kind") if manifest else None
    if kind is not None and kind not in TEACHER_KINDS:
        raise TeacherError(f"TEACHER {str(folder)!r} holds {a_kind(kind)} run, not a NeRF asset; {valid}")
    checkpoint = path if path.is_file() else folder / CHECKPOINT_FILE
    missing = [str(p) for p in (checkpoint, folder / CONFIG_FILE) if not p.is_file()]
    if missing:
        raise TeacherError(f"TEACHER {str(path)!r}: {' and '.join(missing)} missing (an asset has both); {valid}")
    return folder, checkpoint


def load_nerf_asset(path: str | Path, device: str = "cpu") -> tuple[NeRF, dict]:
    """The NeRF saved in a text-to-3d / convert-nerf folder (or its checkpoint file), and its config.json as a dict.
    Raises `TeacherError` (one line: what is wrong, what is valid) for anything else."""
    from safetensors import safe_open

    from sdtoolkit.nerfstudio_plugin.teacher import is_nerfstudio_run

    if is_nerfstudio_run(Path(path)):
        from sdtoolkit.nerfstudio_plugin.teacher import load_nerfstudio_teacher

        return load_nerfstudio_teacher(path, device, error=TeacherError)
    folder, checkpoint = _teacher_files(Path(path))
    try:
        stored = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError) as error:
        raise TeacherError(f"TEACHER {str(folder)!r}: {CONFIG_FILE} is not valid JSON ({error})") from None
    if not isinstance(stored, dict) or not isinstance(stored.get("nerf"), dict):
        raise TeacherError(f"TEACHER {str(folder)!r}: its {CONFIG_FILE} has no 'nerf' settings; it is no NeRF asset")
    if stored.get("layout") is not None:
        raise TeacherError(
            f"TEACHER {str(folder)!r} is a semantic-sds (layout) asset; convert-nerf supports single-object assets"
        )
    try:
        with restoring_checkpoint():  # a mesh sdf_init lives on in the checkpoint's grid, not in its file
            nerf_config = build(NeRFConfig, stored["nerf"], "nerf", lambda key: key)
    except ConfigError as error:
        raise TeacherError(f"TEACHER {str(folder)!r}: bad 'nerf' settings: {'; '.join(error.lines)}") from None
    try:
        with safe_open(str(checkpoint), framework="pt", device=device) as handle:
            tensors = {k[5:]: handle.get_tensor(k) for k in handle.keys() if k.startswith("nerf.")}
    except Exception as error:  # safetensors raises its own error types for a file that is not one of its
        raise TeacherError(f"TEACHER {str(checkpoint)!r} is not a safetensors checkpoint ({error})") from None
    if not tensors:
        raise TeacherError(
            f"TEACHER {str(checkpoint)!r} holds no NeRF ('nerf.*' tensors): a checkpoint of another kind"
        )
    with restoring_checkpoint():
        nerf = NeRF(nerf_config).to(device)
    try:
        nerf.load_state_dict(tensors)
    except RuntimeError as error:
        first = str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else str(error)
        raise TeacherError(f"TEACHER {str(checkpoint)!r} does not match its config.json ({first})") from None
    nerf.eval()
    return nerf, stored


def teacher_config(config: PVDConfig, teacher: NeRF) -> PVDConfig:
    """`config` as it applies to `teacher`: a teacher whose volume features are not comparable with the student's
    (a nerfstudio field) gets no feature loss and no feature-only stage (stages 2 and 3 from step 0); a teacher
    whose samples partition its rays (nerfacto's proposal sampler) passes no occupancy grid to the student.
    `inherit_decoder` None is resolved (`pvd.inherits_decoder`), and so are the colour weight (`pvd.point_weights`)
    and `compile_teacher` (a nerfstudio teacher where torch.compile can run)."""
    density, colour = point_weights(config)
    config = dataclasses.replace(config, loss_density=density, loss_colour=colour)
    if getattr(teacher, "samples_partition_rays", False):
        config = dataclasses.replace(config, inherit_occupancy=False, student_samples="own")
    if getattr(teacher.field, "comparable_features", True):
        if config.compile_teacher:
            raise TeacherError(
                "--compile-teacher compiles a nerfstudio teacher's hash encodings; this TEACHER is an sdtoolkit asset"
            )
        return dataclasses.replace(config, inherit_decoder=inherits_decoder(config, teacher), compile_teacher=False)
    if config.inherit_decoder:
        raise TeacherError("--inherit-decoder needs an sdtoolkit teacher; a nerfstudio field has no such decoder")
    from sdtoolkit.nerfstudio_plugin.teacher import compile_unavailable

    device = str(teacher.device)
    if config.compile_teacher:
        check_compile(device)
    compiled = compile_unavailable(device) is None if config.compile_teacher is None else config.compile_teacher
    return dataclasses.replace(
        config, stage1_steps=0, loss_feature=0.0, inherit_decoder=False, compile_teacher=compiled
    )


def check_compile(device: str = "cpu") -> None:
    """Raises `TeacherError` where `PVDConfig.compile_teacher` cannot run (the CPU without a C++ compiler)."""
    from sdtoolkit.nerfstudio_plugin.teacher import compile_unavailable

    why = compile_unavailable(device)
    if why:
        raise TeacherError(f"--compile-teacher: {why}; or leave the flag off")


def compile_teacher(teacher: NeRF, device: str = "cpu") -> int:
    """`PVDConfig.compile_teacher`: compiles a nerfstudio teacher's hash encodings; returns how many."""
    from sdtoolkit.nerfstudio_plugin.teacher import compile_hash_encodings

    check_compile(device)
    return compile_hash_encodings(teacher)


@dataclass
class ConvertRun:
    """A conversion in progress (the attributes `sdtoolkit.text_to_3d.trainer.save_checkpoint` reads)."""

    config: PVDConfig
    teacher: NeRF
    nerf: NeRF
    """The student."""
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    background: torch.Tensor
    guidance: object = None
    step: int = 0
    history: list[dict] = field(default_factory=list)
    cache: list = field(default_factory=list)
    """`PVDConfig.teacher_cache` batches of (rays, teacher points, teacher ray colours), drawn once."""


def setup(config: PVDConfig, teacher: NeRF, background=(1.0, 1.0, 1.0)) -> ConvertRun:
    """The student (seeded), its Adam optimiser (PVD: one learning rate for all) and the random stream."""
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    student = build_student(config, teacher)
    optimizer = torch.optim.Adam(student.field.parameters(), lr=config.lr, betas=(0.9, 0.99), eps=1e-15)
    bg = torch.as_tensor(background, dtype=torch.float32, device=teacher.device)
    run = ConvertRun(config, teacher, student, optimizer, generator, bg)
    if config.teacher_cache:
        cache_generator = torch.Generator().manual_seed(config.seed + 1)
        run.cache = [teacher_batch(run, cache_generator) for _ in range(config.teacher_cache)]
    return run


def teacher_batch(run: ConvertRun, generator: torch.Generator) -> tuple:
    """Random rays, the teacher's points on them and, when stage 3 renders the student with its own samples, the
    teacher's ray colours."""
    rays = random_rays(run.config, generator, run.teacher.device)
    points = teacher_points(run.teacher, rays, generator, run.config.empty_fraction)
    colours = None
    if run.config.student_samples == "own":
        colours = teacher_ray_colours(points, len(rays), run.background[None])
    return rays, points, colours


def refresh_number(config: PVDConfig, step: int) -> int:
    """The number r >= 1 of the cache refresh made just before step `step` (`PVDConfig.cache_refresh`), 0: none."""
    every = config.cache_refresh
    return step // every if config.teacher_cache and every and step and step % every == 0 else 0


def refreshed_batch(run: ConvertRun, number: int) -> tuple:
    """Refresh `number`'s batch, from its own seeded generator (a resumed run redraws it identically)."""
    return teacher_batch(run, torch.Generator().manual_seed((run.config.seed + 1) * 1_000_003 + number))


def restore_refreshes(run: ConvertRun) -> None:
    """After a resume at `run.step`: the cache as the refreshes before that step left it (per slot, the last)."""
    last = {}
    for step in range(1, run.step):
        if refresh_number(run.config, step):
            last[step % len(run.cache)] = refresh_number(run.config, step)
    for slot, number in last.items():
        run.cache[slot] = refreshed_batch(run, number)


def training_step(run: ConvertRun) -> dict[str, float]:
    """One PVD step on fresh random rays; returns its logs."""
    if run.cache:
        number = refresh_number(run.config, run.step)
        if number:
            run.cache[run.step % len(run.cache)] = refreshed_batch(run, number)
        rays, points, colours = run.cache[run.step % len(run.cache)]
    else:
        rays, points, colours = teacher_batch(run, run.generator)
    stage = stage_of(run.config, run.step)
    logs: dict[str, float] = {"stage": float(stage), "points": float(len(points.positions))}
    if points.samples is not None and len(points.positions):
        losses = pvd_losses(run.config, run.step, run.nerf, run.teacher, points, run.background[None].expand(-1, 3))
        if stage == 3 and run.config.student_samples == "own":
            run.nerf.update_occupancy(run.step, run.generator)
            losses["loss_rgb"] = own_render_loss(run.config, run.nerf, rays, colours, run.background, run.generator)
        for group in run.optimizer.param_groups:
            group["lr"] = learning_rate(run.config, run.step)
        run.optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        logs.update({k: float(v.detach()) for k, v in losses.items()})
        bad = nonfinite_term(logs, run.optimizer) if run.config.max_nonfinite_steps > 0 else None
        if bad is not None:  # the non-finite guard: no student or Adam update this step
            run.optimizer.zero_grad(set_to_none=True)
            if not (torch.isfinite(points.raw).all() and torch.isfinite(points.features).all()):
                bad += " (the teacher's own outputs are not finite)"
            logs["skipped"] = 1.0
            logs["nonfinite_term"] = bad
        else:
            run.optimizer.step()
    run.step += 1
    logs["step"] = run.step
    return logs


# ------------------------------------------------------------------------------------------------- evaluation


def heldout_cameras(n: int = 20, distance: float = 2.8, fov: float = 40.0) -> Cameras:
    """`n` evaluation views no step trains on exactly: azimuths offset half a step from the turntable's, elevations
    alternating 5 / 35 degrees."""
    azimuth = (torch.arange(n, dtype=torch.float32) + 0.5) * (360.0 / n) - 180.0
    elevation = torch.where(torch.arange(n) % 2 == 0, torch.tensor(5.0), torch.tensor(35.0))
    return Cameras(azimuth, elevation, torch.full((n,), distance), torch.full((n,), fov))


@torch.no_grad()
def render_views(nerf: NeRF, cameras: Cameras, resolution: int = 64, background=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """`[B, 3, H, W]` renders (unjittered samples), one camera at a time."""
    images = [
        nerf.render(cameras[i].to(nerf.device), resolution, background=background, stratified=False)["rgb"].cpu()
        for i in range(len(cameras))
    ]
    return torch.cat(images)


def psnr(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image, 10 log10(1 / MSE) for values in [0, 1]."""
    mse = (images - reference).square().flatten(1).mean(1).clamp_min(1e-10)
    return -10 * torch.log10(mse)


def refresh_occupancy(nerf: NeRF, seed: int = 0, teacher: NeRF | None = None) -> None:
    """The converted student's occupancy grid: the teacher's (PVD's inherited grid, when `teacher` is given and the
    grids match), else rebuilt from the student's own density (it was never rendered while distilled)."""
    if nerf.occupancy is None:
        return
    if (
        teacher is not None
        and teacher.occupancy is not None
        and teacher.occupancy.resolution == nerf.occupancy.resolution
    ):
        nerf.occupancy.load_state_dict(teacher.occupancy.state_dict())
    else:
        nerf.occupancy.initialised.fill_(False)
        nerf.update_occupancy(0, torch.Generator().manual_seed(seed), force=True)


# ------------------------------------------------------------------------------------------------- the run


def _folder_rules(config: PVDConfig, resume: bool) -> dict:
    return {
        "resume": resume,
        "overwrite": config.overwrite,
        "has_checkpoint": lambda folder: (folder / CHECKPOINT_FILE).exists(),
        "reserved": RUN_ENTRIES,
    }


def check_output_folder(config: PVDConfig, output_dir: str | Path, resume: bool = False) -> str:
    """Whether a conversion may write into `output_dir` (`sdtoolkit.runs.inspect_output`); writes nothing."""
    return inspect_output(output_dir, RUN_KIND, **_folder_rules(config, resume))


def resolved_config(
    config: PVDConfig, teacher_path, student: NeRF, command: dict | None = None, background=(1.0, 1.0, 1.0)
) -> dict:
    """The config.json of a conversion: the PVD settings, the teacher, and the student's `NeRFConfig` under "nerf"
    (so the output folder is itself a NeRF asset another conversion can start from)."""

    def to_dict(config) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(config), default=str))

    return {
        "teacher": str(Path(teacher_path).resolve()),
        "pvd": to_dict(config),
        "nerf": to_dict(student.config),
        "background": list(background),
        "command": command or {},
    }


def convert(
    config: PVDConfig,
    teacher_path: str | Path,
    output_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    stop_at: int | None = None,
    mesh_resolution: int = 96,
    video_frames: int = 36,
    eval_views: int = 20,
    command: dict | None = None,
    device: str = "cpu",
    export_outputs: bool = True,
    log_every: int = 100,
) -> dict:
    """Runs (or resumes) a conversion into `output_dir` and exports it; returns the summary (also summary.json).
    `stop_at` ends the loop early at that step after a checkpoint, as an interrupted run would (no export);
    `export_outputs=False` skips the export (the checkpoint is the result). With `progress`, the losses are also
    printed as a line every `log_every` steps and at the end of each stage."""
    from sdtoolkit.text_to_3d.trainer import load_checkpoint, save_checkpoint

    teacher, stored = load_nerf_asset(teacher_path, device)  # before the folder is claimed: nothing written
    config = teacher_config(config, teacher)
    if config.compile_teacher:
        compile_teacher(teacher, device)
    background = tuple(stored.get("background") or (1.0, 1.0, 1.0))
    output_dir = Path(output_dir)
    resume = resume and (output_dir / CHECKPOINT_FILE).exists()
    with claim_output(output_dir, RUN_KIND, **_folder_rules(config, resume)), StopSignals() as stop:
        run = setup(config, teacher, background)
        if resume:
            load_checkpoint(run, output_dir)
            if run.cache:
                restore_refreshes(run)
        atomic_write_text(
            output_dir / CONFIG_FILE,
            json.dumps(resolved_config(config, teacher_path, run.nerf, command, background), indent=2),
        )
        end = config.steps if stop_at is None else min(stop_at, config.steps)
        start = time.time()
        bar = tqdm(total=config.steps, initial=run.step, desc="convert-nerf", unit="step", disable=not progress)
        skipped = 0
        while run.step < end:
            logs = training_step(run)
            run.history.append(logs)
            skipped = skipped + 1 if logs.get("skipped") else 0
            bar.update(1)
            shown = {k[5:]: f"{v:.3g}" for k, v in logs.items() if k.startswith("loss_")}
            bar.set_postfix(stage=int(logs["stage"]), **shown)
            if progress and skipped:
                bar.write(f"step {run.step}: {logs['nonfinite_term']} is not finite; update skipped")
            if progress and (run.step % log_every == 0 or stage_of(config, run.step) != logs["stage"]):
                losses = " ".join(f"{k}={v}" for k, v in shown.items())
                bar.write(
                    f"step {run.step} stage {int(logs['stage'])} {losses} ({bar.format_dict['rate'] or 0:.2f} step/s)"
                )
            if config.max_nonfinite_steps > 0 and skipped >= config.max_nonfinite_steps:
                bar.close()
                raise RunDiverged(
                    f"step {run.step}: {logs['nonfinite_term']} was not finite in {skipped} consecutive steps (each "
                    f"skipped); the conversion diverged, most likely because the learning rate is too high (lr "
                    f"{config.lr:g}, {learning_rate(config, run.step - 1):.3g} at this step); no mesh was exported "
                    f"and {_kept_checkpoint(output_dir)}"
                )
            if skipped and stop.requested:
                bar.close()
                raise RunInterrupted(
                    f"{stop.name} at step {run.step} while non-finite steps were being skipped: no new checkpoint; "
                    f"continue with `sdtoolkit convert-nerf --resume {output_dir}`",
                    exit_code=stop.exit_code,
                )
            if skipped:
                continue  # no checkpoint while steps are being skipped
            if (config.checkpoint_every and run.step % config.checkpoint_every == 0) or stop.requested:
                save_checkpoint(run, output_dir)
            if stop.requested:
                bar.close()
                raise RunInterrupted(
                    f"{stop.name} at step {run.step}: checkpoint written; continue with "
                    f"`sdtoolkit convert-nerf --resume {output_dir}`",
                    exit_code=stop.exit_code,
                )
        bar.close()
        save_checkpoint(run, output_dir)
        train_seconds = time.time() - start
        if stop.requested:  # during the last step or its checkpoint: stop before the export
            raise RunInterrupted(
                f"{stop.name} after the last step ({run.step}; its checkpoint is written): nothing was exported; "
                f"`sdtoolkit convert-nerf --resume {output_dir}` exports it",
                exit_code=stop.exit_code,
            )
        stop.__exit__()  # the export: Ctrl-C stops at once (the checkpoint is complete; a resume exports again)
        if not export_outputs or (stop_at is not None and run.step < config.steps):
            return {"steps": run.step, "stopped": run.step < config.steps}
        return export(run, output_dir, train_seconds, mesh_resolution, video_frames, eval_views, background)


def _kept_checkpoint(output_dir: Path) -> str:
    from sdtoolkit.text_to_3d.trainer import read_checkpoint_state

    try:
        step = read_checkpoint_state(output_dir)["step"]
    except (KeyError, TypeError):
        return "no checkpoint was written yet"
    return f"the last good checkpoint is {output_dir / CHECKPOINT_FILE} (step {step})"


def export(run: ConvertRun, output_dir: Path, train_seconds, mesh_resolution, video_frames, eval_views, background):
    """Mesh, turntable, comparison sheet and held-out PSNR of the converted student; writes summary.json."""
    from sdtoolkit.text_to_3d.export import export_mesh, extract_mesh, write_video
    from sdtoolkit.text_to_3d.trainer import save_checkpoint, save_image_grid

    start = time.time()
    student, teacher = run.nerf, run.teacher
    refresh_occupancy(student, run.config.seed, teacher if run.config.inherit_occupancy else None)
    save_checkpoint(run, output_dir)  # with the refreshed occupancy grid
    mesh = extract_mesh(student, mesh_resolution)
    paths = export_mesh(mesh, output_dir)
    frames = render_views(student, turntable_cameras(video_frames), 64, background)
    video = write_video((frames.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8), output_dir / "turntable")
    sheet_cameras = turntable_cameras(8)
    sheet = torch.cat(
        [render_views(teacher, sheet_cameras, 64, background), render_views(student, sheet_cameras, 64, background)],
        dim=2,
    )  # teacher row above student row
    with atomic_output(output_dir / "comparison.png") as tmp:
        save_image_grid(sheet, tmp)
    cameras = heldout_cameras(eval_views)
    scores = psnr(render_views(student, cameras, 64, background), render_views(teacher, cameras, 64, background))
    last = {k: v for k, v in (run.history[-1] if run.history else {}).items() if k.startswith("loss_")}
    summary = {
        "to": run.config.to,
        "steps": run.step,
        "train_seconds": round(train_seconds, 1),
        "export_seconds": round(time.time() - start, 1),
        "psnr_median": round(float(scores.median()), 2),
        "psnr_views": [round(float(s), 2) for s in scores],
        "final_losses": last,
        "parameters": int(sum(p.numel() for p in student.field.parameters())),
        "mesh": [str(p) for p in paths],
        "mesh_faces": int(len(mesh.faces)),
        "video": str(video),
        "comparison": str(output_dir / "comparison.png"),
    }
    if not math.isfinite(summary["psnr_median"]):
        summary["psnr_median"] = None
    atomic_write_text(output_dir / "summary.json", json.dumps(summary, indent=2))
    return summary
