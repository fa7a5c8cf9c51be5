"""`sdtoolkit text-to-3d`: a 3D asset from a prompt (SDS, CSD, VSD) or a layout (SemanticSDS), distilled from a 2D
prior into a NeRF, exported as GLB/OBJ/PLY meshes and a turntable video."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

from sdtoolkit.cli import CLIError

METHOD_NAMES = ("sds", "csd", "vsd", "semantic-sds")
WEIGHTINGS = ("sds", "uniform", "fantasia3d")
ANNEALINGS = ("none", "linear", "sqrt")
FORMATS = ("glb", "obj", "ply")
PRESETS = ("default", "tiny")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "text-to-3d",
        help="Distil a 2D diffusion prior into a NeRF (SDS/CSD/VSD/SemanticSDS) and export a mesh and a turntable.",
        description="Optimise a hash-grid NeRF so that its renders from random cameras score well under a text-to-"
        "image prior (score distillation), then export the density's iso-surface with vertex colours as GLB/OBJ/PLY "
        "and a turntable video (mp4 with imageio-ffmpeg, GIF otherwise). CFG scales are in the diffusers convention "
        "(threestudio's guidance_scale is ours minus one). The resolved config is saved as OUTPUT/config.json.",
    )
    parser.add_argument(
        "prompt", nargs="?", default="", help='The prompt, e.g. "a red cube" (not needed with a layout).'
    )
    parser.add_argument("--prior", default="builtin:shapes", help="builtin:shapes, a diffusers folder or a Hub id.")
    parser.add_argument("--method", default="sds", help=f"Guidance: {', '.join(METHOD_NAMES)} (default: sds).")
    parser.add_argument("--layout", type=Path, default=None, help="Layout JSON for semantic-sds (objects + boxes).")
    parser.add_argument("--output", type=Path, default=None, help="Output folder (default: runs/<prompt>).")
    parser.add_argument("--steps", type=int, default=None, help="Optimisation steps (default: 400).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of every random draw (default: 0).")
    parser.add_argument("--guidance-scale", type=float, default=None, help="CFG scale, diffusers convention.")
    parser.add_argument("--weighting", default=None, help=f"w(t): {', '.join(WEIGHTINGS)}.")
    parser.add_argument("--t-anneal", default=None, help=f"Time annealing: {', '.join(ANNEALINGS)}.")
    parser.add_argument(
        "--t-range", type=float, nargs=2, default=None, help="Time range as fractions, e.g. 0.02 0.98."
    )
    parser.add_argument("--grad-clip", type=float, default=None, help="Element-wise clamp of the guidance gradient.")
    parser.add_argument("--resolution", type=int, default=None, help="Render size fed to the prior (default: native).")
    parser.add_argument("--lr", type=float, default=None, help="Learning rate of the hash tables (default: 0.01).")
    parser.add_argument("--lambda-orient", type=float, default=None, help="Orientation-loss weight (default: 0).")
    parser.add_argument("--lambda-opacity", type=float, default=None, help="Sparsity weight (default: 0).")
    parser.add_argument("--no-view-prompts", action="store_true", help="Do not append ', front view' etc.")
    parser.add_argument("--mesh-resolution", type=int, default=96, help="Marching-cubes grid size (default: 96).")
    parser.add_argument("--formats", default="glb,obj,ply", help="Mesh formats, comma-separated (glb,obj,ply).")
    parser.add_argument("--uv-texture", action="store_true", help="Also export a UV-textured mesh (needs xatlas).")
    parser.add_argument("--video-frames", type=int, default=36, help="Turntable frames (default: 36).")
    parser.add_argument("--preview-every", type=int, default=200, help="Preview period in steps (0: off).")
    parser.add_argument("--checkpoint-every", type=int, default=200, help="Checkpoint period in steps (0: end only).")
    parser.add_argument("--resume", action="store_true", help="Continue from OUTPUT/checkpoint.safetensors.")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1).")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N (default: cpu).")
    parser.add_argument(
        "--preset",
        default="default",
        help="NeRF size: 'default', or 'tiny' (a small field and few samples, for smoke tests and quick looks).",
    )
    parser.add_argument("--quiet", action="store_true", help="No progress bar.")
    parser.set_defaults(run=run)


def _slug(text: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split())[:60] or "asset"


def build_config(args: argparse.Namespace):
    """Validates the arguments (raising `CLIError` before any work) and returns the `TextTo3DConfig`."""
    from sdtoolkit.text_to_3d import TextTo3DConfig
    from sdtoolkit.text_to_3d.guidance import LayoutError, parse_layout

    if args.method not in METHOD_NAMES:
        raise CLIError(f"unknown --method {args.method!r}; choose one of {', '.join(METHOD_NAMES)}")
    layout = None
    if args.method == "semantic-sds":
        if args.layout is None:
            raise CLIError("--method semantic-sds needs --layout scene.json (objects with a prompt and a 3D box)")
        try:
            layout = parse_layout(args.layout).to_json()
        except LayoutError as error:
            raise CLIError(f"bad layout {str(args.layout)!r}: {error}") from None
    else:
        if args.layout is not None:
            raise CLIError(f"--layout only applies to --method semantic-sds, not {args.method!r}")
        if not args.prompt.strip():
            raise CLIError('the prompt is empty; give one, e.g. sdtoolkit text-to-3d "a red cube"')
    for name in ("steps", "mesh_resolution", "video_frames"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise CLIError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if args.mesh_resolution < 8:
        raise CLIError(f"--mesh-resolution must be at least 8, got {args.mesh_resolution}")
    if args.weighting is not None and args.weighting not in WEIGHTINGS:
        raise CLIError(f"unknown --weighting {args.weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
    if args.t_anneal is not None and args.t_anneal not in ANNEALINGS:
        raise CLIError(f"unknown --t-anneal {args.t_anneal!r}; choose one of {', '.join(ANNEALINGS)}")
    if args.t_range is not None and not 0 <= args.t_range[0] <= args.t_range[1] <= 1:
        raise CLIError(f"--t-range must satisfy 0 <= low <= high <= 1, got {args.t_range}")
    formats = [f.strip().lower() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise CLIError(
            f"unknown mesh format(s) {bad or args.formats!r} in --formats; choose from {', '.join(FORMATS)}"
        )
    args.formats = formats
    if args.preset not in PRESETS:
        raise CLIError(f"unknown --preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    if args.device != "cpu" and not args.device.startswith("cuda"):
        raise CLIError(f"--device {args.device!r} is not supported; use cpu, cuda or cuda:N")
    if args.uv_texture:
        try:
            import xatlas  # noqa: F401
        except ImportError:
            raise CLIError("--uv-texture needs xatlas: pip install xatlas (vertex colours need nothing)") from None

    config = TextTo3DConfig(prompt=args.prompt.strip(), method=args.method, prior=args.prior, layout=layout)
    config.seed = args.seed
    if args.steps is not None:
        config.steps = args.steps
    g = config.guidance
    if args.guidance_scale is not None:
        g.guidance_scale = args.guidance_scale
    if args.weighting is not None:
        g.weighting = args.weighting
    if args.t_anneal is not None:
        g.timesteps.anneal = args.t_anneal
    if args.t_range is not None:
        g.timesteps.min_step_percent, g.timesteps.max_step_percent = args.t_range
    if args.grad_clip is not None:
        g.grad_clip = args.grad_clip
    if args.resolution is not None:
        config.resolution = args.resolution
    if args.lr is not None:
        config.lr_encoding = args.lr
    if args.lambda_orient is not None:
        config.regularizers.lambda_orient = args.lambda_orient
    if args.lambda_opacity is not None:
        config.regularizers.lambda_opacity = args.lambda_opacity
    config.view_dependent_prompts = not args.no_view_prompts
    config.preview_every, config.checkpoint_every = args.preview_every, args.checkpoint_every
    config.device = args.device
    if args.threads is not None:
        config.threads = args.threads
    if args.preset == "tiny":
        from sdtoolkit.nerf import FieldConfig, NeRFConfig

        config.nerf = NeRFConfig(
            field=FieldConfig(num_levels=4, max_res=32, log2_hashmap_size=12, hidden_dim=16),
            num_samples=16,
            occupancy_resolution=16,
        )
    return config


def run(args: argparse.Namespace) -> int:
    from sdtoolkit.models.loading import ModelNotAvailableError, UnsafeWeightsError, resolve_model_id

    config = build_config(args)
    missing = [name for name in ("mcubes", "trimesh", "imageio") if importlib.util.find_spec(name) is None]
    if missing:  # checked before any work: the mesh export at the end needs them
        raise CLIError(
            f"text-to-3d needs {', '.join(missing)} for its mesh and video export: pip install 'sdtoolkit[3d]'"
        )
    try:
        resolve_model_id(config.prior)
    except (ValueError, ModelNotAvailableError, UnsafeWeightsError) as error:
        raise CLIError(f"--prior {config.prior!r}: {error}") from None
    output = args.output or Path("runs") / _slug(config.prompt or "layout")
    if output.exists() and not output.is_dir():
        raise CLIError(f"--output {str(output)!r} exists and is not a folder")
    from sdtoolkit.text_to_3d import generate, load_config

    if args.resume:
        if not (output / "checkpoint.safetensors").exists():
            raise CLIError(f"--resume: no checkpoint in {str(output)!r}; run without --resume first")
        saved = load_config(output / "config.json")
        if args.steps is not None:
            saved.steps = args.steps  # resuming may extend the run
        saved.threads, saved.device = config.threads, config.device
        config = saved
    summary = generate(
        config,
        output,
        resume=args.resume,
        progress=not args.quiet,
        mesh_resolution=args.mesh_resolution,
        mesh_formats=args.formats,
        video_frames=args.video_frames,
        uv_texture=args.uv_texture,
    )
    print(json.dumps(summary, indent=2))
    return 0
