"""`sdtoolkit train-teacher`: train the built-in shapes teacher (a small Stable Diffusion) from procedural renders.

Flags come from `TeacherConfig` (`sdtoolkit.models.shapes_teacher`) through `sdtoolkit.cli.config_cli`; values
resolve as defaults < `--tiny` < `--config FILE` (TeacherConfig fields, e.g. a teacher's training_config.json
"config") < flags. The resolved config is saved in OUTPUT/training_config.json.
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


def add_parser(subparsers) -> None:
    from sdtoolkit.models.shapes_teacher import TeacherConfig

    parser = subparsers.add_parser(
        "train-teacher",
        help="Train the built-in shapes teacher (a small Stable Diffusion of rendered 3D shapes).",
        description="Render a fixed set of 3D-shape images, train a small AutoencoderKL, then a UNet and CLIP text "
        "encoder (epsilon prediction, 10% caption dropout for CFG), and write a folder that stock "
        "diffusers.StableDiffusionPipeline.from_pretrained loads. Defaults are the CPU recipe; on a GPU, e.g. "
        "--device cuda --mixed-precision bf16 --batch-size 4096 --vae-batch-size 256 --num-images 30000 "
        "--vae-steps 100000 --unet-steps 100000 --max-minutes 3.5 (the budget then decides the steps).",
        argument_default=argparse.SUPPRESS,
    )
    config_cli.add_common(
        parser, "JSON config of TeacherConfig fields (e.g. the 'config' of a teacher's training_config.json)."
    )
    names = config_cli.add_flags(parser, TrainTeacherCommand, "command")
    group = parser.add_argument_group("teacher (TeacherConfig)")
    config_cli.add_flags(
        group,
        TeacherConfig,
        "teacher",
        skip=("teacher.extra",),
        aliases={"teacher.num_train_images": ("--num-images",)},
        names=names,
    )
    parser.set_defaults(
        run=run, config_names=names, config_sections={"command": TrainTeacherCommand, "teacher": TeacherConfig}
    )


def build_config(args: argparse.Namespace):
    """(TeacherConfig, TrainTeacherCommand) of the parsed flags, every value checked (one line per bad value)."""
    from sdtoolkit.models.shapes_teacher import TeacherConfig

    names = getattr(args, "config_names", {})
    requested = config_cli.given(args)
    command = config_cli.build_section(TrainTeacherCommand, requested.get("command", {}), "command", names)
    values: dict = dict(TINY) if command.tiny else {}
    if getattr(args, "config", None) is not None:
        values.update(config_cli.read_config_file(args.config, tuple(TeacherConfig.__dataclass_fields__)))
    values.update(requested.get("teacher", {}))
    config = config_cli.build_section(TeacherConfig, values, "teacher", names)
    if command.output is None:
        raise CLIError("--output is required: the folder to write the teacher into")
    if config.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CLIError("--device cuda: torch sees no CUDA device here; use --device cpu")
    return config, command


def _command_line(args: argparse.Namespace, command: TrainTeacherCommand) -> str:
    """The flags that were given (for the record in training_config.json)."""
    flags = ["--output", str(command.output)] + (["--tiny"] if command.tiny else [])
    if getattr(args, "config", None) is not None:
        flags += ["--config", str(args.config)]
    for key, value in config_cli.flatten(config_cli.given(args).get("teacher", {})).items():
        flags += ["--" + key.replace("_", "-"), config_cli.show(value)]
    return "sdtoolkit train-teacher " + " ".join(flags)


def run(args: argparse.Namespace) -> int:
    from sdtoolkit.models.shapes_teacher_train import train_teacher

    config, command = build_config(args)
    output = Path(command.output)
    if output.exists() and not output.is_dir():
        raise CLIError(f"--output {output} exists and is not a folder")
    config.extra["command"] = _command_line(args, command)
    output = train_teacher(config, output)
    print(f"wrote the shapes teacher to {output}")
    return 0
