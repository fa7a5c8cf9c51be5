"""A nerfstudio teacher's query time, eager against compiled hash encodings (`PVDConfig.compile_teacher`), in one
process on this machine: PVD batches of `--rays` rays (`sdtoolkit.nerf.convert.teacher_batch`) and 64 px renders of
the held-out views, each first eager and then compiled, with the compilation timed and the renders' pixel sums
compared. Usage:

    OMP_NUM_THREADS=1 TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) python benchmarks/ns_teacher_speed.py RUN --out speed.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sdtoolkit.nerf.convert import (
    TeacherError,
    compile_teacher,
    heldout_cameras,
    load_nerf_asset,
    render_views,
    setup,
    teacher_batch,
    teacher_config,
)
from sdtoolkit.nerf.pvd import PVDConfig


def measure(run: str, compiled: bool, batches: int, renders: int, rays: int, resolution: int) -> dict:
    """Seconds per batch and for the renders (and the compilation) of one fresh load of the teacher."""
    teacher, _ = load_nerf_asset(run)
    out = {}
    if compiled:
        start = time.perf_counter()
        compile_teacher(teacher)
        render_views(teacher, heldout_cameras(1), resolution=8)  # the first calls compile
        out["compile_seconds"] = time.perf_counter() - start
    config = teacher_config(
        PVDConfig(to="mlp", rays_per_step=rays, teacher_cache=1, compile_teacher=compiled), teacher
    )
    pvd = setup(config, teacher)  # draws one batch: the warm-up
    generator = torch.Generator().manual_seed(5)
    start = time.perf_counter()
    for _ in range(batches):
        teacher_batch(pvd, generator)
    out["batch_seconds"] = (time.perf_counter() - start) / batches
    start = time.perf_counter()
    images = render_views(teacher, heldout_cameras(renders), resolution=resolution)
    out["render_seconds"] = time.perf_counter() - start
    out["pixel_sum"] = float(images.double().sum())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a nerfstudio run (its folder, config.yml or .ckpt) that convert-nerf takes")
    parser.add_argument("--batches", type=int, default=10, help="PVD batches timed per mode")
    parser.add_argument("--renders", type=int, default=10, help="held-out views rendered per mode")
    parser.add_argument("--rays", type=int, default=1024, help="rays per PVD batch")
    parser.add_argument("--resolution", type=int, default=64, help="render size in pixels")
    parser.add_argument("--out", default=None, help="write the JSON here too")
    args = parser.parse_args()
    for flag in ("batches", "renders", "rays", "resolution"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag}: {getattr(args, flag)} must be >= 1")
    try:
        teacher_config(PVDConfig(compile_teacher=True), load_nerf_asset(args.run)[0])
    except TeacherError as error:
        parser.error(f"RUN {args.run!r}: {error}")
    torch.set_num_threads(1)
    sizes = (args.batches, args.renders, args.rays, args.resolution)
    result = {mode: measure(args.run, mode == "compiled", *sizes) for mode in ("eager", "compiled")}
    result["batch_speedup"] = result["eager"]["batch_seconds"] / result["compiled"]["batch_seconds"]
    result["render_speedup"] = result["eager"]["render_seconds"] / result["compiled"]["render_seconds"]
    result["pixel_sum_difference"] = abs(result["eager"]["pixel_sum"] - result["compiled"]["pixel_sum"])
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
