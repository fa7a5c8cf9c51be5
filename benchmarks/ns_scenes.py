"""Procedural scenes of the shapes world as nerfstudio datasets (Blender format), for training nerfstudio methods
whose runs then serve as PVD teachers (`sdtoolkit convert-nerf RUN --to ...`, `benchmarks/pvd.py --teacher RUN`).

A scene is one shaded shape (`sdtoolkit.data.render`, white background) seen from random cameras around it; the
folder holds `transforms_{train,val,test}.json` and `{split}/r_{i}.png`, the layout of nerfstudio's `blender-data`
dataparser. Its world frame is sdtoolkit's (+z up, the object inside [-1, 1]^3), and the Blender dataparser keeps
poses as they are (scale 1), so a nerfstudio run on it shares sdtoolkit's frame. Camera matrices are OpenGL
camera-to-world (`Cameras.c2w`), `camera_angle_x` the full field of view; nerfstudio's rays through pixel centres
are then sdtoolkit's (`tests/test_nerfstudio.py` checks it). Usage:

    python benchmarks/ns_scenes.py --shape torus --colour red --output /tmp/scenes/red_torus
    sdtoolkit-ns-train nerfacto --machine.device-type cpu --vis tensorboard --pipeline.model.implementation torch \
        --pipeline.model.background-color white --pipeline.model.disable-scene-contraction True \
        --pipeline.model.near-plane 1.0 --pipeline.model.far-plane 4.5 --pipeline.model.camera-optimizer.mode off \
        ... blender-data --data /tmp/scenes/red_torus

The poses are exact: turn nerfacto's camera optimiser (on by default, SO3xR3) off. On the red torus, nerfstudio's
own eval-image PSNR at iteration 1000 was 19.6 dB with it on and 34.0 dB with it off (benchmarks/RESULTS.md, the
second PVD and nerfstudio round).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sdtoolkit.data.cameras import Cameras, wrap_azimuth_deg
from sdtoolkit.data.render import render
from sdtoolkit.data.shapes import COLOUR_NAMES, SHAPES

SPLITS = {"train": 100, "val": 10, "test": 20}
"""Views per split (the Blender dataparser reads one transforms file per split)."""


def scene_cameras(n: int, seed: int, fov_deg: float = 40.0) -> Cameras:
    """Random cameras around the object: azimuth uniform, elevation in [-10, 85] degrees, distance in [2.5, 3]."""
    u = torch.rand(3, n, generator=torch.Generator().manual_seed(seed))
    return Cameras(wrap_azimuth_deg(u[0] * 360), -10 + 95 * u[1], 2.5 + 0.5 * u[2], torch.full((n,), fov_deg))


def transforms(cameras: Cameras, split: str) -> dict:
    """The Blender-format transforms of `cameras` (the dataparser adds `.png` to each `file_path`)."""
    return {
        "camera_angle_x": math.radians(float(cameras.fov_deg[0])),
        "frames": [
            {"file_path": f"./{split}/r_{i}", "transform_matrix": matrix.tolist()}
            for i, matrix in enumerate(cameras.c2w().double())
        ],
    }


def write_scene(output: str | Path, shape: str, colour: str, resolution: int = 128, seed: int = 0) -> Path:
    """Writes the scene of one `colour` `shape` at `output` (a new or empty folder) and returns it."""
    if shape not in SHAPES or colour not in COLOUR_NAMES:
        raise ValueError(f"unknown shape {shape!r} or colour {colour!r}; shapes {SHAPES}, colours {COLOUR_NAMES}")
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise FileExistsError(f"{str(output)!r} is not empty; give a new folder")
    for index, (split, count) in enumerate(SPLITS.items()):
        cameras = scene_cameras(count, seed * 10 + index)
        (output / split).mkdir(parents=True)
        for start in range(0, count, 10):
            chunk = cameras[start : start + 10]
            images = render(
                torch.full((len(chunk),), SHAPES.index(shape)),
                torch.full((len(chunk),), COLOUR_NAMES.index(colour)),
                chunk,
                resolution=resolution,
            )
            for offset, image in enumerate(images):
                pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                Image.fromarray(pixels).save(output / split / f"r_{start + offset}.png")
        (output / f"transforms_{split}.json").write_text(json.dumps(transforms(cameras, split), indent=1))
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", required=True, choices=SHAPES, help="the shape of the scene's object")
    parser.add_argument("--colour", required=True, choices=COLOUR_NAMES, help="its colour")
    parser.add_argument("--output", required=True, help="a new folder for the dataset")
    parser.add_argument("--resolution", type=int, default=128, help="image size in pixels (square)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random cameras")
    args = parser.parse_args()
    try:
        print(write_scene(args.output, args.shape, args.colour, args.resolution, args.seed))
    except FileExistsError as error:  # one line, nothing written (was a traceback)
        parser.error(f"--output: {error}")


if __name__ == "__main__":
    main()
