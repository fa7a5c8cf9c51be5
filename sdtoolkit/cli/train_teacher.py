"""`sdtoolkit train-teacher`: train the built-in shapes teacher (a small Stable Diffusion) from procedural renders."""

from __future__ import annotations

import argparse
from pathlib import Path

from sdtoolkit.cli import CLIError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-teacher",
        help="Train the built-in shapes teacher (a small Stable Diffusion of rendered 3D shapes).",
        description="Render a fixed set of 3D-shape images, train a small AutoencoderKL, then a UNet and CLIP text "
        "encoder (epsilon prediction, 10% caption dropout for CFG), and write a folder that stock "
        "diffusers.StableDiffusionPipeline.from_pretrained loads. Defaults are the CPU recipe; on a GPU, e.g. "
        "--device cuda --mixed-precision bf16 --batch-size 4096 --vae-batch-size 256 --num-images 30000 "
        "--vae-steps 100000 --unet-steps 100000 --max-minutes 3.5 (the budget then decides the steps).",
    )
    parser.add_argument("--output", required=True, type=Path, help="Folder to write the SD pipeline into.")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="Where to train (default: cpu).")
    parser.add_argument(
        "--mixed-precision", default="no", choices=("no", "bf16", "fp16"), help="accelerate mixed precision."
    )
    parser.add_argument("--vae-steps", type=int, default=None, help="Maximum VAE optimiser steps.")
    parser.add_argument("--unet-steps", type=int, default=None, help="Maximum UNet + text-encoder optimiser steps.")
    parser.add_argument("--batch-size", type=int, default=None, help="UNet batch size.")
    parser.add_argument("--vae-batch-size", type=int, default=None, help="VAE batch size.")
    parser.add_argument("--lr", type=float, default=None, help="UNet + text-encoder learning rate.")
    parser.add_argument("--vae-lr", type=float, default=None, help="VAE learning rate.")
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="Wall-clock budget of the whole run (rendering, both stages, saving); the stages stop early to fit.",
    )
    parser.add_argument(
        "--vae-time-fraction", type=float, default=None, help="Share of --max-minutes the VAE stage may use."
    )
    parser.add_argument("--num-images", type=int, default=None, help="Size of the fixed rendered training set.")
    parser.add_argument(
        "--num-workers", type=int, default=None, help="CPU processes that render the set (0: render on --device)."
    )
    parser.add_argument(
        "--render-chunk", type=int, default=None, help="Images per render call (part of the data's identity)."
    )
    parser.add_argument("--cache-dir", default=None, help="Keep the rendered set here as safetensors and reuse it.")
    parser.add_argument("--ema-decay", type=float, default=None, help="EMA decay of UNet and text encoder (0: off).")
    parser.add_argument(
        "--checkpoint-minutes", type=float, default=None, help="Write <output>/checkpoint this often (minutes)."
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for CPU runs.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of data, initialisation and training noise.")
    parser.add_argument("--sample-prompts", type=int, default=None, help="Prompts in the samples.png grid (0: none).")
    parser.add_argument(
        "--tiny", action="store_true", help="A seconds-long smoke configuration (tiny widths and data) for tests."
    )
    parser.set_defaults(run=run)


# flag name -> TeacherConfig field
_OVERRIDES = {
    "device": "device",
    "mixed_precision": "mixed_precision",
    "vae_steps": "vae_steps",
    "unet_steps": "unet_steps",
    "batch_size": "batch_size",
    "vae_batch_size": "vae_batch_size",
    "lr": "lr",
    "vae_lr": "vae_lr",
    "max_minutes": "max_minutes",
    "vae_time_fraction": "vae_time_fraction",
    "num_images": "num_train_images",
    "num_workers": "num_workers",
    "render_chunk": "render_chunk",
    "cache_dir": "cache_dir",
    "ema_decay": "ema_decay",
    "checkpoint_minutes": "checkpoint_minutes",
    "threads": "threads",
    "seed": "seed",
    "sample_prompts": "sample_prompts",
}

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


def build_config(args: argparse.Namespace):
    """The `TeacherConfig` of the parsed flags (validated: one-line CLIError on a bad value)."""
    from sdtoolkit.models.shapes_teacher import TeacherConfig

    for name in ("vae_steps", "unet_steps", "batch_size", "vae_batch_size", "num_images", "render_chunk"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise CLIError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    for name in ("num_workers", "threads", "checkpoint_minutes"):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    if args.max_minutes is not None and args.max_minutes <= 0:
        raise CLIError(f"--max-minutes must be > 0, got {args.max_minutes}")
    if args.vae_time_fraction is not None and not 0 < args.vae_time_fraction < 1:
        raise CLIError(f"--vae-time-fraction must lie in (0, 1), got {args.vae_time_fraction}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CLIError("--device cuda: torch sees no CUDA device here; use --device cpu")
    values = dict(TINY) if args.tiny else {}
    for flag, name in _OVERRIDES.items():
        value = getattr(args, flag)
        if value is not None:
            values[name] = value
    return TeacherConfig(**values)


def _flags(args: argparse.Namespace) -> list[str]:
    """The flags that were given (for the record in training_config.json)."""
    flags = ["--output", str(args.output)] + (["--tiny"] if args.tiny else [])
    for flag in _OVERRIDES:
        value = getattr(args, flag)
        if (
            value is not None
            and not (flag == "device" and value == "cpu")
            and not (flag == "mixed_precision" and value == "no")
        ):
            flags += ["--" + flag.replace("_", "-"), str(value)]
    return flags


def run(args: argparse.Namespace) -> int:
    from sdtoolkit.models.shapes_teacher_train import train_teacher

    config = build_config(args)
    if args.output.exists() and not args.output.is_dir():
        raise CLIError(f"--output {args.output} exists and is not a folder")
    config.extra["command"] = "sdtoolkit train-teacher " + " ".join(_flags(args))
    output = train_teacher(config, args.output)
    print(f"wrote the shapes teacher to {output}")
    return 0
