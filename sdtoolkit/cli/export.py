"""`sdtoolkit export RUN_DIR OUT_DIR`: turn a finished distillation run into a stock diffusers pipeline folder."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from sdtoolkit.cli import CLIError, config_cli


@dataclass
class ExportCommand:
    """The settings of `sdtoolkit export` (the command line is generated from them: `sdtoolkit.cli.config_cli`)."""

    run_dir: str | None = None
    """A finished run folder (with config.json and student/)."""
    out_dir: str | None = None
    """The folder to write: new, empty, or an earlier export (the files it wrote are replaced; a file of yours put
    among them, e.g. into its unet/, refuses the export). Never RUN_DIR, its student/ or a folder containing them."""
    overwrite: bool = False
    """Write into a non-empty OUT_DIR that is not an earlier export, beside its files; refused if one of the
    export's entries (model_index.json, unet/, vae/, README.md, ...) is already there."""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="Export a distilled student as a ready diffusers pipeline folder.",
        description="Write a complete diffusers pipeline folder (UNet or fused LoRA, the teacher's VAE and text "
        "encoder, the student's scheduler with its training schedule, LoRA weights for load_lora_weights, the "
        "training config and a model card) from RUN_DIR, a finished `sdtoolkit distill` run. Training runs export "
        "to RUN_DIR/export automatically; use this to export elsewhere or again.",
        argument_default=argparse.SUPPRESS,
    )
    config_cli.add_common(parser, "JSON config of the settings below (ExportCommand fields); arguments override it.")
    positional = {"export.run_dir": "RUN_DIR", "export.out_dir": "OUT_DIR"}
    names = config_cli.add_flags(parser, ExportCommand, "export", positional=positional)
    parser.set_defaults(run=run, config_names=names, config_sections={"export": ExportCommand})


def run(args: argparse.Namespace) -> int:
    from sdtoolkit.cli.distill import load_teacher
    from sdtoolkit.distill.loop import CONFIG_NAME
    from sdtoolkit.pipelines.export import SPEC_NAME, ExportSpec, check_export_target, export_pipeline

    config_cli.resolve_flat(args, ExportCommand, "export")
    missing = [name for name in ("run_dir", "out_dir") if getattr(args, name) is None]
    if missing:
        raise CLIError(f"give {' and '.join(name.upper() for name in missing)}: sdtoolkit export RUN_DIR OUT_DIR")
    run_dir, out_dir = Path(args.run_dir), Path(args.out_dir)
    if not (run_dir / CONFIG_NAME).is_file():
        raise CLIError(f"RUN_DIR {run_dir}: no {CONFIG_NAME}; pass the --output folder of `sdtoolkit distill`")
    if not (run_dir / "student" / SPEC_NAME).is_file():
        raise CLIError(
            f"RUN_DIR {run_dir}: no student/{SPEC_NAME}, the run has not finished; finish it with "
            f"`sdtoolkit distill <method> --resume {run_dir}`"
        )
    try:
        check_export_target(out_dir, [run_dir / "student"], overwrite=getattr(args, "overwrite", False))
    except (ValueError, FileExistsError) as error:
        raise CLIError(f"OUT_DIR {error}") from None
    resolved = json.loads((run_dir / CONFIG_NAME).read_text())
    teacher = resolved.get("train", {}).get("teacher")
    if not teacher:
        raise CLIError(f"RUN_DIR {run_dir}: {CONFIG_NAME} names no teacher (train.teacher)")
    spec = ExportSpec.load(run_dir / "student")
    pipeline = load_teacher(teacher)
    overwrite = getattr(args, "overwrite", False)
    from sdtoolkit.runs import folder_lock

    with folder_lock(out_dir):  # a second export into the same folder is refused while this one runs
        export_pipeline(out_dir, pipeline, run_dir / "student", spec, resolved, overwrite=overwrite)
    final = ExportSpec.load(out_dir)
    print(f"exported {final.pipeline_class} + {final.scheduler_class} to {out_dir}; {final.default_call}")
    return 0
