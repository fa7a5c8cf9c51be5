"""`sdtoolkit eval-3d`: score an exported mesh (or a text-to-3d output folder) against the true primitive."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from sdtoolkit.cli import CLIError, config_cli
from sdtoolkit.core.config import Bound, Range

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

    BOUNDS: ClassVar[dict[str, Bound]] = {"seed": Range(0)}

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


def _resolve_inputs(args) -> tuple[Path, str | None, dict | None]:
    if args.mesh is None:
        raise CLIError("give MESH: a .glb/.obj/.ply file or a text-to-3d output folder")
    path = Path(args.mesh)
    config = {}
    if path.is_dir():
        if (path / "config.json").is_file():
            config = json.loads((path / "config.json").read_text())
        path = path / "mesh.glb"
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
    if layout is None and prompt is None:
        raise CLIError("give --prompt 'a <colour> <shape>' (or a text-to-3d folder whose config.json has one)")
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
    if args.out is not None:
        Path(args.out).write_text(json.dumps({"mesh": str(path), "objects": results}, indent=2, default=_plain))
    if args.renders is not None and images:
        import torch

        from sdtoolkit.models.shapes_teacher import image_grid

        image_grid(torch.cat(images), 8).save(args.renders)
    return 0


def _plain(value):
    """JSON for the dataclasses inside the scores (the alignment)."""
    from dataclasses import asdict, is_dataclass

    return asdict(value) if is_dataclass(value) else str(value)
