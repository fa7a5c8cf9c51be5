"""`sdtoolkit generate`: sample a text-to-image teacher or an exported student with stock diffusers into an image
grid (rows = prompts); an export (a folder with `export.json`) is sampled with its trained call by default. Video
models (stock `AnimateDiffPipeline` folders: the shapes video teacher, `distill mcm` exports) write an animated GIF
grid, an MP4 of it when imageio-ffmpeg is importable, and optionally one GIF per clip for `sdtoolkit eval --clips`."""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from sdtoolkit.cli import CLIError, config_cli
from sdtoolkit.core.config import AT_LEAST_1, SEED, Bound, Range


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="Sample a teacher (builtin:shapes, a folder or a Hub id) into an image grid PNG.",
        description="Load a Stable-Diffusion-style pipeline with stock diffusers, sample --num-images images per "
        "--prompt with the pipeline's own scheduler and classifier-free guidance, and write a grid PNG (one row "
        "per prompt) plus a JSON file with the settings beside it. A folder written by `sdtoolkit export` (with "
        "export.json) is sampled with its trained steps, guidance and timesteps unless --steps / --guidance say "
        "otherwise. A video model (AnimateDiffPipeline) writes an animated GIF grid (--out with .gif), an MP4 beside "
        "it "
        "when imageio-ffmpeg is importable, and with --clips-dir one GIF per clip plus prompts.txt (the layout "
        "`sdtoolkit eval --clips` scores). Existing --out files are kept unless --overwrite.",
        argument_default=argparse.SUPPRESS,
    )
    config_cli.add_common(parser, "JSON config of the settings below (GenerateConfig fields); flags override it.")
    names = config_cli.add_flags(parser, GenerateConfig, "generate", repeat={"generate.prompts": "--prompt"})
    parser.set_defaults(run=run, config_names=names, config_sections={"generate": GenerateConfig})


DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 5.0
MAX_STEPS = 1000


@dataclass
class GenerateConfig:
    """The settings of `sdtoolkit generate` (the command line is generated from them: `sdtoolkit.cli.config_cli`)."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "steps": Range(1, MAX_STEPS),
        "guidance": Range(0, 1000),  # --guidance 1e30 gave NaN latents: a black grid, exit 0
        "num_images": AT_LEAST_1,
        "seed": SEED,
        "num_frames": Range(2),
    }

    model: str = "builtin:shapes"
    """builtin:shapes, a diffusers folder, or a Hub id (cached)."""
    prompts: tuple[str, ...] | None = None
    """A prompt, e.g. "a red cube, front view"; repeat the flag for more rows."""
    steps: int | None = None
    """Sampler steps (None: an export's trained steps, else 50)."""
    guidance: float | None = None
    """Classifier-free guidance scale, 1: off (None: an export's trained guidance_scale, else 5; for a student with
    a w-embedding it is w + 1, with a zero one it has no effect)."""
    num_images: int = 4
    """Images per prompt (grid columns)."""
    seed: int = 0
    """Seed of the initial noise."""
    out: str = "grid.png"
    """Grid PNG to write (the settings go to the same name with .json); for a video model an animated GIF grid (a
    .png name becomes .gif) and, when imageio-ffmpeg is importable, an MP4 of the same name."""
    num_frames: int | None = None
    """Frames per clip of a video model (None: the video teacher's training num_frames, else 16, at most what its
    motion modules take)."""
    clips_dir: str | None = None
    """Video models: also write each clip as its own GIF with prompts.txt into this folder (for eval --clips)."""
    images_dir: str | None = None
    """Image models: also write each image as its own PNG (00000.png, ...) with prompts.txt, one line per image,
    into this folder: the layout `sdtoolkit eval --images` scores (a grid PNG is one image to it)."""
    device: str = "cpu"
    """torch device to sample on."""
    overwrite: bool = False
    """Replace an existing --out PNG and its settings JSON (and --images-dir / --clips-dir files of the same
    names)."""


def _check_args(args: argparse.Namespace) -> None:
    if args.steps is not None and not 1 <= args.steps <= MAX_STEPS:
        raise CLIError(f"--steps must be an integer from 1 to {MAX_STEPS}, got {args.steps}")
    if args.num_images <= 0:
        raise CLIError(f"--num-images must be a positive integer, got {args.num_images}")
    if args.guidance is not None and not (math.isfinite(args.guidance) and args.guidance >= 0):
        raise CLIError(f"--guidance must be a finite number >= 0 (1 or less turns guidance off), got {args.guidance}")
    if not args.prompts:
        raise CLIError('give at least one --prompt, e.g. --prompt "a red cube, front view"')
    if args.out.suffix.lower() not in (".png", ".gif"):
        raise CLIError(f"--out must be a .png file (a .gif for video models), got {args.out}")
    from sdtoolkit.runs import OutputFolderError, check_new_files

    try:
        check_new_files((args.out, args.out.with_suffix(".json")), overwrite=getattr(args, "overwrite", False))
    except OutputFolderError as error:
        raise CLIError(f"--out {args.out}: {error} (or choose another --out)") from None
    images_dir = getattr(args, "images_dir", None)
    if images_dir is not None and Path(images_dir).is_dir() and any(Path(images_dir).iterdir()):
        if not getattr(args, "overwrite", False):
            raise CLIError(f"--images-dir {images_dir} is not empty; choose a new folder or pass --overwrite")
    if args.device not in ("cpu", "cuda", "mps") and not args.device.startswith("cuda:"):
        raise CLIError(f"--device {args.device!r} is not a torch device; use cpu, cuda, cuda:N or mps")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise CLIError(f"--device {args.device}: torch sees no CUDA device here; use --device cpu")


def _remove_numbered(folder, suffix: str) -> None:
    """Removes an earlier generate's numbered files (00000.png, ...) from a folder the call was allowed to write
    (new, or --overwrite), so that the folder holds exactly this call's images and prompts.txt (an earlier, longer
    call's extra files used to stay and break `eval`'s one-prompt-per-file count)."""
    for path in Path(folder).glob(f"[0-9][0-9][0-9][0-9][0-9]{suffix}"):
        path.unlink()


def _export_call(model: str):
    """The trained call of an export folder (its export.json), or None for anything else."""
    from sdtoolkit.pipelines.export import SPEC_NAME, ExportSpec

    folder = Path(model)
    if model.startswith("builtin:") or not (folder / SPEC_NAME).is_file():
        return None
    try:
        return ExportSpec.load(folder)
    except (ValueError, TypeError, OSError) as error:
        raise CLIError(f"--model {model}: unreadable {SPEC_NAME}: {error}") from None


def _check_steps(pipeline, steps: int) -> None:
    """The scheduler accepts `steps` (asked on a copy, so that a bad count is one line, not a diffusers traceback)."""
    scheduler = copy.deepcopy(pipeline.scheduler)
    total = scheduler.config.get("num_train_timesteps")
    try:
        scheduler.set_timesteps(steps)
    except (ValueError, IndexError) as error:
        name = type(scheduler).__name__
        raise CLIError(
            f"--steps {steps}: {name} (num_train_timesteps={total}) cannot sample that many: {error}"
        ) from None


def run(args: argparse.Namespace) -> int:
    from sdtoolkit.models.loading import ModelNotAvailableError, load_teacher, resolve_model_id

    config_cli.resolve_flat(args, GenerateConfig, "generate")
    args.prompts = list(args.prompts) if args.prompts else None
    args.out = Path(args.out)
    _check_args(args)
    try:
        resolve_model_id(args.model)
    except (ValueError, ModelNotAvailableError) as error:
        raise CLIError(f"--model {args.model}: {error}") from None
    folder = Path(args.model)
    if folder.is_dir() and not (folder / "model_index.json").is_file():
        exported = folder / "export"
        hint = (
            f"it is a training run; its exported pipeline is --model {exported}"
            if (exported / "model_index.json").is_file()
            else "give a diffusers pipeline folder (`sdtoolkit export RUN DIR` writes one from a training run)"
        )
        raise CLIError(f"--model {args.model}: no model_index.json there; {hint}")
    spec = _export_call(args.model)
    trained = spec.call_arguments() if spec is not None else {}
    steps = args.steps if args.steps is not None else trained.get("num_inference_steps", DEFAULT_STEPS)
    guidance = args.guidance if args.guidance is not None else trained.get("guidance_scale", DEFAULT_GUIDANCE)
    extra = {k: v for k, v in trained.items() if k not in ("num_inference_steps", "guidance_scale", "timesteps")}
    if args.steps is None and "timesteps" in trained:
        extra["timesteps"] = trained["timesteps"]
    try:
        pipeline = load_teacher(args.model, device=args.device)
    except (ValueError, OSError) as error:
        raise CLIError(f"--model {args.model}: {error}") from None
    pipeline.set_progress_bar_config(desc="generate")
    if "timesteps" not in extra:
        _check_steps(pipeline, steps)
    if type(pipeline).__name__ == "AnimateDiffPipeline":
        if args.images_dir is not None:
            raise CLIError(f"--model {args.model} is a video model: --images-dir is for images, use --clips-dir")
        return _run_video(args, pipeline, spec, steps, guidance, extra)
    if args.out.suffix.lower() == ".gif" or args.num_frames is not None or args.clips_dir is not None:
        raise CLIError(
            f"--model {args.model} is an image pipeline ({type(pipeline).__name__}): --out .gif, --num-frames and "
            "--clips-dir are for video models (AnimateDiffPipeline)"
        )

    import torch

    from sdtoolkit.models.shapes_teacher import image_grid

    start = time.perf_counter()
    generator = torch.Generator(pipeline._execution_device).manual_seed(args.seed)
    images = (
        pipeline(
            args.prompts,
            num_images_per_prompt=args.num_images,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generator,
            output_type="pt",
            **extra,
        )
        .images.float()
        .cpu()
    )
    seconds = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, args.num_images).save(args.out)
    settings = {
        "model": args.model,
        "prompts": args.prompts,
        "steps": steps,
        "guidance": guidance,
        "call_kwargs": extra,
        "from_export": spec is not None,
        "timesteps": [int(t) if float(t).is_integer() else round(float(t), 4) for t in pipeline.scheduler.timesteps],
        "num_images": args.num_images,
        "seed": args.seed,
        "device": args.device,
        "pipeline": type(pipeline).__name__,
        "scheduler": type(pipeline.scheduler).__name__,
        "image_size": list(images.shape[-2:]),
        "seconds": round(seconds, 2),
    }
    settings_path = args.out.with_suffix(".json")
    settings_path.write_text(json.dumps(settings, indent=2) + "\n")
    print(f"wrote {args.out} ({len(args.prompts)} rows x {args.num_images} images) and {settings_path}")
    if args.images_dir is not None:
        from sdtoolkit.eval.images import save_images

        # diffusers orders a batch prompt by prompt, num_images_per_prompt each
        _remove_numbered(args.images_dir, ".png")
        save_images(images, args.images_dir, [p for p in args.prompts for _ in range(args.num_images)])
        print(f"wrote {len(images)} images and prompts.txt to {args.images_dir} (sdtoolkit eval --images)")
    return 0


# ---------------------------------------------------------------------------------------------------- video


def _video_frames(args: argparse.Namespace, pipeline) -> int:
    """--num-frames, else the video teacher's training num_frames, else 16; at most the motion modules' length."""
    from sdtoolkit.models.shapes_video import max_frames

    longest = max_frames(pipeline)
    frames = args.num_frames
    if frames is None:
        record = Path(args.model) / "training_config.json"
        try:
            frames = int(json.loads(record.read_text())["config"]["num_frames"])
        except (OSError, ValueError, KeyError, TypeError):
            frames = min(16, longest)
    if not 2 <= frames <= longest:
        raise CLIError(f"--num-frames {frames}: this model's motion modules take 2 to {longest} frames")
    return frames


def mp4_writer():
    """`imageio.v2` when imageio and imageio-ffmpeg are importable (MP4 output), else None."""
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return None
    return imageio


def _run_video(args: argparse.Namespace, pipeline, spec, steps: int, guidance: float, extra: dict) -> int:
    """Samples clips of an AnimateDiffPipeline: an animated GIF grid (rows = prompts), its MP4, per-clip GIFs."""
    import torch

    from sdtoolkit.eval.video import GIF_FRAME_MS, save_clips
    from sdtoolkit.models.shapes_teacher import image_grid
    from sdtoolkit.runs import OutputFolderError, check_new_files

    extra = dict(extra)
    trained_frames = extra.pop("num_frames", None)  # an MCM export's call names its trained clip length
    if args.num_frames is None and trained_frames is not None:
        args.num_frames = int(trained_frames)
    num_frames = _video_frames(args, pipeline)
    gif = args.out.with_suffix(".gif")
    writer = mp4_writer()
    mp4 = gif.with_suffix(".mp4") if writer is not None else None
    targets = [gif, gif.with_suffix(".json"), *([mp4] if mp4 else [])]
    if args.clips_dir is not None:
        targets.append(Path(args.clips_dir) / "prompts.txt")
    try:
        check_new_files(targets, overwrite=getattr(args, "overwrite", False))
    except OutputFolderError as error:
        raise CLIError(f"--out {gif}: {error} (or choose another --out / --clips-dir)") from None

    start = time.perf_counter()
    generator = torch.Generator(pipeline._execution_device).manual_seed(args.seed)
    # every clip's prompt listed (prompt-major): AnimateDiffPipeline (diffusers 0.42) returns one clip per prompt
    # whatever num_videos_per_prompt says
    prompts = [p for p in args.prompts for _ in range(args.num_images)]
    clips = pipeline(
        prompts,
        num_frames=num_frames,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=generator,
        output_type="pt",
        **extra,
    ).frames
    clips = clips.float().cpu()  # [prompts x num_images, F, 3, H, W] in [0, 1]
    seconds = time.perf_counter() - start
    gif.parent.mkdir(parents=True, exist_ok=True)
    grids = [image_grid(clips[:, f], args.num_images) for f in range(num_frames)]
    grids[0].save(gif, save_all=True, append_images=grids[1:], duration=GIF_FRAME_MS, loop=0)
    written = [str(gif)]
    if mp4 is not None:
        import numpy as np

        writer.mimwrite(mp4, [np.asarray(g) for g in grids], fps=1000 // GIF_FRAME_MS, macro_block_size=2)
        written.append(str(mp4))
    else:
        print("no MP4 written: imageio and imageio-ffmpeg are not both importable (pip install imageio-ffmpeg)")
    if args.clips_dir is not None:
        _remove_numbered(args.clips_dir, ".gif")
        save_clips(clips, args.clips_dir, prompts)
        written.append(f"{len(prompts)} clips in {args.clips_dir}")
    settings = {
        "model": args.model,
        "prompts": args.prompts,
        "steps": steps,
        "guidance": guidance,
        "call_kwargs": extra,
        "from_export": spec is not None,
        "timesteps": [int(t) if float(t).is_integer() else round(float(t), 4) for t in pipeline.scheduler.timesteps],
        "num_images": args.num_images,
        "num_frames": num_frames,
        "seed": args.seed,
        "device": args.device,
        "pipeline": type(pipeline).__name__,
        "scheduler": type(pipeline.scheduler).__name__,
        "image_size": list(clips.shape[-2:]),
        "files": written,
        "seconds": round(seconds, 2),
    }
    settings_path = gif.with_suffix(".json")
    settings_path.write_text(json.dumps(settings, indent=2) + "\n")
    print(f"wrote {', '.join(written)} ({len(args.prompts)} rows x {args.num_images} clips of {num_frames} frames)")
    print(f"and {settings_path}")
    return 0
