"""`sdtoolkit train-evaluator`: train the shapes classifier that `sdtoolkit eval` uses, on fresh renders.

Flags come from `EvaluatorTrainingConfig` (`sdtoolkit.eval.train`) through `sdtoolkit.cli.config_cli`; values
resolve as defaults < `--config FILE` (its fields, e.g. an evaluator's training_config.json "config") < flags. The
resolved config is saved in OUTPUT/training_config.json.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from sdtoolkit.cli import CLIError, config_cli
from sdtoolkit.core.config import AT_LEAST_1, Bound


@dataclass
class TrainEvaluatorCommand:
    """What `train-evaluator` adds around an `EvaluatorTrainingConfig`."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"num_threads": AT_LEAST_1}

    output: str | None = None
    """Folder to write the evaluator into (required; must be empty or new)."""
    num_threads: int | None = None
    """torch CPU threads (None: torch's choice)."""
    quiet: bool = False
    """No progress bars."""


def add_parser(subparsers) -> None:
    from sdtoolkit.eval.train import EvaluatorTrainingConfig

    parser = subparsers.add_parser(
        "train-evaluator",
        help="train the shapes evaluator (classifier + FD features) on fresh renders",
        description=(
            "Renders a training pool and a held-out set of procedural shapes, trains the small CNN classifier "
            "(shape, colour, view heads), and saves it as a diffusers folder with training_config.json, "
            "metrics.json (held-out accuracy) and a README.md model card. This is how assets/evaluator was made."
        ),
        argument_default=argparse.SUPPRESS,
    )
    config_cli.add_common(parser, "JSON config of EvaluatorTrainingConfig fields; flags override it.")
    names = config_cli.add_flags(parser, TrainEvaluatorCommand, "command")
    group = parser.add_argument_group("training (EvaluatorTrainingConfig)")
    config_cli.add_flags(group, EvaluatorTrainingConfig, "train", names=names)
    parser.set_defaults(
        run=run,
        config_names=names,
        config_sections={"command": TrainEvaluatorCommand, "train": EvaluatorTrainingConfig},
    )


def build_config(args: argparse.Namespace):
    """(EvaluatorTrainingConfig, TrainEvaluatorCommand), every value checked (one line per bad value)."""
    from sdtoolkit.eval.train import EvaluatorTrainingConfig

    names = getattr(args, "config_names", {})
    requested = config_cli.given(args)
    command = config_cli.build_section(TrainEvaluatorCommand, requested.get("command", {}), "command", names)
    values: dict = {}
    if getattr(args, "config", None) is not None:
        values = config_cli.read_config_file(args.config, tuple(EvaluatorTrainingConfig.__dataclass_fields__))
    values.update(requested.get("train", {}))
    config = config_cli.build_section(EvaluatorTrainingConfig, values, "train", names)
    if command.output is None:
        raise CLIError("--output is required: the folder to write the evaluator into")
    return config, command


def run(args) -> int:
    config, command = build_config(args)
    output = Path(command.output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise CLIError(f"--output {command.output!r} exists and is not an empty folder; choose a new folder")

    import torch

    from sdtoolkit.eval.train import train_evaluator

    if command.num_threads is not None:
        torch.set_num_threads(command.num_threads)
    metrics = train_evaluator(output, config=config, progress=not command.quiet)
    print(json.dumps(metrics["held_out_accuracy"], indent=2))
    print(f"saved the evaluator to {output}")
    return 0
