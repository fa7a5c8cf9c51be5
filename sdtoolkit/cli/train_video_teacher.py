"""`sdtoolkit train-video-teacher`: train the shapes video teacher (a diffusers `MotionAdapter` on the frozen
`builtin:shapes` UNet) on procedural clips and write a stock `AnimateDiffPipeline` folder.

Flags come from `VideoTeacherConfig` (`sdtoolkit.models.shapes_video`) through `sdtoolkit.cli.config_cli`; values
resolve as defaults < `--tiny` < `--config FILE` (VideoTeacherConfig fields, e.g. the "config" of a video teacher's
training_config.json) < flags. The output folder follows `sdtoolkit.runs` (a new or empty folder, or one this
command wrote before with --overwrite; never someone else's files).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

from sdtoolkit.cli import CLIError, config_cli

RUN_KIND = "video-teacher"
"""The kind of run recorded in the output folder's manifest (`sdtoolkit.runs`)."""
ENTRIES = (
    "model_index.json",
    "unet",
    "motion_adapter",
    "vae",
    "text_encoder",
    "tokenizer",
    "scheduler",
    "training_config.json",
)
"""Top-level entries the command writes (a user's file of one of these names refuses the folder)."""


@dataclass
class TrainVideoTeacherCommand:
    """What `train-video-teacher` adds around a `VideoTeacherConfig`."""

    output: str | None = None
    """Folder to write the AnimateDiffPipeline into (required)."""
    overwrite: bool = False
    """Write into a non-empty folder: a previous video-teacher run's own files are replaced, others are kept."""
    tiny: bool = False
    """A seconds-long smoke configuration (4 clips of 4 frames, 2 steps) for tests; explicit flags still win."""


TINY = dict(num_frames=4, num_clips=4, steps=2, batch_size=2, log_every=1, motion_max_seq_length=8)
"""The `--tiny` smoke configuration (explicit flags still override it)."""


def add_parser(subparsers) -> None:
    from sdtoolkit.models.shapes_video import VideoTeacherConfig

    parser = subparsers.add_parser(
        "train-video-teacher",
        help="Train the shapes video teacher (a MotionAdapter on builtin:shapes) into an AnimateDiffPipeline folder.",
        description="Render procedural clips of the 3D shapes (turning clockwise / counter-clockwise or bobbing), "
        "train AnimateDiff motion modules on top of the frozen image teacher (epsilon loss, 10% caption dropout; "
        "the motion words get new token embeddings) and write a folder that stock "
        "diffusers.AnimateDiffPipeline.from_pretrained loads. Score it with `sdtoolkit generate` (GIF/MP4) and "
        "`sdtoolkit eval --clips`.",
        argument_default=argparse.SUPPRESS,
    )
    config_cli.add_common(
        parser,
        "JSON config of VideoTeacherConfig fields (e.g. the 'config' of a video teacher's training_config.json).",
    )
    names = config_cli.add_flags(parser, TrainVideoTeacherCommand, "command")
    group = parser.add_argument_group("video teacher (VideoTeacherConfig)")
    config_cli.add_flags(group, VideoTeacherConfig, "teacher", names=names)
    parser.set_defaults(
        run=run,
        config_names=names,
        config_sections={"command": TrainVideoTeacherCommand, "teacher": VideoTeacherConfig},
    )


def build_config(args: argparse.Namespace):
    """(VideoTeacherConfig, TrainVideoTeacherCommand) of the parsed flags, every value checked."""
    from sdtoolkit.data.clips import MAX_TURN_DEG
    from sdtoolkit.models.shapes_video import VideoTeacherConfig

    names = getattr(args, "config_names", {})
    requested = config_cli.given(args)
    command = config_cli.build_section(TrainVideoTeacherCommand, requested.get("command", {}), "command", names)
    values: dict = dict(TINY) if command.tiny else {}
    if getattr(args, "config", None) is not None:
        fields = tuple(VideoTeacherConfig.__dataclass_fields__)
        saved = ("config", "steps_done", "log", "command")  # a teacher's own training_config.json: its "config"
        loaded = config_cli.read_config_file(args.config, (*fields, *saved))
        if "config" in loaded:
            if not isinstance(loaded["config"], dict):
                raise CLIError(f"--config {args.config}: 'config' must be an object of teacher settings")
            loaded = loaded["config"]
        elif any(key in loaded for key in saved):
            raise CLIError(f"--config {args.config}: {', '.join(k for k in saved if k in loaded)} without 'config'")
        values.update(loaded)
    values.update(requested.get("teacher", {}))
    config = config_cli.build_section(VideoTeacherConfig, values, "teacher", names)
    lines = []
    if command.output is None:
        lines.append("--output is required: the folder to write the video teacher into")
    if config.num_frames < 2 or config.num_frames > config.motion_max_seq_length:
        lines.append(
            f"--num-frames {config.num_frames}: must be from 2 to --motion-max-seq-length "
            f"({config.motion_max_seq_length})"
        )
    for flag, value in (
        ("--steps", config.steps),
        ("--batch-size", config.batch_size),
        ("--num-clips", config.num_clips),
    ):
        if value < 1:
            lines.append(f"{flag} must be at least 1, got {value}")
    if not 0 < config.turn_deg <= MAX_TURN_DEG:
        lines.append(
            f"--turn-deg must be in (0, {MAX_TURN_DEG:g}] (every frame keeps its caption's view word), "
            f"got {config.turn_deg}"
        )
    if not 0 < config.bob_amplitude <= 0.5:
        lines.append(
            f"--bob-amplitude must be in (0, 0.5] world units (the frame is ~2 wide), got {config.bob_amplitude}"
        )
    if not (math.isfinite(config.motion_loss_weight) and config.motion_loss_weight >= 0):
        lines.append(
            f"--motion-loss-weight must be a finite number >= 0 (0: the plain epsilon loss), got "
            f"{config.motion_loss_weight}"
        )
    if not (math.isfinite(config.timestep_power) and config.timestep_power > 0):
        lines.append(f"--timestep-power must be a finite number > 0 (1: uniform t), got {config.timestep_power}")
    if config.motion_word_init not in ("mean", "spread"):
        lines.append(f"--motion-word-init {config.motion_word_init!r}: valid: mean, spread")
    elif config.motion_word_init != "mean" and config.init_from is not None:
        lines.append("--motion-word-init spread with --init-from: the motion words' rows come from that folder")
    if config.embedding_lr is not None and not (math.isfinite(config.embedding_lr) and config.embedding_lr >= 0):
        lines.append(f"--embedding-lr must be a finite number >= 0, got {config.embedding_lr}")
    if not (math.isfinite(config.motion_aux_weight) and config.motion_aux_weight >= 0):
        lines.append(f"--motion-aux-weight must be a finite number >= 0 (0: off), got {config.motion_aux_weight}")
    if config.max_minutes is not None and not (math.isfinite(config.max_minutes) and config.max_minutes >= 0):
        lines.append(f"--max-minutes must be a finite number >= 0 (None: no budget), got {config.max_minutes}")
    if config.probe_clips < 0:
        lines.append(f"--probe-clips must be >= 0 (0: no motion probe), got {config.probe_clips}")
    if not 0 <= config.probe_timestep < 1000:
        lines.append(f"--probe-timestep must be in [0, 999], got {config.probe_timestep}")
    if not 0 <= config.caption_dropout < 1:
        lines.append(f"--caption-dropout must be in [0, 1), got {config.caption_dropout}")
    if not (math.isfinite(config.lr) and config.lr >= 0):
        lines.append(f"--lr must be a finite number >= 0 (0: no update, e.g. to copy --init-from), got {config.lr}")
    try:
        config_cli.check_device(config.device)
    except CLIError as error:
        lines.append(str(error))
    from sdtoolkit.models.loading import ModelNotAvailableError, folder_pixel_multiple, resolve_model_id

    try:
        folder = resolve_model_id(config.image_teacher)
    except (ValueError, ModelNotAvailableError) as error:
        lines.append(f"--image-teacher {config.image_teacher}: {error}")
    else:
        multiple = folder_pixel_multiple(folder)
        if multiple and config.resolution % multiple:
            lines.append(
                f"--resolution {config.resolution}: must be a multiple of {multiple} for this image teacher (its "
                f"VAE's and UNet's downsampling), e.g. {max(multiple, round(config.resolution / multiple) * multiple)}"
            )
        lines += _motion_module_problems(config, folder)
    if config.init_from is not None:
        source = Path(config.init_from)
        index = source / "model_index.json"
        kind = json.loads(index.read_text()).get("_class_name") if index.is_file() else None
        if kind != "AnimateDiffPipeline":
            lines.append(
                f"--init-from {config.init_from}: not a video teacher folder (needs an AnimateDiffPipeline "
                f"model_index.json; found {kind or 'none'})"
            )
        elif command.output is not None and source.resolve() == Path(command.output).resolve():
            lines.append(f"--init-from {config.init_from} is the --output folder; write the new teacher elsewhere")
    if lines:
        config_cli.fail(lines)
    return config, command


def _motion_module_problems(config, folder) -> list[str]:
    """The motion modules sit in the image UNet's blocks: their norm groups and heads divide every block width, and
    their layers per block are the UNet's (diffusers' MotionAdapter refuses others). Read from the folder's
    unet/config.json; nothing to say when it cannot be read (the loader reports that)."""
    try:
        unet = json.loads((Path(folder) / "unet" / "config.json").read_text())
        widths, layers = list(unet["block_out_channels"]), int(unet["layers_per_block"])
    except (OSError, ValueError, KeyError, TypeError):
        return []
    shown = " ".join(map(str, widths))
    lines = []
    for flag, value in (
        ("--motion-norm-num-groups", config.motion_norm_num_groups),
        ("--motion-num-attention-heads", config.motion_num_attention_heads),
    ):
        if value >= 1 and any(width % value for width in widths):
            lines.append(f"{flag} {value}: must divide every block width of the image UNet ({shown})")
    if config.motion_layers_per_block not in (None, layers):
        lines.append(
            f"--motion-layers-per-block {config.motion_layers_per_block}: must be the image UNet's layers_per_block "
            f"({layers}) or left out"
        )
    return lines


def run(args: argparse.Namespace) -> int:
    from sdtoolkit.models.shapes_video import train_video_teacher
    from sdtoolkit.runs import claim_output, inspect_output

    config, command = build_config(args)
    output = Path(command.output)
    # a finished teacher (model_index.json) is kept: writing over it needs --overwrite
    finished = lambda folder: (folder / "model_index.json").is_file()  # noqa: E731
    rules = {"overwrite": command.overwrite, "reserved": ENTRIES, "has_checkpoint": finished, "resumable": False}
    inspect_output(output, RUN_KIND, **rules)  # before the image teacher loads: a refused folder costs nothing
    with claim_output(output, RUN_KIND, **rules):
        train_video_teacher(config, output)
        record = output / "training_config.json"
        stored = json.loads(record.read_text())
        stored["command"] = {"command": config_cli.to_dict(command), "teacher": config_cli.to_dict(config)}
        config_cli.save_config(record, stored)
    print(f"wrote the shapes video teacher (AnimateDiffPipeline) to {output}")
    return 0
