"""`sdtoolkit image-to-3d IMAGE [IMAGE ...] --cameras cams.json --output DIR`: a 3D asset from one or more cut-out
reference images (DreamCar / Magic123 style), exported like text-to-3D's (GLB/OBJ/PLY, turntable, views).

Flags come from the typed configs (`sdtoolkit.cli.config_cli`): `ImageTo3DConfig` (the run; nested configs as
`--nerf.*`, `--novel-cameras.*`, `--regularizers.*`, `--guidance.*`) and `ImageTo3DCommand` (output and export).
Values resolve as: defaults < the run being resumed < `--config FILE` < flags. The images and cameras are read and
checked (one line per problem) before anything is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from sdtoolkit.cli import CLIError, config_cli
from sdtoolkit.cli.text_to_3d import FORMATS, PRESETS, TINY_NERF, _check_prior
from sdtoolkit.core.config import AT_LEAST_1, Bound, OneOf, Range, show

ALIASES = {"lr_encoding": ("--lr",), "guidance.guidance_scale": ("--guidance-scale",)}
"""Short names, as text-to-3d's (dotted config key -> extra flags)."""
PATH_KEYS = ("images", "masks", "cameras")
"""Config keys holding file paths: made absolute, so that a run resumes from any working directory."""


@dataclass
class ImageTo3DCommand:
    """What `image-to-3d` adds around a run's `ImageTo3DConfig`: where it writes, what it exports, how it reports."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "mesh_resolution": Range(8),
        "video_frames": AT_LEAST_1,
        "preset": OneOf(*PRESETS),
    }

    output: str | None = None
    """Output folder (None: runs/<the first image's name>)."""
    mesh_resolution: int = 96
    """Marching-cubes grid size of the exported mesh."""
    formats: str = "glb,obj,ply"
    """Mesh formats, comma-separated, from glb, obj, ply."""
    video_frames: int = 36
    """Frames of the turntable video (mp4 with imageio-ffmpeg, GIF otherwise)."""
    preset: str = "default"
    """NeRF size: 'default' (the --nerf.* defaults) or 'tiny' (text-to-3d's small field, for smoke tests)."""
    quiet: bool = False
    """No progress bar."""


def add_parser(subparsers) -> None:
    from sdtoolkit.image_to_3d import ImageTo3DConfig

    parser = subparsers.add_parser(
        "image-to-3d",
        help="Reconstruct a NeRF from cut-out reference images (+ a text prior's SDS for the unseen sides) and export "
        "a mesh and a turntable.",
        description="Optimise a hash-grid NeRF so that it reproduces the reference views (colour and mask losses) "
        "from their cameras and, with a prompt, scores well under a text prior on random novel views (SDS; "
        "Magic123 / DreamCar), optionally with mirrored views, a symmetric density and pose refinement (DreamCar). "
        "Images: RGBA cut-outs (or RGB with --masks), square, all one size; background removal is out of scope. "
        "Cameras: a JSON file (see sdtoolkit.image_to_3d.inputs); one image without it is a front view. The "
        "resolved config is saved as OUTPUT/config.json.",
        argument_default=argparse.SUPPRESS,
    )
    docs = config_cli.field_docs(ImageTo3DConfig)
    parser.add_argument(
        f"{config_cli.DEST}images",
        nargs="*",
        metavar="IMAGE",
        help=config_cli.help_text(docs["images"], show(ImageTo3DConfig().images)),
    )
    config_cli.add_common(
        parser,
        "JSON config: a run's config.json (ImageTo3DConfig fields), plus an optional 'command' object of the "
        "output/export settings below; flags override it.",
        "Continue the run in --output (or in DIR) from its checkpoint.safetensors. Flags may change only "
        + ", ".join(config_cli.flag_of("", k) for k in ImageTo3DConfig.RESUMABLE)
        + " and the output/export settings; others that differ from the run are refused.",
        nargs="?",
        const="",
        metavar="DIR",
    )
    names: dict[str, str] = {"images": "IMAGE"}
    run_group = parser.add_argument_group("run (ImageTo3DConfig; nested configs as --nerf.*, --guidance.*, ...)")
    config_cli.add_flags(run_group, ImageTo3DConfig, "", skip=("images",), aliases=ALIASES, names=names)
    command_group = parser.add_argument_group("output and export")
    config_cli.add_flags(command_group, ImageTo3DCommand, "command", names=names)
    parser.set_defaults(
        run=run, config_names=names, config_sections={"": ImageTo3DConfig, "command": ImageTo3DCommand}
    )


def _absolute(values: dict[str, Any]) -> dict[str, Any]:
    values = dict(values)
    for key in PATH_KEYS:
        value = values.get(key)
        if isinstance(value, str):
            values[key] = str(Path(value).absolute())
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            values[key] = [str(Path(v).absolute()) for v in value]
    return values


def resolve(args: argparse.Namespace):
    """(ImageTo3DConfig, ImageTo3DCommand, output folder, resume?, References) with every value and every input
    file checked, or CLIError naming each problem (one line each). Reads files only."""
    from sdtoolkit.image_to_3d import ImageTo3DConfig, InputError, load_references

    names: dict[str, str] = getattr(args, "config_names", {})
    requested = config_cli.given(args)
    given_flags = set(requested)  # on the command line (a saved config holds every prior's settings)
    if not requested.get("images"):
        requested.pop("images", None)
    config_file = getattr(args, "config", None)
    if config_file is not None:
        valid = (*[f.name for f in dataclasses.fields(ImageTo3DConfig)], "command")
        requested = config_cli.merge(config_cli.read_config_file(config_file, valid), requested)
    command_values = requested.pop("command", {})
    command = config_cli.build_section(ImageTo3DCommand, command_values, "command", names)
    if command.preset == "tiny":
        requested = config_cli.merge({"nerf": TINY_NERF}, requested)
    requested = _absolute(requested)

    resume = getattr(args, "resume", None)
    if resume and command.output is not None and Path(resume) != Path(command.output):
        raise CLIError(f"--resume {resume} and --output {command.output} name two folders; give one of them")
    first = (requested.get("images") or ["asset"])[0]
    output = Path(resume or command.output or Path("runs") / Path(first).stem)
    if output.exists() and not output.is_dir():
        raise CLIError(f"--output {str(output)!r} exists and is not a folder")
    if resume is not None:
        config_cli.check_resumed_kind(output, "image-to-3d")
        if not (output / "checkpoint.safetensors").exists() or not (output / "config.json").is_file():
            raise CLIError(f"--resume: no checkpoint in {str(output)!r}; run without --resume first")
        try:
            stored = json.loads((output / "config.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CLIError(f"--resume: {output / 'config.json'} is not valid JSON ({error})") from None
        command = config_cli.resumed_command(ImageTo3DCommand, stored, command_values, names)
        lines = config_cli.resume_conflicts(stored, requested, set(ImageTo3DConfig.RESUMABLE), names)
        if lines:
            config_cli.fail(lines)
        requested = config_cli.merge(stored, requested)
    from sdtoolkit.nerf import restoring_checkpoint

    with restoring_checkpoint(resume is not None):  # a resumed sdf_init mesh may be gone: its checkpoint has it
        config = config_cli.build_section(ImageTo3DConfig, requested, "", names)
    if resume is not None:
        config_cli.check_resumed_steps(output, config.steps)
    if not config.images:
        raise CLIError("no reference image given; e.g. sdtoolkit image-to-3d front.png --output runs/asset")
    idle = [  # a prior's settings given without the prior: they would be ignored silently
        (key, need)
        for key, need, present in (
            ("lambda_text", "--prompt", bool(config.prompt)),
            ("guidance", "--prompt", bool(config.prompt)),
            ("lambda_novel_view", "--novel-view-prior", bool(config.novel_view_prior)),
            ("novel_view_guidance", "--novel-view-prior", bool(config.novel_view_prior)),
        )
        if key in given_flags and not present
    ]
    if idle:
        sections = ("guidance", "novel_view_guidance")  # their flags are --guidance.*, --novel-view-guidance.*
        config_cli.fail(
            [
                f"{config_cli.flag_of('', key)}{'.*' if key in sections else ''} needs {need}, which is not given"
                for key, need in idle
            ]
        )
    try:
        references = load_references(
            list(config.images), config.cameras, list(config.masks) or None, config.reference_resolution
        )
    except InputError as error:
        raise CLIError(str(error)) from None
    _check_run(config, command, references)
    return config, command, output, resume is not None, references


def _check_run(config, command: ImageTo3DCommand, references) -> None:
    formats = [f.strip().lower() for f in command.formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise CLIError(
            f"unknown mesh format(s) {bad or command.formats!r} in --formats; choose from {', '.join(FORMATS)}"
        )
    config_cli.check_device(config.device)
    if config.uses_text_prior:
        _check_prior(config)
    if config.uses_novel_view_prior:
        from sdtoolkit.models.novel_view_prior import novel_view_prior_folder

        try:
            novel_view_prior_folder(config.novel_view_prior)
        except (OSError, ValueError) as error:
            raise CLIError(f"--novel-view-prior {config.novel_view_prior}: {error}") from None
    from sdtoolkit.image_to_3d.visual_hull import reference_hull_grid, uses_hull

    if uses_hull(config):  # an empty hull is refused here, before the output folder is claimed
        try:
            reference_hull_grid(config, references)
        except ValueError as error:
            raise CLIError(str(error)) from None


def run(args: argparse.Namespace) -> int:
    config, command, output, resume, references = resolve(args)
    missing = [name for name in ("mcubes", "trimesh", "imageio") if importlib.util.find_spec(name) is None]
    if missing:
        raise CLIError(
            f"image-to-3d needs {', '.join(missing)} for its mesh and video export: pip install 'sdtoolkit[3d]'"
        )
    from sdtoolkit.image_to_3d.generate import generate

    summary = generate(
        config,
        output,
        resume=resume,
        progress=not command.quiet,
        mesh_resolution=command.mesh_resolution,
        mesh_formats=[f.strip().lower() for f in command.formats.split(",") if f.strip()],
        video_frames=command.video_frames,
        references=references,
        export_settings=config_cli.export_settings(command),
    )
    print(json.dumps(summary, indent=2))
    return 0
