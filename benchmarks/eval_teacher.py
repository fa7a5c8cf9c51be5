"""Teacher baselines users would pick: `builtin:shapes` sampled by stock diffusers schedulers at few steps, saved
as PNG folders for `sdtoolkit eval` (issue 17, item 5).

    python -m benchmarks.eval_teacher --sampler ddim-trailing dpmpp --steps 4 2 1 --seeds 20 --out runs/eval17
    sdtoolkit eval --images runs/eval17/dpmpp-4 --out runs/eval17/dpmpp-4.json

Samplers (each a stock scheduler built `from_config` of the teacher's own DDIM config, nothing hand-typed):

- `ddim-leading`: the teacher's own DDIMScheduler ("leading" spacing, `steps_offset` 1: 1 step samples t = 1 only,
  2 steps t = 501, 1), the convention every earlier teacher row of RESULTS.md used;
- `ddim-trailing`: DDIMScheduler with `timestep_spacing="trailing"` (1 step: t = 999; 2 steps: 999, 499);
- `dpmpp`: DPMSolverMultistepScheduler, `algorithm_type="dpmsolver++"`, second order, trailing spacing (the
  diffusers default for few-step SD sampling; a 1-step call is first order, i.e. DDIM from t = 999);
- `euler-trailing`: EulerDiscreteScheduler with trailing spacing.

Image i of a folder is prompt `all_prompts()[i // seeds]` with noise seed `--seed` + i (prompt-major, the order
`sdtoolkit eval` splits for FD), written with a prompts.txt beside it; `--seed-major` lists every prompt once per
seed instead (`all_prompts()[i % 120]`), so that a run stopped early still holds every prompt equally often (sort
its images prompt-major before scoring, as `benchmarks/eval_rescore.py` does). Images are written after every
batch, prompts.txt always matching the images written so far.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

SAMPLERS = ("ddim-leading", "ddim-trailing", "dpmpp", "euler-trailing")
"""The `--sampler` choices (see the module docstring)."""


def set_sampler(pipe, name: str, base_config) -> None:
    """Replaces `pipe.scheduler` by the stock scheduler `name`, built from the teacher's own scheduler config."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    if name == "ddim-leading":
        pipe.scheduler = DDIMScheduler.from_config(base_config)
    elif name == "ddim-trailing":
        pipe.scheduler = DDIMScheduler.from_config(base_config, timestep_spacing="trailing")
    elif name == "dpmpp":
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(
            base_config, algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing"
        )
    elif name == "euler-trailing":
        pipe.scheduler = EulerDiscreteScheduler.from_config(base_config, timestep_spacing="trailing")
    else:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.eval_teacher",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--teacher", default="builtin:shapes", help="teacher pipeline (builtin:shapes or a folder)")
    parser.add_argument("--sampler", nargs="+", default=["ddim-leading"], choices=SAMPLERS, help="stock samplers")
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 2, 1], help="sampling step counts")
    parser.add_argument("--guidance", type=float, default=5.0, help="CFG scale (diffusers convention)")
    parser.add_argument("--seeds", type=int, default=20, help="images per builtin prompt (120 prompts)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed of the first image (image i: seed + i)")
    parser.add_argument("--seed-major", action="store_true", help="every prompt once per seed (see above)")
    parser.add_argument("--batch-size", type=int, default=120, help="images per pipeline call")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", type=Path, required=True, help="folder; one subfolder SAMPLER-STEPS per row")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from PIL import Image

    from sdtoolkit.data import all_prompts
    from sdtoolkit.eval import generate_images
    from sdtoolkit.models.loading import load_teacher_pipeline

    pipe = load_teacher_pipeline(args.teacher).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    base_config = pipe.scheduler.config
    if args.seed_major:
        prompts = all_prompts() * args.seeds
    else:
        prompts = [p for p in all_prompts() for _ in range(args.seeds)]
    for sampler in args.sampler:
        for steps in args.steps:
            set_sampler(pipe, sampler, base_config)
            folder = args.out / f"{sampler}-{steps}"
            folder.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            for start in range(0, len(prompts), args.batch_size):
                batch = prompts[start : start + args.batch_size]
                images = generate_images(pipe, batch, steps, args.guidance, seed=args.seed + start, progress=False)
                pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
                for i, image in enumerate(pixels):
                    Image.fromarray(image).save(folder / f"{start + i:05d}.png")
                (folder / "prompts.txt").write_text("".join(p + "\n" for p in prompts[: start + len(batch)]))
            info = {
                "teacher": args.teacher,
                "sampler": sampler,
                "scheduler": type(pipe.scheduler).__name__,
                "scheduler_config": dict(pipe.scheduler.config),
                "timesteps": [int(t) for t in pipe.scheduler.timesteps],
                "steps": steps,
                "guidance": args.guidance,
                "seeds": args.seeds,
                "seed": args.seed,
                "seed_major": args.seed_major,
                "num_images": len(prompts),
                "seconds": round(time.perf_counter() - started, 1),
                "threads": args.threads,
            }
            (folder / "generation.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
            print(f"{folder}: {len(prompts)} images, t = {info['timesteps']}, {info['seconds']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
