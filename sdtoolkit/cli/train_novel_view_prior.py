"""`sdtoolkit train-novel-view-prior`: train the Zero123-style novel-view prior of the shapes world
(`sdtoolkit.models.novel_view_prior`), the class-specific prior of `sdtoolkit image-to-3d --novel-view-prior`.

Flags come from `NovelViewPriorConfig` through `sdtoolkit.cli.config_cli`; values resolve as defaults < `--config
FILE` (its fields, e.g. the "config" of a prior's novel_view_prior.json) < flags. The resolved config is saved in
OUTPUT/novel_view_prior.json.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from sdtoolkit.cli import CLIError, config_cli


@dataclass
class TrainNovelViewPriorCommand:
    """What `train-novel-view-prior` adds around a `NovelViewPriorConfig`."""

    output: str | None = None
    """Folder to write the prior into (required; new, empty, or an unfinished run's folder to resume: the same
    command continues from its checkpoint/)."""
    quiet: bool = False
    """No progress bars."""


def add_parser(subparsers) -> None:
    from sdtoolkit.models.novel_view_prior import NovelViewPriorConfig

    parser = subparsers.add_parser(
        "train-novel-view-prior",
        help="train the Zero123-style novel-view prior of the shapes world (for image-to-3d)",
        description=(
            "Renders every shape x colour of the shapes world from random cameras, trains a UNet that denoises a "
            "target view given a reference view (concatenated latent) and the relative camera (Zero-1-to-3's T), "
            "scores held-out pairs (PSNR against the true render; the shapes evaluator's shape, colour and view "
            "accuracy) and writes a folder with unet/, vae/, scheduler/, novel_view_prior.json and a README.md "
            "model card. Pass it to `sdtoolkit image-to-3d --novel-view-prior`."
        ),
        argument_default=argparse.SUPPRESS,
    )
    config_cli.add_common(parser, "JSON config of NovelViewPriorConfig fields; flags override it.")
    names = config_cli.add_flags(parser, TrainNovelViewPriorCommand, "command")
    group = parser.add_argument_group("training (NovelViewPriorConfig)")
    config_cli.add_flags(group, NovelViewPriorConfig, "train", names=names)
    parser.set_defaults(
        run=run,
        config_names=names,
        config_sections={"command": TrainNovelViewPriorCommand, "train": NovelViewPriorConfig},
    )


def build_config(args: argparse.Namespace):
    """(NovelViewPriorConfig, TrainNovelViewPriorCommand), every value checked (one line per bad value)."""
    from sdtoolkit.models.novel_view_prior import NovelViewPriorConfig

    names = getattr(args, "config_names", {})
    requested = config_cli.given(args)
    command = config_cli.build_section(TrainNovelViewPriorCommand, requested.get("command", {}), "command", names)
    values: dict = {}
    if getattr(args, "config", None) is not None:
        values = config_cli.read_config_file(args.config, tuple(NovelViewPriorConfig.__dataclass_fields__))
    values.update(requested.get("train", {}))
    config = config_cli.build_section(NovelViewPriorConfig, values, "train", names)
    if command.output is None:
        raise CLIError("--output is required: the folder to write the prior into")
    for flag, (low, high) in (
        ("--elevation-range", config.elevation_range),
        ("--distance-range", config.distance_range),
    ):
        if not low <= high:
            raise CLIError(f"{flag} {low} {high}: the first value must not exceed the second")
    if not (-90 < config.elevation_range[0] and config.elevation_range[1] < 90):
        raise CLIError(f"--elevation-range {config.elevation_range}: elevations must lie in (-90, 90) degrees")
    if config.distance_range[0] <= 0:
        raise CLIError(f"--distance-range {config.distance_range}: distances must be > 0")
    channels, head = list(config.block_out_channels), config.attention_head_dim
    if not channels or any(c < 1 for c in channels) or any(c % head for c in channels[1:]):
        raise CLIError(
            f"--block-out-channels {' '.join(map(str, channels))}: positive widths, and those of the attention levels "
            f"(all but the first) multiples of --attention-head-dim {head}"
        )
    from sdtoolkit.models.loading import ModelNotAvailableError, folder_pixel_multiple, resolve_model_id

    try:
        folder = resolve_model_id(config.vae_source)
    except (ValueError, ModelNotAvailableError) as error:
        raise CLIError(f"--vae-source {config.vae_source}: {error}") from None
    multiple = folder_pixel_multiple(folder, unet_levels=len(channels))
    if multiple and config.resolution % multiple:
        raise CLIError(
            f"--resolution {config.resolution}: must be a multiple of {multiple} (the VAE's downsampling times the "
            f"UNet's {len(channels)} levels), e.g. {max(multiple, round(config.resolution / multiple) * multiple)}"
        )
    return config, command


def run(args) -> int:
    config, command = build_config(args)
    output = Path(command.output)
    from sdtoolkit.models.novel_view_prior import CHECKPOINT_DIR, META_FILE, check_output, train_novel_view_prior

    try:
        check_output(output, config)  # before anything is rendered or written
    except (FileExistsError, ValueError) as error:
        raise CLIError(f"--output {command.output!r}: {error}") from None
    try:
        train_novel_view_prior(config, output, progress=not command.quiet)
    except FloatingPointError as error:
        raise CLIError(f"{error}; lower --lr or check the data") from None
    if (output / CHECKPOINT_DIR).is_dir():  # stopped early (--stop-after): the state is there to resume
        return 0
    metrics = json.loads((output / META_FILE).read_text()).get("metrics")
    if metrics:
        print(json.dumps(metrics, indent=2))
    print(f"saved the novel-view prior to {output}")
    return 0
