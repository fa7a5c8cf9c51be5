"""`sdtoolkit eval-3d`: score an exported mesh (or a text-to-3d output folder) against the true primitive."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from sdtoolkit.cli import CLIError, config_cli
from sdtoolkit.core.config import SEED, Bound

MESH_SUFFIXES = (".glb", ".obj", ".ply")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval-3d",
        help="score an exported mesh against the true shape: Chamfer, volume IoU, pieces, holes, renders",
        description=(
            "Scores the mesh a user downloads, not the NeRF it came from: after aligning scale, yaw and position to "
            "the true primitive of the prompt, the symmetric Chamfer distance (fraction of the primitive's bounding-"
            "box diagonal), volumetric IoU, the number of connected pieces and the surface share of the largest, "
            "watertightness and boundary edges, normal consistency, the share of the surface whose vertex colour is "
            "the prompt's, and the shapes evaluator on 8 renders of the mesh itself "
            "(sdtoolkit.text_to_3d.mesh_metrics). MESH is a .glb/.obj/.ply file or a text-to-3d output folder, "
            "whose config.json gives the prompt (or the layout: every box's part of the mesh is scored against its "
            "own object)."
        ),
        argument_default=argparse.SUPPRESS,
    )
    config_cli.add_common(parser, "JSON config of the settings below (Eval3DCommand fields); flags override it.")
    names = config_cli.add_flags(parser, Eval3DCommand, "eval3d", positional={"eval3d.mesh": "MESH"})
    parser.set_defaults(run=run, config_names=names, config_sections={"eval3d": Eval3DCommand})


@dataclass
class Eval3DCommand:
    """The settings of `sdtoolkit eval-3d` (the command line is generated from them: `sdtoolkit.cli.config_cli`)."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"seed": SEED}

    mesh: str | None = None
    """A mesh file (.glb, .obj, .ply) or a text-to-3d output folder (its mesh.glb and config.json)."""
    prompt: str | None = None
    """'a <colour> <shape>' of the shapes world (None: the folder's config.json prompt)."""
    layout: str | None = None
    """Layout JSON of a multi-object mesh (None: the folder's config.json layout, if any)."""
    out: str | None = None
    """Write the scores as JSON to this file (must not exist yet)."""
    renders: str | None = None
    """Write the 8 renders of the mesh as a PNG grid to this file (must not exist yet)."""
    evaluator: str | None = None
    """Evaluator folder (None: the shipped sdtoolkit/assets/evaluator)."""
    seed: int = 0
    """Seed of the surface samples and the alignment."""
    true_cameras: str | None = None
    """The true cameras of an image-to-3d run's references (a cameras file, as `image-to-3d --cameras` reads): also
    scores the run's refined cameras against them (summary.json's poses): angle, azimuth, elevation and distance
    errors per view and the angle modulo the shape's symmetries (`sdtoolkit.image_to_3d.pose_errors`). MESH must
    then be the run's folder."""


def _resolve_inputs(args) -> tuple[Path, str | None, dict | None]:
    if args.mesh is None:
        raise CLIError("give MESH: a .glb/.obj/.ply file or a text-to-3d output folder")
    path = Path(args.mesh)
    config = {}
    if path.is_dir():
        if (path / "config.json").is_file():
            config = json.loads((path / "config.json").read_text())
        # the run's mesh in the first format it was exported in (mesh.glb unless --formats left it out)
        path = next(
            (path / f"mesh.{f}" for f in ("glb", "obj", "ply") if (path / f"mesh.{f}").is_file()), path / "mesh.glb"
        )
    if not path.is_file():
        raise CLIError(f"no mesh at {str(path)!r}; give a .glb/.obj/.ply file or a text-to-3d output folder")
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise CLIError(f"mesh {str(path)!r} is not one of {', '.join(MESH_SUFFIXES)}")
    layout = config.get("layout")
    if args.layout is not None:
        try:
            layout = json.loads(Path(args.layout).read_text())
        except (OSError, ValueError) as error:
            raise CLIError(f"--layout {args.layout!r}: {error}") from error
    prompt = args.prompt if args.prompt is not None else (config.get("prompt") or None)
    if prompt is None and layout is None and isinstance(config.get("teacher"), str):  # a convert-nerf folder
        teacher = Path(config["teacher"])
        teacher = teacher if teacher.is_dir() else teacher.parent
        try:
            prompt = json.loads((teacher / "config.json").read_text()).get("prompt") or None
        except (OSError, ValueError, AttributeError):
            prompt = None
    if layout is None and prompt is None:
        raise CLIError("give --prompt 'a <colour> <shape>' (or a text-to-3d folder whose config.json has one)")
    if args.true_cameras is not None and not (path.parent / "summary.json").is_file():
        raise CLIError(
            f"--true-cameras needs an image-to-3d output folder as MESH (its summary.json holds the refined cameras); "
            f"{args.mesh!r} has none"
        )
    for target in (args.out, args.renders):
        if target is not None and Path(target).exists():
            raise CLIError(f"{target!r} exists; choose a new file name (sdtoolkit never overwrites your files)")
    return path, prompt, layout


def run(args) -> int:
    config_cli.resolve_flat(args, Eval3DCommand, "eval3d")
    from sdtoolkit.data import parse_caption
    from sdtoolkit.text_to_3d.guidance import LayoutError, parse_layout

    # 1. Check every input before any work.
    path, prompt, layout_json = _resolve_inputs(args)
    layout = None
    try:
        if layout_json is not None:
            layout = parse_layout(layout_json)
            for obj in layout.objects:
                parse_caption(obj.prompt)
        else:
            parse_caption(prompt)
    except (ValueError, LayoutError) as error:
        raise CLIError(str(error)) from error
    if args.evaluator is not None and not (Path(args.evaluator) / "config.json").is_file():
        raise CLIError(f"--evaluator {args.evaluator!r} has no config.json; give a folder saved by train-evaluator")
    poses = None
    if args.true_cameras is not None:
        poses = _pose_scores(path.parent, args.true_cameras, None if layout is not None else parse_caption(prompt))
    import trimesh

    try:
        mesh = trimesh.load(path, force="mesh")
    except Exception as error:  # trimesh raises many kinds for a broken file
        raise CLIError(f"cannot read mesh {str(path)!r}: {error}") from error
    if len(getattr(mesh, "faces", ())) == 0:
        raise CLIError(f"mesh {str(path)!r} has no faces")

    # 2. Score.
    from sdtoolkit.eval import Evaluator
    from sdtoolkit.text_to_3d.mesh_metrics import evaluate_layout_mesh, evaluate_mesh

    evaluator = Evaluator.load(args.evaluator)
    if layout is not None:
        results = evaluate_layout_mesh(mesh, layout, evaluator, seed=args.seed)
    else:
        results = [evaluate_mesh(mesh, prompt, evaluator, seed=args.seed)]

    # 3. Report.
    images = [r.pop("images") for r in results if "images" in r]
    for r in results:
        if r.get("missing"):
            print(f"{r['prompt']}: MISSING (no faces in its box)")
            continue
        print(
            f"{r['prompt']}: Chamfer {r['chamfer']:.2%} of the diagonal, volume IoU {r['volume_iou']:.3f}, "
            f"{r['components']} piece(s) (largest {r['largest_component_share']:.1%} of the area), "
            f"{'watertight' if r['watertight'] else str(r['boundary_edges']) + ' boundary edges'}, "
            f"normal consistency {r['normal_consistency']:.3f}, vertex colour "
            f"{'n/a' if r['colour_accuracy'] is None else format(r['colour_accuracy'], '.1%')}, "
            f"renders right {r['render_view_accuracy']:.0%} of 8"
        )
    if poses is not None:
        median = poses["median"]
        for i, angle in enumerate(poses["angle_deg"]):
            sym = poses.get("symmetric_angle_deg")
            print(
                f"view {i}: angle {angle:.2f} deg"
                + ("" if sym is None else f" ({sym[i]:.2f} modulo the shape's symmetry)")
                + f", azimuth {poses['azimuth_deg'][i]:+.2f}, elevation {poses['elevation_deg'][i]:+.2f} deg, "
                f"distance {poses['distance_percent'][i]:+.2f} %"
            )
        print(
            f"poses, median over views {poses['median_over_views']}: angle {median['angle_deg']:.2f} deg"
            + (
                ""
                if "symmetric_angle_deg" not in median
                else f" ({median['symmetric_angle_deg']:.2f} modulo symmetry)"
            )
            + f", |azimuth| {median['azimuth_deg']:.2f}, |elevation| {median['elevation_deg']:.2f} deg, "
            f"|distance| {median['distance_percent']:.2f} %"
        )
    for target in (args.out, args.renders):  # as eval and generate do: a new folder for a new file
        if target is not None:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
    if args.out is not None:
        scores = {"mesh": str(path), "objects": results} | ({} if poses is None else {"poses": poses})
        Path(args.out).write_text(json.dumps(scores, indent=2, default=_plain))
    if args.renders is not None and images:
        import torch

        from sdtoolkit.models.shapes_teacher import image_grid

        image_grid(torch.cat(images), 8).save(args.renders)
    return 0


def _pose_scores(folder: Path, true_cameras: str, caption: tuple | None) -> dict:
    """The run's refined cameras (or its given ones, when it did not refine) against the true cameras file."""
    from sdtoolkit.image_to_3d.inputs import InputError, cameras_of, parse_cameras, read_cameras_file
    from sdtoolkit.image_to_3d.pose_errors import pose_errors

    summary = json.loads((folder / "summary.json").read_text())
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    images = summary.get("images") or []
    poses = summary.get("poses") or {}
    run_cameras = poses.get("refined") or poses.get("given")
    if not images or run_cameras is None:
        raise CLIError(
            f"{str(folder)!r}: its summary.json records no reference images and cameras (not an image-to-3d run, "
            "or one written before its summary recorded the cameras of a run without pose refinement)"
        )
    try:
        views, _ = parse_cameras(read_cameras_file(true_cameras), images, source=true_cameras)
    except InputError as error:
        raise CLIError(str(error)) from error
    import torch

    from sdtoolkit.data.cameras import Cameras

    refined = Cameras(
        *(torch.tensor(run_cameras[key], dtype=torch.float32) for key in ("azimuth", "elevation", "distance")),
        torch.tensor([v["fov"] for v in views], dtype=torch.float32),
    )
    anchor = 0 if poses.get("refined") and config.get("anchor_first_view", True) else None  # view 0 fixed
    return pose_errors(refined, cameras_of(views), None if caption is None else caption[0], anchor=anchor)


def _plain(value):
    """JSON for the dataclasses inside the scores (the alignment)."""
    from dataclasses import asdict, is_dataclass

    return asdict(value) if is_dataclass(value) else str(value)
