"""Text-to-3D on builtin:shapes: default-settings assets for prompts over the shape x colour vocabulary, scored by
the shipped evaluator (8 azimuths, shape and colour) and silhouette IoU against the true primitive, wall time per
asset, and a two-object SemanticSDS layout (each box's object-centric views classified as its own prompt).

    python -m benchmarks.text_to_3d --prompts 2 --threads 2                 # CPU: wall time of default assets
    python -m benchmarks.text_to_3d --device cuda --prompts 10 --layout     # GPU: the quality sweep

Writes one JSON per asset and `results.json` under --output; prints a summary table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import torch

PROMPTS = [
    "a red cube",
    "a blue sphere",
    "a green cone",
    "a yellow cylinder",
    "a purple torus",
    "a cyan cube",
    "a red sphere",
    "a blue cylinder",
    "a yellow cone",
    "a green torus",
]
"""Ten prompts: every shape twice, every colour at least once."""

LAYOUT = {
    "scene_bound": 1.0,
    "objects": [
        {"prompt": "a red cube", "box": {"center": [0.0, -0.5, 0.0], "size": [0.6, 0.6, 0.6]}},
        {"prompt": "a blue sphere", "box": {"center": [0.0, 0.5, 0.0], "size": [0.6, 0.6, 0.6]}},
    ],
}
"""Two objects side by side along y (seen side by side from the front camera on +x)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=10, help="How many of the ten prompts to run (in order).")
    parser.add_argument("--only", default=None, help="Comma-separated prompts to run instead of the list.")
    parser.add_argument("--layout", action="store_true", help="Also run the two-object SemanticSDS layout.")
    parser.add_argument("--method", default="sds", help="Single-object method (sds, csd, vsd).")
    parser.add_argument("--steps", type=int, default=None, help="Override the default number of steps.")
    parser.add_argument("--guidance-scale", type=float, default=None, help="Override the default CFG scale.")
    parser.add_argument("--device", default="cpu", help="cpu or cuda.")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads.")
    parser.add_argument("--seed", type=int, default=0, help="Seed.")
    parser.add_argument("--export", action="store_true", help="Also export mesh + video (needs trimesh, PyMCubes).")
    parser.add_argument("--output", type=Path, default=Path("runs/bench-text-to-3d"), help="Output folder.")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from sdtoolkit.eval import Evaluator
    from sdtoolkit.text_to_3d import TextTo3DConfig, generate, train
    from sdtoolkit.text_to_3d.evaluate import evaluate_asset, evaluate_layout
    from sdtoolkit.text_to_3d.guidance import parse_layout
    from sdtoolkit.text_to_3d.trainer import load_prior, render_turntable, save_image_grid

    evaluator = Evaluator.load()
    denoiser = load_prior("builtin:shapes", args.device)
    prompts = args.only.split(",") if args.only else PROMPTS[: args.prompts]
    results = {
        "date": datetime.date.today().isoformat(),
        "machine": _machine(args.device),
        "load_average_start": os.getloadavg()[0],
        "assets": [],
    }
    args.output.mkdir(parents=True, exist_ok=True)

    def configure(config: TextTo3DConfig) -> TextTo3DConfig:
        config.seed, config.device, config.threads = args.seed, args.device, args.threads
        config.preview_every = 0
        if args.steps:
            config.steps = args.steps
        if args.guidance_scale is not None:
            config.guidance.guidance_scale = args.guidance_scale
        return config

    for prompt in prompts:
        config = configure(TextTo3DConfig(prompt=prompt, method=args.method))
        folder = args.output / prompt.replace(" ", "-")
        start, cpu_start = time.time(), time.process_time()
        if args.export:
            summary = generate(config, folder, denoiser=denoiser, progress=False)
            from sdtoolkit.text_to_3d.trainer import load_checkpoint, setup

            run = setup(config, denoiser)
            load_checkpoint(run, folder)
        else:
            run, summary = train(config, folder, denoiser=denoiser, progress=False), {}
        seconds, cpu_seconds = time.time() - start, time.process_time() - cpu_start
        scores = evaluate_asset(run.nerf, prompt, evaluator)
        save_image_grid(render_turntable(run.nerf, 8, 64)["rgb"], folder / "views.png")
        scores.update(seconds=round(seconds, 1), cpu_seconds=round(cpu_seconds, 1), steps=config.steps)
        scores.update(guidance_scale=config.guidance.guidance_scale, load_average=os.getloadavg()[0])
        scores.update({k: summary[k] for k in ("mesh_faces", "mesh_watertight", "train_seconds") if k in summary})
        results["assets"].append(scores)
        print(
            f"{prompt:20s} views {scores['view_accuracy']:.2f} (shape {scores['shape_accuracy']:.2f}, colour "
            f"{scores['colour_accuracy']:.2f}) IoU {scores['mean_iou']:.3f} {seconds:.0f}s {scores['predicted']}",
            flush=True,
        )
        (args.output / "results.json").write_text(json.dumps(results, indent=1))

    if args.layout:
        config = configure(TextTo3DConfig(method="semantic-sds", layout=LAYOUT))
        start = time.time()
        run = train(config, args.output / "layout", denoiser=denoiser, progress=False)
        seconds = time.time() - start
        scores = evaluate_layout(run.nerf, parse_layout(LAYOUT), evaluator, config.guidance.box_fill)
        scores.update(seconds=round(seconds, 1), steps=config.steps)
        for obj in scores["objects"]:
            save_image_grid(
                obj.pop("images"), args.output / "layout" / f"object_{obj['prompt'].replace(' ', '-')}.png"
            )
        results["layout"] = scores
        for obj in scores["objects"]:
            print(f"layout {obj['prompt']:16s} views {obj['view_accuracy']:.2f} {obj['predicted']}", flush=True)
        views = render_turntable(run.nerf, 8, 64, run.scene_scale)
        save_image_grid(views["rgb"], args.output / "layout" / "views.png")

    assets = results["assets"]
    if assets:
        results["mean_view_accuracy"] = sum(a["view_accuracy"] for a in assets) / len(assets)
        results["mean_iou"] = sum(a["mean_iou"] for a in assets) / len(assets)
        results["mean_seconds"] = sum(a["seconds"] for a in assets) / len(assets)
        print(
            f"MEAN views {results['mean_view_accuracy']:.3f} IoU {results['mean_iou']:.3f} "
            f"seconds {results['mean_seconds']:.0f} over {len(assets)} assets"
        )
    results["load_average_end"] = os.getloadavg()[0]
    (args.output / "results.json").write_text(json.dumps(results, indent=1))
    return 0


def _machine(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return (
        f"cpu {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    )


if __name__ == "__main__":
    raise SystemExit(main())
