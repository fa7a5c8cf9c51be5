"""`sdtoolkit text-to-3d`: a 3D asset from a prompt (SDS, CSD, VSD) or a layout (SemanticSDS), distilled from a 2D
prior into a NeRF, exported as GLB/OBJ/PLY meshes and a turntable video.

Flags come from the typed configs (`sdtoolkit.cli.config_cli`): `TextTo3DConfig` (the run; nested configs as
`--nerf.*`, `--cameras.*`, `--regularizers.*`), the method's guidance config (`--guidance.*`, defaults per method)
and `TextTo3DCommand` (output and export). Values resolve as: defaults < the run being resumed < `--config FILE`
(the layout of a run's config.json, plus an optional "command" object) < flags.
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
from sdtoolkit.core.config import AT_LEAST_1, Bound, OneOf, Range, show

FORMATS = ("glb", "obj", "ply")
PRESETS = ("default", "tiny")
TINY_NERF = {
    "field": {"num_levels": 4, "max_res": 32, "log2_hashmap_size": 12, "hidden_dim": 16},
    "num_samples": 16,
    "occupancy_resolution": 16,
}
"""The `--preset tiny` NeRF (explicit `--nerf.*` flags still override it)."""
ALIASES = {
    "lr_encoding": ("--lr",),
    "nerf.representation": ("--representation",),
    "view_dependent_prompts": ("--view-prompts",),
    "regularizers.lambda_orient": ("--lambda-orient",),
    "regularizers.lambda_opacity": ("--lambda-opacity",),
    "guidance.guidance_scale": ("--guidance-scale",),
    "guidance.weighting": ("--weighting",),
    "guidance.grad_clip": ("--grad-clip",),
    "guidance.timesteps.anneal": ("--t-anneal",),
}
"""Short names kept from the hand-written CLI (dotted config key -> extra flags)."""


@dataclass
class TextTo3DCommand:
    """What `text-to-3d` adds around a run's `TextTo3DConfig`: where it writes, what it exports, how it reports."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "mesh_resolution": Range(8),
        "video_frames": AT_LEAST_1,
        "preset": OneOf(*PRESETS),
    }

    output: str | None = None
    """Output folder (None: runs/<the prompt as a slug>)."""
    mesh_resolution: int = 96
    """Marching-cubes grid size of the exported mesh."""
    formats: str = "glb,obj,ply"
    """Mesh formats, comma-separated, from glb, obj, ply."""
    uv_texture: bool = False
    """Also export a UV-textured mesh (needs xatlas; vertex colours need nothing)."""
    video_frames: int = 36
    """Frames of the turntable video (mp4 with imageio-ffmpeg, GIF otherwise)."""
    preset: str = "default"
    """NeRF size: 'default' (the --nerf.* defaults), or 'tiny' (a small field and few samples, for smoke tests and
    quick looks; --nerf.* flags still override it)."""
    quiet: bool = False
    """No progress bar."""


def add_parser(subparsers) -> None:
    from sdtoolkit.text_to_3d import TextTo3DConfig
    from sdtoolkit.text_to_3d.config import METHODS

    parser = subparsers.add_parser(
        "text-to-3d",
        help="Distil a 2D diffusion prior into a NeRF (SDS/CSD/VSD/SemanticSDS) and export a mesh and a turntable.",
        description="Optimise a hash-grid NeRF so that its renders from random cameras score well under a text-to-"
        "image prior (score distillation), then export the density's iso-surface with vertex colours as GLB/OBJ/PLY "
        "and a turntable video (mp4 with imageio-ffmpeg, GIF otherwise). CFG scales are in the diffusers convention "
        "(threestudio's guidance_scale is ours minus one). The resolved config is saved as OUTPUT/config.json.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument(
        f"{config_cli.DEST}prompt",
        nargs="?",
        metavar="PROMPT",
        help='The prompt, e.g. "a red cube" (for semantic-sds: the optional scene description; objects come from '
        "the layout) (default: '')",
    )
    config_cli.add_common(
        parser,
        "JSON config: a run's config.json (TextTo3DConfig fields, 'guidance' the method's guidance config), plus "
        "an optional 'command' object of the output/export settings below; flags override it.",
        "Continue the run in --output (or in DIR) from its checkpoint.safetensors. Flags may change only "
        + ", ".join(config_cli.flag_of("", k) for k in TextTo3DConfig.RESUMABLE if "." not in k)
        + ", the mesh stage's --mesh_refine.* and the output/export settings; others that differ from the run are "
        "refused.",
        nargs="?",
        const="",
        metavar="DIR",
    )
    names: dict[str, str] = {}
    run_group = parser.add_argument_group("run (TextTo3DConfig; nested configs as --nerf.*, --cameras.*, ...)")
    skip = ("prompt", "layout", "guidance")
    config_cli.add_flags(run_group, TextTo3DConfig, "", skip=skip, aliases=ALIASES, names=names)
    run_group.add_argument(
        "--layout",
        dest=f"{config_cli.DEST}layout",
        metavar="FILE.json",
        help="SemanticSDS layout JSON (objects with a prompt and a 3D box; semantic-sds only) (default: None)",
    )
    guidance_group = parser.add_argument_group(
        "guidance (the method's config; defaults depend on --method and, for sds/semantic-sds, on a builtin: prior)"
    )
    defaults = guidance_defaults()
    for cls in dict.fromkeys(METHODS.values()):
        config_cli.add_flags(
            guidance_group,
            cls,
            "guidance",
            prefix="guidance.",
            skip=tuple(names),
            aliases=ALIASES,
            defaults=defaults,
            names=names,
        )
    command_group = parser.add_argument_group("output and export")
    config_cli.add_flags(command_group, TextTo3DCommand, "command", names=names)
    parser.set_defaults(run=run, config_names=names, config_sections={"": TextTo3DConfig, "command": TextTo3DCommand})


def guidance_defaults() -> dict[str, str]:
    """Dotted guidance key -> the default shown in --help: `sds 20.0 (builtin: prior) / 100.0, csd 40.0, ...`."""
    from sdtoolkit.text_to_3d.config import METHODS, default_guidance, to_dict

    per_method: dict[str, dict[str, str]] = {}
    for method in METHODS:
        builtin = config_cli.flatten(to_dict(default_guidance(method, "builtin:shapes")), "guidance")
        other = config_cli.flatten(to_dict(default_guidance(method, "org/model")), "guidance")
        for key, value in builtin.items():
            text = show(value)
            if other[key] != value:
                text += f" (builtin: prior) / {show(other[key])}"
            per_method.setdefault(key, {})[method] = text
    shown = {}
    for key, texts in per_method.items():
        same = len(texts) == len(METHODS) and len(set(texts.values())) == 1
        shown[key] = next(iter(texts.values())) if same else ", ".join(f"{m} {t}" for m, t in texts.items())
    return shown


def _slug(text: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split())[:60] or "asset"


# ------------------------------------------------------------------------------------------------ resolution


def resolve(args: argparse.Namespace) -> tuple[Any, TextTo3DCommand, Path, bool]:
    """(TextTo3DConfig, TextTo3DCommand, output folder, resume?) with every value checked, or CLIError naming each
    bad value (one line each). Reads files only."""
    from sdtoolkit.text_to_3d import TextTo3DConfig

    names: dict[str, str] = getattr(args, "config_names", {})
    requested = config_cli.given(args)
    config_file = getattr(args, "config", None)
    if config_file is not None:
        valid = (*[f.name for f in dataclasses.fields(TextTo3DConfig)], "guidance_type", "command")
        loaded = config_cli.read_config_file(config_file, valid)
        requested = config_cli.merge(loaded, requested)
    command_values = requested.pop("command", {})
    command = config_cli.build_section(TextTo3DCommand, command_values, "command", names)
    if command.preset == "tiny":
        requested = config_cli.merge({"nerf": TINY_NERF}, requested)
    if isinstance(requested.get("prompt"), str):
        requested["prompt"] = requested["prompt"].strip()

    resume = getattr(args, "resume", None)
    if resume and command.output is not None and Path(resume) != Path(command.output):
        raise CLIError(f"--resume {resume} and --output {command.output} name two folders; give one of them")
    output = Path(resume or command.output or Path("runs") / _slug(requested.get("prompt") or "layout"))
    if output.exists() and not output.is_dir():
        raise CLIError(f"--output {str(output)!r} exists and is not a folder")
    if resume is not None:
        config_cli.check_resumed_kind(output, "text-to-3d")
        if not (output / "checkpoint.safetensors").exists() or not (output / "config.json").is_file():
            raise CLIError(f"--resume: no checkpoint in {str(output)!r}; run without --resume first")
        try:
            stored = json.loads((output / "config.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CLIError(f"--resume: {output / 'config.json'} is not valid JSON ({error})") from None
        command = config_cli.resumed_command(TextTo3DCommand, stored, command_values, names)
        if requested.get("layout") is not None:
            requested["layout"] = _layout(requested["layout"])
        requested.pop("guidance_type", None)
        changeable = set(TextTo3DConfig.RESUMABLE)
        lines = config_cli.resume_conflicts(stored, requested, changeable, names)
        if lines:
            config_cli.fail(lines)
        requested = config_cli.merge(stored, requested)
    from sdtoolkit.nerf import restoring_checkpoint

    with restoring_checkpoint(resume is not None):  # a resumed sdf_init mesh may be gone: its checkpoint has it
        config = build_run(requested, names)
    if resume is not None:
        config_cli.check_resumed_steps(output, config.steps)
    _check_run(config, command)
    return config, command, output, resume is not None


def _layout(value: Any) -> dict:
    from sdtoolkit.text_to_3d.guidance import LayoutError, parse_layout

    try:
        return parse_layout(value).to_json()
    except LayoutError as error:
        shown = value if isinstance(value, str) else "in the config"
        raise CLIError(f"bad layout {shown!r}: {error}") from None


def build_run(values: dict[str, Any], names: dict[str, str]):
    """The `TextTo3DConfig` of resolved values: strict keys and types, bounds, the guidance config of its method
    (a run's `guidance` overrides of keys the method does not have are refused, naming the methods that have it)."""
    from sdtoolkit.text_to_3d import TextTo3DConfig
    from sdtoolkit.text_to_3d.config import METHODS, default_guidance, to_dict

    values = dict(values)
    guidance_type = values.pop("guidance_type", None)
    guidance = values.pop("guidance", None) or {}
    if values.get("layout") is not None:
        values["layout"] = _layout(values["layout"])
    config = config_cli.build_section(TextTo3DConfig, values, "", names)
    cls = METHODS[config.method]
    if guidance_type is not None and guidance_type != cls.__name__:
        raise CLIError(
            f"guidance_type {guidance_type!r} is not the config of --method {config.method} ({cls.__name__})"
        )
    if not isinstance(guidance, dict):
        raise CLIError(f"guidance = {json.dumps(guidance)}: expected an object of {cls.__name__} fields")
    base = to_dict(default_guidance(config.method, config.prior))
    foreign = sorted(set(config_cli.flatten(guidance, "guidance")) - set(config_cli.flatten(base, "guidance")))
    if foreign:
        lines = []
        for key in foreign:
            owners = [m for m, c in METHODS.items() if key in config_cli.flatten(to_dict(c()), "guidance")]
            where = f"applies to {', '.join(owners)}" if owners else "is no guidance setting"
            lines.append(f"{names.get(key, key)} {where}, not --method {config.method}")
        config_cli.fail(lines)
    config.guidance = config_cli.build_section(cls, config_cli.merge(base, guidance), "guidance", names)
    return config


def _check_run(config, command: TextTo3DCommand) -> None:
    """The checks that span fields, files and installed packages."""
    if config.method == "semantic-sds":
        if config.layout is None:
            raise CLIError("--method semantic-sds needs --layout scene.json (objects with a prompt and a 3D box)")
    else:
        if config.layout is not None:
            raise CLIError(f"--layout only applies to --method semantic-sds, not {config.method!r}")
        if not config.prompt:
            raise CLIError('the prompt is empty; give one, e.g. sdtoolkit text-to-3d "a red cube"')
    formats = [f.strip().lower() for f in command.formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise CLIError(
            f"unknown mesh format(s) {bad or command.formats!r} in --formats; choose from {', '.join(FORMATS)}"
        )
    config_cli.check_device(config.device)
    if command.uv_texture and importlib.util.find_spec("xatlas") is None:
        raise CLIError("--uv-texture needs xatlas: pip install xatlas (vertex colours need nothing)")


def _check_prior(config) -> None:
    """The prior exists, and the render resolutions are multiples of its VAE's scale factor."""
    from sdtoolkit.models.loading import (
        ModelNotAvailableError,
        UnsafeWeightsError,
        folder_vae_scale_factor,
        resolve_model_id,
    )

    try:
        folder = resolve_model_id(config.prior)
    except (ValueError, ModelNotAvailableError, UnsafeWeightsError) as error:
        raise CLIError(f"--prior {config.prior!r}: {error}") from None
    if isinstance(folder, Path) and folder.is_dir() and not (folder / "model_index.json").is_file():
        raise CLIError(
            f"--prior {config.prior!r}: {folder} has no model_index.json; the prior is a text-to-image diffusers "
            "pipeline (builtin:shapes, a folder or a Hub id); a novel-view prior goes to image-to-3d "
            "--novel-view-prior"
        )
    factor = folder_vae_scale_factor(folder)
    if factor is None:
        return
    lines = []
    for key in ("resolution", "start_resolution"):
        value = getattr(config, key)
        if value is not None and value % factor:
            lines.append(
                f"--{key.replace('_', '-')} {value}: must be a multiple of the prior's VAE scale factor {factor} "
                f"(e.g. {max(factor, value // factor * factor)} or {-(-value // factor) * factor}) ({key})"
            )
    if lines:
        config_cli.fail(lines)


def run(args: argparse.Namespace) -> int:
    config, command, output, resume = resolve(args)
    missing = [name for name in ("mcubes", "trimesh", "imageio") if importlib.util.find_spec(name) is None]
    if missing:  # checked before any work: the mesh export at the end needs them
        raise CLIError(
            f"text-to-3d needs {', '.join(missing)} for its mesh and video export: pip install 'sdtoolkit[3d]'"
        )
    _check_prior(config)
    from sdtoolkit.text_to_3d import generate

    summary = generate(
        config,
        output,
        resume=resume,
        progress=not command.quiet,
        mesh_resolution=command.mesh_resolution,
        mesh_formats=[f.strip().lower() for f in command.formats.split(",") if f.strip()],
        video_frames=command.video_frames,
        uv_texture=command.uv_texture,
        export_settings=config_cli.export_settings(command),
    )
    print(json.dumps(summary, indent=2))
    return 0
