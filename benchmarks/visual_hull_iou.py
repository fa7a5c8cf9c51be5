"""How good a start the references' visual hull is (`--nerf.field.sdf-init visual-hull`): its volume IoU against
the true primitive, and the share of the primitive it covers, on the image-to-3D benchmark's reference sets
(`benchmarks.image_to_3d_refs`), at the field's default grid (64^3 over [-1, 1]^3, the field's `bound`). The hull is
computed as a run computes it (`sdtoolkit.image_to_3d.visual_hull`): from the cameras file's poses, over every view
moved by the four-plane symmetry group (`--symmetric-density --symmetry-planes 4`), or without the group. With
exact cameras and masks the hull contains the object (coverage 100 % up to the grid and the 64 px masks); a wrong
camera cuts true matter away (coverage < 100 %). Usage:

    python -m benchmarks.image_to_3d_refs --output runs/i3d-refs
    python -m benchmarks.visual_hull_iou --refs runs/i3d-refs
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from sdtoolkit.data.shapes import inside_mask, shape_id
from sdtoolkit.image_to_3d.inputs import load_references
from sdtoolkit.image_to_3d.visual_hull import grid_points, moved_views, visual_hull

SETTINGS = (
    ("three references, true cameras, 4 planes", "three", "truth.json", 4),
    ("three references, cameras as given (perturbed), 4 planes", "three", "cams.json", 4),
    ("three references, cameras as given, no symmetry", "three", "cams.json", 0),
    ("one front reference, 4 planes", "front", "cams.json", 4),
    ("one front reference, no symmetry", "front", "cams.json", 0),
)
"""(label, reference set, cameras file, symmetry planes) per column."""


def hull(folder: Path, cameras_file: str, planes: int, bound: float, resolution: int) -> torch.Tensor:
    """The flattened hull of the views in `folder` seen from `cameras_file`, as `start_from_hull` builds it."""
    references = load_references(sorted(folder.glob("view_*.png")), folder / cameras_file)
    cameras, masks = references.cameras, references.masks
    if planes:
        masks, cameras = moved_views(masks, cameras, planes)
    return visual_hull(masks, cameras, bound, resolution).reshape(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refs", required=True, help="the folder benchmarks.image_to_3d_refs wrote")
    parser.add_argument("--resolution", type=int, default=64, help="grid cells per axis (the field's default: 64)")
    parser.add_argument("--bound", type=float, default=1.0, help="half the grid's side (the field's default: 1)")
    args = parser.parse_args()
    refs = Path(args.refs)
    points = grid_points(args.bound, args.resolution)
    scores: dict[str, list[tuple[float, float]]] = {label: [] for label, *_ in SETTINGS}
    for folder in sorted((refs / "three").iterdir()):
        truth = inside_mask(torch.tensor([shape_id(folder.name.split("_")[1])]), points[None])[0]
        cells = []
        for label, subset, cameras_file, planes in SETTINGS:
            h = hull(refs / subset / folder.name, cameras_file, planes, args.bound, args.resolution)
            both = (h & truth).sum().item()
            iou, cover = both / (h | truth).sum().item(), both / truth.sum().item()
            scores[label].append((iou, cover))
            cells.append(f"{iou:.3f} ({cover:.1%})")
        print(folder.name, "IoU (coverage):", " | ".join(cells), flush=True)
    for label, values in scores.items():
        iou, cover = [v[0] for v in values], [v[1] for v in values]
        print(
            f"{label}: IoU median {statistics.median(iou):.3f} ({min(iou):.3f}-{max(iou):.3f}), "
            f"coverage median {statistics.median(cover):.1%} ({min(cover):.1%}-{max(cover):.1%})"
        )


if __name__ == "__main__":
    main()
