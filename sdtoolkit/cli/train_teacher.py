"""`sdtoolkit train-teacher`: train a built-in shapes teacher from procedural renders: `--family sd` (default) a small
Stable Diffusion (`builtin:shapes`), `--family sd3` a rectified-flow SD3-layout model (`builtin:shapes-flow`).

Flags come from `TeacherConfig` (`sdtoolkit.models.shapes_teacher`) and `FlowTeacherConfig`
(`sdtoolkit.models.shapes_flow_teacher`) through `sdtoolkit.cli.config_cli`; values resolve as defaults < `--tiny` <
`--config FILE` (the family's config fields, e.g. a teacher's training_config.json) < flags. A flag the chosen
family does not have is refused. The resolved config is saved in OUTPUT/training_config.json.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from sdtoolkit.cli import CLIError, config_cli


@dataclass
class TrainTeacherCommand:
    """What `train-teacher` adds around a `TeacherConfig`."""

    output: str | None = None
    """Folder to write the SD pipeline into (required)."""
    tiny: bool = False
    """A seconds-long smoke configuration (tiny widths and data) for tests; explicit flags still override it."""
    family: str = "sd"
    """Which teacher: "sd" (SD 1.x layout, epsilon prediction, builtin:shapes) or "sd3" (SD3 layout, rectified
    flow, builtin:shapes-flow)."""
    overwrite: bool = False
    """Write over a finished teacher in --output (the files sdtoolkit wrote there are replaced), or beside the
    files of a non-empty folder (refused if one has a name the teacher writes). An unfinished run in --output
    (its checkpoint/) is continued by the same command without it."""


RUN_KIND = "teacher"
"""The kind of run in the output folder's manifest (`sdtoolkit.runs`)."""
ENTRIES = (
    "model_index.json",
    "unet",
    "transformer",
    "vae",
    "text_encoder",
    "text_encoder_2",
    "text_encoder_3",
    "tokenizer",
    "tokenizer_2",
    "tokenizer_3",
    "scheduler",
    "training_config.json",
    "training_log.json",
    "samples.png",
    "metrics.json",
    "README.md",
    "checkpoint",
)
"""Top-level entries a teacher run writes (a user's file of one of these names refuses the folder)."""


def _legacy_teacher(folder: Path) -> set[str]:
    """A teacher folder written before manifests existed (its training_config.json and model_index.json)."""
    if (folder / "training_config.json").is_file() and (folder / "model_index.json").is_file():
        return {name for name in ENTRIES if (folder / name).exists()}
    return set()


TINY = dict(
    num_train_images=32,
    render_chunk=16,
    vae_channels=(8, 16, 16),
    unet_channels=(8, 16, 16),
    text_layers=1,
    text_intermediate_size=32,
    text_hidden_size=16,
    vae_steps=3,
    unet_steps=3,
    vae_batch_size=4,
    batch_size=4,
    warmup_steps=1,
    vae_warmup_steps=1,
    log_every=1,
    sample_prompts=0,
)
"""The `--tiny` smoke configuration (explicit flags still override it)."""

TINY_FLOW = dict(
    num_train_images=32,
    render_chunk=16,
    text_hidden_size=16,
    text_layers=1,
    text_heads=2,
    text_intermediate_size=32,
    transformer_layers=2,
    attention_heads=2,
    attention_head_dim=8,
    transformer_steps=3,
    batch_size=4,
    warmup_steps=1,
    log_every=1,
    sample_prompts=0,
)
"""The `--tiny` smoke configuration of `--family sd3`."""

FAMILIES = ("sd", "sd3")
"""Values of --family."""


def _shown_defaults(sd_cls: type, flow_cls: type) -> tuple[dict[str, str], tuple[str, ...]]:
    """(dotted key -> shown default for flags both families share with different defaults, the shared names)."""
    from dataclasses import fields

    sd = {f.name: config_cli.field_default(f) for f in fields(sd_cls)}
    flow = {f.name: config_cli.field_default(f) for f in fields(flow_cls)}
    shared = tuple(name for name in flow if name in sd)
    shown = {
        f"teacher.{name}": f"{config_cli.show(sd[name])} (--family sd), {config_cli.show(flow[name])} (--family sd3)"
        for name in shared
        if sd[name] != flow[name]
    }
    return shown, shared


def add_parser(subparsers) -> None:
    from sdtoolkit.models.shapes_flow_teacher import FlowTeacherConfig
    from sdtoolkit.models.shapes_teacher import TeacherConfig

    parser = subparsers.add_parser(
        "train-teacher",
        help="Train the built-in shapes teacher (a small Stable Diffusion of rendered 3D shapes).",
        description="Render a fixed set of 3D-shape images, train a small AutoencoderKL, then a UNet and CLIP text "
        "encoder (epsilon prediction, 10% caption dropout for CFG), and write a folder that stock "
        "diffusers.StableDiffusionPipeline.from_pretrained loads. Defaults are the CPU recipe; on a GPU, e.g. "
        "--device cuda --mixed-precision bf16 --batch-size 4096 --vae-batch-size 256 --num-images 30000 "
        "--vae-steps 100000 --unet-steps 100000 --max-minutes 3.5 (the budget then decides the steps). --family sd3 "
        "trains the rectified-flow teacher in SD3's layout instead (StableDiffusion3Pipeline, no T5, the frozen VAE "
        "of builtin:shapes); the shipped builtin:shapes-flow was trained on 2 CPU threads with --family sd3 "
        "--threads 2 --num-images 20000 --transformer-steps 100000 --max-minutes 70 --eval-samples 1200.",
        argument_default=argparse.SUPPRESS,
    )
    config_cli.add_common(
        parser, "JSON config of TeacherConfig fields (e.g. the 'config' of a teacher's training_config.json)."
    )
    names = config_cli.add_flags(parser, TrainTeacherCommand, "command")
    shown, shared = _shown_defaults(TeacherConfig, FlowTeacherConfig)
    group = parser.add_argument_group("teacher (TeacherConfig; flags of both families show both defaults)")
    config_cli.add_flags(
        group,
        TeacherConfig,
        "teacher",
        skip=("teacher.extra",),
        aliases={"teacher.num_train_images": ("--num-images",)},
        defaults=shown,
        names=names,
    )
    flow_group = parser.add_argument_group("flow teacher, --family sd3 only (FlowTeacherConfig)")
    config_cli.add_flags(
        flow_group, FlowTeacherConfig, "teacher", skip=tuple(f"teacher.{n}" for n in shared), names=names
    )
    parser.set_defaults(
        run=run, config_names=names, config_sections={"command": TrainTeacherCommand, "teacher": TeacherConfig}
    )


def build_config(args: argparse.Namespace):
    """(TeacherConfig or FlowTeacherConfig, TrainTeacherCommand) of the parsed flags, every value checked (one line
    per bad value); a flag the chosen --family does not have is refused."""
    from sdtoolkit.models.shapes_flow_teacher import FlowTeacherConfig
    from sdtoolkit.models.shapes_teacher import TeacherConfig

    names = getattr(args, "config_names", {})
    requested = config_cli.given(args)
    command = config_cli.build_section(TrainTeacherCommand, requested.get("command", {}), "command", names)
    if command.family not in FAMILIES:
        raise CLIError(f"--family {command.family!r}: choose one of {', '.join(FAMILIES)}")
    cls = FlowTeacherConfig if command.family == "sd3" else TeacherConfig
    values: dict = dict(TINY_FLOW if command.family == "sd3" else TINY) if command.tiny else {}
    if getattr(args, "config", None) is not None:
        values.update(config_cli.read_config_file(args.config, tuple(cls.__dataclass_fields__)))
    given = requested.get("teacher", {})
    foreign = sorted(key for key in given if key not in cls.__dataclass_fields__)
    if foreign:
        flags = ", ".join(names.get(f"teacher.{key}", key) for key in foreign)
        raise CLIError(f"{flags}: not a setting of --family {command.family} (see train-teacher --help)")
    values.update(given)
    config = config_cli.build_section(cls, values, "teacher", names)
    lines = _architecture_problems(config, command.family)
    if lines:
        config_cli.fail(lines)
    if command.output is None:
        raise CLIError("--output is required: the folder to write the teacher into")
    if config.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CLIError("--device cuda: torch sees no CUDA device here; use --device cpu")
    return config, command


def _architecture_problems(config, family: str) -> list[str]:
    """Settings that are each in range but do not fit together (diffusers / transformers would fail on them deep in
    model building): one line each."""
    lines = []
    if config.text_hidden_size % config.text_heads:
        lines.append(
            f"--text-hidden-size {config.text_hidden_size}: must be a multiple of --text-heads {config.text_heads}"
        )
    if family == "sd":
        widths = (*config.vae_channels, *config.unet_channels)
        if any(width % config.norm_num_groups for width in widths):
            vae, unet = (" ".join(map(str, channels)) for channels in (config.vae_channels, config.unet_channels))
            lines.append(
                f"--norm-num-groups {config.norm_num_groups}: must divide every channel width (--vae-channels {vae}, "
                f"--unet-channels {unet})"
            )
        if not config.beta_start < config.beta_end:
            lines.append(f"--beta-start {config.beta_start} must be below --beta-end {config.beta_end}")
        return lines
    from sdtoolkit.models.loading import ModelNotAvailableError, folder_vae_scale_factor, resolve_model_id

    try:
        folder = resolve_model_id(config.vae_source)
    except (ValueError, ModelNotAvailableError) as error:
        return [*lines, f"--vae-source {config.vae_source}: {error}"]
    factor = folder_vae_scale_factor(folder)
    if factor and config.resolution % factor == 0 and (config.resolution // factor) % config.patch_size:
        lines.append(
            f"--patch-size {config.patch_size}: must divide the latent side {config.resolution // factor} "
            f"(--resolution {config.resolution} / the VAE's factor {factor})"
        )
    return lines


def _command_line(args: argparse.Namespace, command: TrainTeacherCommand) -> str:
    """The flags that were given (for the record in training_config.json)."""
    flags = ["--output", str(command.output)] + (["--tiny"] if command.tiny else [])
    if command.family != "sd":
        flags += ["--family", command.family]
    if getattr(args, "config", None) is not None:
        flags += ["--config", str(args.config)]
    for key, value in config_cli.flatten(config_cli.given(args).get("teacher", {})).items():
        flags += ["--" + key.replace("_", "-"), config_cli.show(value)]
    return "sdtoolkit train-teacher " + " ".join(flags)


def run(args: argparse.Namespace) -> int:
    from sdtoolkit.runs import claim_output, inspect_output

    config, command = build_config(args)
    output = Path(command.output)
    if output.exists() and not output.is_dir():
        raise CLIError(f"--output {output} exists and is not a folder")
    config.extra["command"] = _command_line(args, command)
    # the folder is the user's: a finished teacher is replaced only with --overwrite, an unfinished one (its
    # checkpoint/, no model_index.json yet) is continued by the same command, anything else of the user's is kept
    unfinished = (output / "checkpoint").is_dir() and not (output / "model_index.json").is_file()
    rules = {
        "overwrite": command.overwrite,
        "reserved": ENTRIES,
        "has_checkpoint": lambda folder: (folder / "model_index.json").is_file(),
        "legacy": _legacy_teacher,
        "resumable": False,
    }
    inspect_output(output, RUN_KIND, resume=unfinished and not command.overwrite, **rules)
    with claim_output(output, RUN_KIND, resume=unfinished and not command.overwrite, **rules):
        if command.family == "sd3":
            from sdtoolkit.models.shapes_flow_teacher import train_flow_teacher

            output = train_flow_teacher(config, output)
            print(f"wrote the flow-matching shapes teacher (SD3 layout) to {output}")
            return 0
        from sdtoolkit.models.shapes_teacher_train import train_teacher

        output = train_teacher(config, output)
    print(f"wrote the shapes teacher to {output}")
    return 0
