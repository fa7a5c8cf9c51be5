"""Prompt accuracy of LCM / LCM-LoRA students of `builtin:shapes` vs the teacher, every pipeline loaded by stock
diffusers in this (fresh) process.

    python benchmarks/lcm_shapes.py --teacher-steps 50 4 2 \
        --export full=runs/lcm-full/export --lora lora=runs/lcm-lora/export --steps 4 2 --out results.json

- the teacher: `DiffusionPipeline.from_pretrained(<assets/shapes-teacher>)` with its own DDIM config ("leading"
  spacing: 2 steps are t = 501, 1), `--teacher-guidance`; with `--baselines` also DDIM with "trailing" spacing
  (t = 999, 499) and the undistilled teacher under LCMScheduler (what the sampler alone gives);
- `--export NAME=FOLDER`: `DiffusionPipeline.from_pretrained(FOLDER)` with the guidance of its export.json;
- `--lora NAME=FOLDER`: the teacher pipeline + `LCMScheduler`/`TCDScheduler` from FOLDER/scheduler +
  `load_lora_weights(FOLDER)`, guidance 1.0 (the LCM-LoRA call).

Every image is scored by the shipped shapes evaluator (`Evaluator.score`: prompt accuracy = shape and colour both
right; `fd_shapes`: Frechet distance of classifier features to `--reference-num` real renders), one image per
(prompt, seed), `--seeds` seeds per prompt over all 120 prompts.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="builtin:shapes", help="teacher pipeline (builtin:shapes or a folder)")
    parser.add_argument("--teacher-steps", type=int, nargs="*", default=[50, 4, 2], help="teacher DDIM step counts")
    parser.add_argument("--teacher-guidance", type=float, default=5.0, help="teacher CFG scale (diffusers)")
    parser.add_argument("--export", action="append", default=[], help="NAME=FOLDER of an exported pipeline")
    parser.add_argument("--lora", action="append", default=[], help="NAME=FOLDER of an export with LoRA weights")
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 2], help="student step counts")
    parser.add_argument("--seeds", type=int, default=2, help="images per prompt")
    parser.add_argument(
        "--export-guidance",
        type=float,
        nargs="*",
        default=None,
        help="guidance scales to sample each --export with (default: the one in its export.json)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--device", default="cpu", help="where the pipelines run (cpu or cuda)")
    parser.add_argument("--baselines", action="store_true", help="also DDIM-trailing and teacher+LCMScheduler")
    parser.add_argument("--reference-num", type=int, default=1024, help="real renders for FD_shapes (0: skip)")
    parser.add_argument("--out", required=True, help="JSON file for the results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from diffusers import DiffusionPipeline

    from sdtoolkit.data import all_prompts
    from sdtoolkit.eval import Evaluator, generate_images
    from sdtoolkit.models.loading import resolve_model_id

    evaluator = Evaluator.load(device=args.device)
    prompts = all_prompts() * args.seeds
    teacher_path = resolve_model_id(args.teacher)
    results: dict[str, dict] = {}

    def score(name: str, pipe, steps: int, guidance: float) -> None:
        started = time.perf_counter()
        images = generate_images(pipe, prompts, steps, guidance, seed=0, batch_size=60, progress=False)
        scores = evaluator.score(images, prompts)
        if args.reference_num > 0:
            scores["fd_shapes"] = evaluator.fd_shapes(images, evaluator.reference_stats(n=args.reference_num))
        scores.update(steps=steps, guidance=guidance, seconds=round(time.perf_counter() - started, 1))
        results[f"{name}@{steps}"] = scores
        fd = scores.get("fd_shapes", float("nan"))
        print(f"{name:>14} {steps:>3} steps: prompt accuracy {scores['prompt_accuracy']:.3f}  FD {fd:.2f}", flush=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")

    if args.teacher_steps:
        teacher = DiffusionPipeline.from_pretrained(teacher_path).to(args.device)
        teacher.set_progress_bar_config(disable=True)
        for steps in args.teacher_steps:
            score("teacher", teacher, steps, args.teacher_guidance)
        if args.baselines:
            from diffusers import DDIMScheduler, LCMScheduler

            ddim = teacher.scheduler
            teacher.scheduler = DDIMScheduler.from_config(ddim.config, timestep_spacing="trailing")
            for steps in args.steps:
                score("ddim-trailing", teacher, steps, args.teacher_guidance)
            teacher.scheduler = LCMScheduler.from_config(ddim.config, original_inference_steps=50)
            for steps in args.steps:
                score("teacher+lcm", teacher, steps, 1.0)
            teacher.scheduler = ddim
    for entry in args.export:
        name, folder = entry.split("=", 1)
        spec = json.loads(Path(folder, "export.json").read_text())
        pipe = DiffusionPipeline.from_pretrained(folder).to(args.device)
        pipe.set_progress_bar_config(disable=True)
        for steps in args.steps:
            for guidance in args.export_guidance or [spec["guidance_scale"]]:
                score(f"{name} cfg {guidance:g}" if args.export_guidance else name, pipe, steps, guidance)
    for entry in args.lora:
        import diffusers

        name, folder = entry.split("=", 1)
        spec = json.loads(Path(folder, "export.json").read_text())
        pipe = DiffusionPipeline.from_pretrained(teacher_path).to(args.device)
        pipe.set_progress_bar_config(disable=True)
        pipe.scheduler = getattr(diffusers, spec["scheduler_class"]).from_pretrained(folder, subfolder="scheduler")
        pipe.load_lora_weights(folder)
        for steps in args.steps:
            score(name, pipe, steps, spec["guidance_scale"])


if __name__ == "__main__":
    main()
