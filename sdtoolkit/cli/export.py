"""`sdtoolkit export RUN_DIR OUT_DIR`: turn a finished distillation run into a stock diffusers pipeline folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sdtoolkit.cli import CLIError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="Export a distilled student as a ready diffusers pipeline folder.",
        description="Write a complete diffusers pipeline folder (UNet or fused LoRA, the teacher's VAE and text "
        "encoder, the student's scheduler with its training schedule, LoRA weights for load_lora_weights, the "
        "training config and a model card) from RUN_DIR, a finished `sdtoolkit distill` run. Training runs export "
        "to RUN_DIR/export automatically; use this to export elsewhere or again.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="A finished run folder (with config.json and student/).")
    parser.add_argument(
        "out_dir", metavar="OUT_DIR", help="The folder to write (replaced if it is a previous export)."
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from sdtoolkit.cli.distill import load_teacher
    from sdtoolkit.distill.loop import CONFIG_NAME
    from sdtoolkit.pipelines.export import SPEC_NAME, ExportSpec, export_pipeline

    run_dir, out_dir = Path(args.run_dir), Path(args.out_dir)
    if not (run_dir / CONFIG_NAME).is_file():
        raise CLIError(f"RUN_DIR {run_dir}: no {CONFIG_NAME}; pass the --output folder of `sdtoolkit distill`")
    if not (run_dir / "student" / SPEC_NAME).is_file():
        raise CLIError(
            f"RUN_DIR {run_dir}: no student/{SPEC_NAME}, the run has not finished; finish it with "
            f"`sdtoolkit distill <method> --resume {run_dir}`"
        )
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / SPEC_NAME).is_file():
        raise CLIError(f"OUT_DIR {out_dir} exists and is not a previous export; choose a new or empty folder")
    resolved = json.loads((run_dir / CONFIG_NAME).read_text())
    teacher = resolved.get("train", {}).get("teacher")
    if not teacher:
        raise CLIError(f"RUN_DIR {run_dir}: {CONFIG_NAME} names no teacher (train.teacher)")
    spec = ExportSpec.load(run_dir / "student")
    pipeline = load_teacher(teacher)
    export_pipeline(out_dir, pipeline, run_dir / "student", spec, resolved)
    print(f"exported {spec.pipeline_class} + {spec.scheduler_class} to {out_dir}")
    return 0
