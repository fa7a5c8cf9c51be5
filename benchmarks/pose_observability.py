"""How much a camera's pose shows in the shapes world's images: PSNR between the render of each shape from a camera
and from the same camera turned in azimuth or elevation (the renderer of the references, `sdtoolkit.data.render`;
64 px, 2x2 supersampling). A pose change that moves the image by less than the reference fits' residuals (25-35 dB
PSNR in benchmarks/RESULTS.md) cannot be recovered by fitting those references; the azimuth of a solid of
revolution shows only through the world's fixed light. Usage:

    python -m benchmarks.pose_observability [--azimuth 120] [--elevation 30] [--colour red]
"""

from __future__ import annotations

import argparse

import torch

from sdtoolkit.data.cameras import Cameras
from sdtoolkit.data.render import render
from sdtoolkit.data.shapes import COLOUR_NAMES, SHAPES

CHANGES_DEG = (1.0, 2.0, 5.0, 10.0)
"""Azimuth and elevation changes measured."""


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """10 log10(1 / MSE) of two images in [0, 1] (inf when equal)."""
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else -10 * torch.log10(torch.tensor(mse)).item()


def sensitivity(shape: str, colour: str, azimuth: float, elevation: float, distance: float = 2.8) -> dict:
    """{'azimuth': [PSNR per change], 'elevation': [...]} of the shape's render against the turned camera's."""

    def image(a: float, e: float) -> torch.Tensor:
        cameras = Cameras(torch.tensor([a]), torch.tensor([e]), torch.tensor([distance]), torch.tensor([40.0]))
        return render(torch.tensor([SHAPES.index(shape)]), torch.tensor([COLOUR_NAMES.index(colour)]), cameras)

    reference = image(azimuth, elevation)
    return {
        "azimuth": [psnr(image(azimuth + d, elevation), reference) for d in CHANGES_DEG],
        "elevation": [psnr(image(azimuth, elevation + d), reference) for d in CHANGES_DEG],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--azimuth", type=float, default=120.0, help="camera azimuth, degrees")
    parser.add_argument("--elevation", type=float, default=30.0, help="camera elevation, degrees")
    parser.add_argument("--colour", choices=COLOUR_NAMES, default="red", help="the shapes' colour")
    args = parser.parse_args(argv)
    changes = " | ".join(f"{d:g} deg" for d in CHANGES_DEG)
    print(f"PSNR (dB) of the render against the camera turned by | {changes} |")
    for shape in SHAPES:
        scores = sensitivity(shape, args.colour, args.azimuth, args.elevation)
        for axis in ("azimuth", "elevation"):
            print(f"| {args.colour} {shape}, {axis} | " + " | ".join(f"{v:.1f}" for v in scores[axis]) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
