"""`sdtoolkit generate`: sample a text-to-image teacher with stock diffusers into an image grid (rows = prompts)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sdtoolkit.cli import CLIError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="Sample a teacher (builtin:shapes, a folder or a Hub id) into an image grid PNG.",
        description="Load a Stable-Diffusion-style pipeline with stock diffusers, sample --num-images images per "
        "--prompt with the pipeline's own scheduler and classifier-free guidance, and write a grid PNG (one row "
        "per prompt) plus a JSON file with the settings beside it.",
    )
    parser.add_argument(
        "--model", default="builtin:shapes", help="builtin:shapes, a diffusers folder, or a Hub id (cached)."
    )
    parser.add_argument(
        "--prompt",
        action="append",
        dest="prompts",
        default=None,
        help='A prompt, e.g. "a red cube, front view"; repeat the flag for more rows.',
    )
    parser.add_argument("--steps", type=int, default=50, help="Sampler steps (default: 50).")
    parser.add_argument("--guidance", type=float, default=5.0, help="Classifier-free guidance scale (1: off).")
    parser.add_argument("--num-images", type=int, default=4, help="Images per prompt (grid columns).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the initial noise.")
    parser.add_argument("--out", type=Path, default=Path("grid.png"), help="Grid PNG to write (default: grid.png).")
    parser.add_argument("--device", default="cpu", help="torch device to sample on (default: cpu).")
    parser.set_defaults(run=run)


def _check_args(args: argparse.Namespace) -> None:
    if args.steps <= 0:
        raise CLIError(f"--steps must be a positive integer, got {args.steps}")
    if args.num_images <= 0:
        raise CLIError(f"--num-images must be a positive integer, got {args.num_images}")
    if args.guidance < 0:
        raise CLIError(f"--guidance must be >= 0 (1 or less turns guidance off), got {args.guidance}")
    if not args.prompts:
        raise CLIError('give at least one --prompt, e.g. --prompt "a red cube, front view"')
    if args.out.suffix.lower() != ".png":
        raise CLIError(f"--out must be a .png file, got {args.out}")
    if args.device not in ("cpu", "cuda", "mps") and not args.device.startswith("cuda:"):
        raise CLIError(f"--device {args.device!r} is not a torch device; use cpu, cuda, cuda:N or mps")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise CLIError(f"--device {args.device}: torch sees no CUDA device here; use --device cpu")


def run(args: argparse.Namespace) -> int:
    from sdtoolkit.models.loading import ModelNotAvailableError, load_teacher, resolve_model_id

    _check_args(args)
    try:
        resolve_model_id(args.model)
    except (ValueError, ModelNotAvailableError) as error:
        raise CLIError(f"--model {args.model}: {error}") from None
    try:
        pipeline = load_teacher(args.model, device=args.device)
    except (ValueError, OSError) as error:
        raise CLIError(f"--model {args.model}: {error}") from None
    pipeline.set_progress_bar_config(desc="generate")

    from sdtoolkit.models.shapes_teacher import generate_images, image_grid

    start = time.perf_counter()
    images = generate_images(pipeline, args.prompts, args.num_images, args.steps, args.guidance, args.seed)
    seconds = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, args.num_images).save(args.out)
    settings = {
        "model": args.model,
        "prompts": args.prompts,
        "steps": args.steps,
        "guidance": args.guidance,
        "num_images": args.num_images,
        "seed": args.seed,
        "device": args.device,
        "scheduler": type(pipeline.scheduler).__name__,
        "image_size": list(images.shape[-2:]),
        "seconds": round(seconds, 2),
    }
    settings_path = args.out.with_suffix(".json")
    settings_path.write_text(json.dumps(settings, indent=2) + "\n")
    print(f"wrote {args.out} ({len(args.prompts)} rows x {args.num_images} images) and {settings_path}")
    return 0
