"""`sdtoolkit convert-nerf TEACHER --to mlp|tensorf|voxel|hash --output DIR`: Progressive Volume Distillation (Fang
et al., AAAI 2023) of a saved NeRF asset into another representation, with no images (`sdtoolkit.nerf.pvd`).

Flags come from the typed configs (`sdtoolkit.cli.config_cli`): `PVDConfig` (schedule, loss weights, the student's
`--mlp.*` / `--tensorf.*` / `--voxel.*`) and `ConvertNerfCommand` (input, output and export). Values resolve as:
defaults < the run being resumed < `--config FILE` < flags. Every input is checked before anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from sdtoolkit.cli import CLIError, config_cli
from sdtoolkit.core.config import AT_LEAST_1, Bound, Range


@dataclass
class ConvertNerfCommand:
    """What `convert-nerf` adds around a `PVDConfig`: the teacher, where it writes, what it exports."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "mesh_resolution": Range(8),
        "video_frames": AT_LEAST_1,
        "eval_views": AT_LEAST_1,
    }

    teacher: str | None = None
    """The teacher: a text-to-3d or convert-nerf output folder, or the checkpoint.safetensors inside one; or a
    nerfstudio run (nerfacto, tensorf, vanilla-nerf, instant-ngp: its folder, config.yml or .ckpt; needs nerfstudio
    installed)."""
    output: str | None = None
    """Output folder of the converted asset."""
    mesh_resolution: int = 96
    """Marching-cubes grid size of the exported mesh."""
    video_frames: int = 36
    """Frames of the turntable video (mp4 with imageio-ffmpeg, GIF otherwise)."""
    eval_views: int = 20
    """Held-out views on which summary.json reports the student's PSNR against the teacher's renders."""
    quiet: bool = False
    """No progress bar."""


EXPORT_KEYS = ("mesh_resolution", "video_frames", "eval_views")
"""The export settings a resumed conversion takes from its config.json's "command" unless given again."""


def add_parser(subparsers) -> None:
    from sdtoolkit.nerf.pvd import PVDConfig

    parser = subparsers.add_parser(
        "convert-nerf",
        help="Convert a NeRF asset to another representation (hash, mlp, tensorf, voxel) by Progressive Volume "
        "Distillation, without images.",
        description="Progressive Volume Distillation (Fang et al., AAAI 2023): the student of representation --to "
        "is queried at the teacher's own sample points on random rays and fitted in three stages (volume features; "
        "then also density and colour; then also the rendered colour), density clipped before activation. Writes "
        "OUTPUT/checkpoint.safetensors (a NeRF asset: text-to-3d's layout), mesh.glb/obj/ply, a turntable, "
        "comparison.png (teacher row above student row), summary.json (held-out PSNR) and config.json.",
        argument_default=argparse.SUPPRESS,
    )
    config_cli.add_common(
        parser,
        "JSON config: PVDConfig fields, plus an optional 'command' object of the settings below; flags override it.",
        "Continue the conversion in --output (or in DIR) from its checkpoint.safetensors. Flags may change only "
        + ", ".join(config_cli.flag_of("", k) for k in PVDConfig.RESUMABLE)
        + " and the export settings.",
        nargs="?",
        const="",
        metavar="DIR",
    )
    names: dict[str, str] = {}
    config_cli.add_flags(parser.add_argument_group("conversion (PVDConfig)"), PVDConfig, "", names=names)
    command_group = parser.add_argument_group("input, output and export")
    config_cli.add_flags(
        command_group, ConvertNerfCommand, "command", names=names, positional={"command.teacher": "TEACHER"}
    )
    parser.set_defaults(run=run, config_names=names, config_sections={"": PVDConfig, "command": ConvertNerfCommand})


def resolve(args: argparse.Namespace):
    """(PVDConfig, ConvertNerfCommand, teacher path, output folder, resume?) with every value checked, or CLIError
    naming the bad value and the valid choices. Reads files only."""
    from sdtoolkit.nerf.pvd import PVDConfig

    names: dict[str, str] = getattr(args, "config_names", {})
    requested = config_cli.given(args)
    if getattr(args, "config", None) is not None:
        fields = [f.name for f in dataclasses.fields(PVDConfig)]
        saved_keys = ("pvd", "teacher", "nerf", "background")  # a conversion's own config.json
        loaded = config_cli.read_config_file(args.config, (*fields, "command", *saved_keys))
        if "pvd" in loaded:  # a run's config.json: its PVD settings, teacher and command; 'nerf' and 'background'
            # follow from the teacher and --to, and compile_teacher is resolved on each machine (as on resume)
            if not isinstance(loaded["pvd"], dict) or not isinstance(loaded.get("command") or {}, dict):
                raise CLIError(f"--config {args.config}: 'pvd' and 'command' must be objects of settings")
            command_values = dict(loaded.get("command") or {})
            command_values["teacher"] = command_values.get("teacher") or loaded.get("teacher")
            loaded = {**{k: v for k, v in loaded["pvd"].items() if k != "compile_teacher"}, "command": command_values}
        elif any(key in loaded for key in saved_keys):
            found = ", ".join(key for key in saved_keys if key in loaded)
            raise CLIError(f"--config {args.config}: {found} belong to a run's config.json, which also has 'pvd'")
        requested = config_cli.merge(loaded, requested)
    command_values = requested.pop("command", {})
    command = config_cli.build_section(ConvertNerfCommand, command_values, "command", names)
    resume = getattr(args, "resume", None)
    if resume and command.output is not None and Path(resume) != Path(command.output):
        raise CLIError(f"--resume {resume} and --output {command.output} name two folders; give one of them")
    if not (resume or command.output):
        raise CLIError("give --output DIR (the folder of the converted asset)")
    output = Path(resume or command.output)
    teacher = command.teacher
    if resume is not None:
        try:
            stored = json.loads((output / "config.json").read_text())
            stored_pvd, stored_teacher = stored["pvd"], stored["teacher"]
        except (OSError, ValueError, KeyError, TypeError):
            raise CLIError(f"--resume: no convert-nerf run in {str(output)!r}; run without --resume first") from None
        # a run saved before these fields existed: their current defaults may not be what it ran with (a field a
        # resume may change anyway, e.g. --compile-teacher, changes no result and takes the request or its default)
        recorded = set(stored_pvd) | set(PVDConfig.RESUMABLE)
        unrecorded = sorted({f.name for f in dataclasses.fields(PVDConfig)} - recorded)
        if unrecorded:
            raise CLIError(
                f"--resume: the run in {str(output)!r} was saved by an older sdtoolkit and does not record "
                f"{', '.join(config_cli.flag_of('', k) for k in unrecorded)}; it cannot be resumed exactly: start a "
                "new run (its files are left as they are)"
            )
        if teacher is not None and Path(teacher).resolve() != Path(stored_teacher).resolve():
            raise CLIError(f"--resume: TEACHER {teacher!r} is not the run's teacher {stored_teacher!r}")
        teacher = stored_teacher
        # the export settings the run was started with (config.json's "command"), unless given again
        kept = stored.get("command") if isinstance(stored.get("command"), dict) else {}
        kept = {key: kept[key] for key in EXPORT_KEYS if key in kept}
        command = config_cli.build_section(
            ConvertNerfCommand, config_cli.merge(kept, command_values), "command", names
        )
        lines = config_cli.resume_conflicts(stored_pvd, requested, set(PVDConfig.RESUMABLE), names)
        if lines:
            config_cli.fail(lines)
        # the stored compile_teacher is what this machine resolved; unless asked, the resumed run resolves its own
        # (a run resumed where no C++ compiler is installed is not refused for a setting it did not ask for)
        requested = config_cli.merge({k: v for k, v in stored_pvd.items() if k != "compile_teacher"}, requested)
    if teacher is None:
        raise CLIError("give TEACHER: a text-to-3d or convert-nerf output folder (or its checkpoint.safetensors)")
    teacher_folder = Path(teacher) if Path(teacher).is_dir() else Path(teacher).parent
    if output.resolve() == teacher_folder.resolve():
        raise CLIError(
            f"--output {str(output)!r} is the teacher's own folder; the converted asset needs another folder (the "
            "teacher's files would be replaced)"
        )
    config = config_cli.build_section(PVDConfig, requested, "", names)
    if config.stage1_steps > config.stage2_steps:
        raise CLIError(
            f"--stage1-steps {config.stage1_steps} > --stage2-steps {config.stage2_steps}: stage 2 ends at "
            "--stage2-steps, counted from step 0"
        )
    if config.cache_refresh and not config.teacher_cache:
        raise CLIError(f"--cache-refresh {config.cache_refresh} needs --teacher-cache N > 0 (it refreshes that cache)")
    return config, command, Path(teacher), output, resume is not None


def run(args: argparse.Namespace) -> int:
    import importlib.util

    config, command, teacher, output, resume = resolve(args)
    missing = [name for name in ("mcubes", "trimesh", "imageio") if importlib.util.find_spec(name) is None]
    if missing:
        raise CLIError(
            f"convert-nerf needs {', '.join(missing)} for its mesh and video export: pip install 'sdtoolkit[3d]'"
        )
    from sdtoolkit.nerf.convert import TeacherError, check_output_folder, convert, load_nerf_asset, teacher_config

    try:
        teacher_config(config, load_nerf_asset(teacher)[0])  # --compile-teacher where it cannot run is refused
    except TeacherError as error:
        raise CLIError(str(error)) from None
    check_output_folder(config, output, resume)  # OutputFolderError: one line, nothing written
    if config.steps <= config.stage2_steps:  # the stages are absolute step counts, so a short run skips the last
        ends = "1 (volume features)" if config.steps <= config.stage1_steps else "2 (density and colour)"
        print(
            f"note: --steps {config.steps} ends in PVD stage {ends}: stage 2 starts after --stage1-steps "
            f"{config.stage1_steps}, stage 3 (rendered colour) after --stage2-steps {config.stage2_steps}",
            file=sys.stderr,
        )
    summary = convert(
        config,
        teacher,
        output,
        resume=resume,
        progress=not command.quiet,
        mesh_resolution=command.mesh_resolution,
        video_frames=command.video_frames,
        eval_views=command.eval_views,
        command=config_cli.to_dict(command),
    )
    print(json.dumps(summary, indent=2))
    return 0
