"""The reference sets of the image-to-3D benchmark (benchmarks/RESULTS.md, "Image to 3D"), for the ten objects of
`benchmarks.text_to_3d.PROMPTS`, rendered by the shapes renderer as 64 px RGBA with their cameras files:

- `front/<colour>_<shape>/`: one front view (azimuth 0, elevation 15, distance 2.8, fov 40), its true pose.
- `three/<colour>_<shape>/`: three views (azimuth 0 / 120 / 240, elevation 15 / 30 / 5) rendered at their true
  cameras; `cams.json` marks the poses approximate and gives views 2 and 3 perturbed by 5-10 degrees in azimuth and
  in elevation and 5-10 % in distance (random signs, `--seed`); view 1, the anchor, is exact. `truth.json` holds
  the true cameras.
- `side/<colour>_<shape>/`: one side view (azimuth 90, elevation 15), its true pose: the far half is unseen (the
  symmetry ablation).

    python -m benchmarks.image_to_3d_refs --output runs/i3d-refs
    sdtoolkit image-to-3d runs/i3d-refs/three/red_cube/view_*.png --cameras runs/i3d-refs/three/red_cube/cams.json \\
        --prompt "a red cube" --novel-view-prior builtin:shapes-novel-view --nerf.field.geometry sdf \\
        --regularizers.lambda-eikonal 10 --output runs/red-cube-3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.text_to_3d import PROMPTS
from sdtoolkit.data.cameras import Cameras
from sdtoolkit.data.cameras import orbit_cameras as cameras
from sdtoolkit.image_to_3d.inputs import cameras_json, save_rgba, shapes_references


def perturbation(generator: torch.Generator, low: float, high: float, views: int = 3) -> torch.Tensor:
    """A magnitude in [low, high] with a random sign per view; zero for view 1 (the anchor)."""
    magnitude = low + (high - low) * torch.rand(views, generator=generator)
    sign = torch.where(torch.rand(views, generator=generator) < 0.5, -1.0, 1.0)
    out = magnitude * sign
    out[0] = 0.0
    return out


def write_set(folder: Path, shape: str, colour: str, truth: Cameras, given: Cameras | None = None) -> None:
    """Renders the views at the true cameras and writes cams.json (the given cameras, approximate when they differ
    from the truth) and, for a perturbed set, truth.json."""
    paths = save_rgba(shapes_references(shape, colour, truth, 64), folder)
    if given is None:
        (folder / "cams.json").write_text(json.dumps(cameras_json(truth, paths)))
        return
    (folder / "cams.json").write_text(json.dumps(cameras_json(given, paths, approximate=True)))
    (folder / "truth.json").write_text(json.dumps(cameras_json(truth, paths)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="folder to write front/, three/ and side/ into")
    parser.add_argument("--seed", type=int, default=2212, help="seed of the perturbations (RESULTS: 2212)")
    args = parser.parse_args()
    out = Path(args.output)
    generator = torch.Generator().manual_seed(args.seed)
    for prompt in PROMPTS:
        _, colour, shape = prompt.split()
        name = f"{colour}_{shape}"
        write_set(out / "front" / name, shape, colour, cameras([0.0], [15.0]))
        truth = cameras([0.0, 120.0, 240.0], [15.0, 30.0, 5.0])
        d_azimuth, d_elevation = perturbation(generator, 5, 10), perturbation(generator, 5, 10)
        d_distance = perturbation(generator, 0.05, 0.10)
        given = Cameras(
            truth.azimuth_deg + d_azimuth,
            truth.elevation_deg + d_elevation,
            truth.distance * (1 + d_distance),
            truth.fov_deg,
        )
        write_set(out / "three" / name, shape, colour, truth, given)
        write_set(out / "side" / name, shape, colour, cameras([90.0], [15.0]))
        change = (d_azimuth.tolist(), d_elevation.tolist(), (100 * d_distance).tolist())
        print(name, "perturbation of azimuth, elevation (degrees), distance (%):", *change)


if __name__ == "__main__":
    main()
