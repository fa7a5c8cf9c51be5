"""Score a video teacher (or an MCM export, its --steps, --guidance and --num-frames given) on balanced clip captions:
issue 20's table row.

Clip k has the image caption k mod 120 (every shape x colour x view once per 120) and the motion (k + k // 120) mod 3,
so the three motions are balanced overall and within each image caption once the count is a multiple of 360 (600
clips: 200 per motion). Clips are generated through the folder's stock `AnimateDiffPipeline` (`load_teacher`), in
chunks of prompts, each chunk seeded `seed + chunk index`; they are saved as GIFs with prompts.txt (the `eval
--clips` layout) and scored by `sdtoolkit.eval.video.clip_report` with 95 % intervals, plus the right count per
motion and how the turning clips were classified.

    python -m benchmarks.video_teacher --model runs/teacher --num-clips 600 --steps 25 --guidance 5 --out DIR
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path


def balanced_prompts(num: int) -> list[str]:
    """`num` clip captions: image caption k mod 120, motion (k + k // 120) mod 3."""
    from sdtoolkit.data.clips import MOTIONS, all_clip_prompts

    every = all_clip_prompts()  # shape x colour x view x motion, the motions innermost
    images = len(every) // len(MOTIONS)
    return [every[len(MOTIONS) * (k % images) + (k + k // images) % len(MOTIONS)] for k in range(num)]


def generate(args: argparse.Namespace, prompts: list[str]):
    """Clips `[N, F, 3, H, W]` in [0, 1] (CPU) of `prompts`, `args.chunk` prompts per pipeline call, as many frames
    as `sdtoolkit generate` gives this model (`--num-frames`, else its training clip length)."""
    import torch

    from sdtoolkit.cli.generate import _video_frames
    from sdtoolkit.models.loading import load_teacher

    model, steps, guidance, seed, chunk = args.model, args.steps, args.guidance, args.seed, args.chunk
    pipeline = load_teacher(model, device=args.device)
    num_frames = _video_frames(argparse.Namespace(model=model, num_frames=args.num_frames), pipeline)
    pipeline.set_progress_bar_config(disable=True)
    negatives = None
    if args.negative == "swapped":  # CFG against the other direction: eps(c') + w (eps(c) - eps(c'))
        from sdtoolkit.data.clips import swap_direction

        negatives = [swap_direction(p) if swap_direction(p) != p else "" for p in prompts]
    clips = []
    for i in range(0, len(prompts), chunk):
        generator = torch.Generator(pipeline._execution_device).manual_seed(seed + i // chunk)
        out = pipeline(
            prompts[i : i + chunk],
            negative_prompt=None if negatives is None else negatives[i : i + chunk],
            num_frames=num_frames,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generator,
            output_type="pt",
        ).frames
        clips.append(out.float().cpu())
        print(f"  {min(i + chunk, len(prompts))}/{len(prompts)} clips", flush=True)
    return torch.cat(clips)


def per_motion(frames, prompts: list[str]) -> dict:
    """Right count per captioned motion, and what the turning clips were classified as."""
    from sdtoolkit.data.clips import parse_clip_caption
    from sdtoolkit.eval.video import classify_motion

    predicted = classify_motion(frames)
    wanted = [parse_clip_caption(p)[3] for p in prompts]
    out: dict = {}
    for motion in sorted(set(wanted)):
        calls = Counter(m for m, w in zip(predicted, wanted) if w == motion)
        out[motion] = {"clips": sum(calls.values()), "right": calls.get(motion, 0), "classified": dict(calls)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="video teacher folder (AnimateDiffPipeline) or MCM export")
    parser.add_argument("--num-clips", type=int, default=600, help="clips scored (issue 20: >= 600 per row)")
    parser.add_argument("--steps", type=int, default=25, help="sampler steps")
    parser.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first chunk's noise")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--negative",
        choices=("empty", "swapped"),
        default="empty",
        help="CFG's negative prompt: \"\" (the pipeline's default), or for a turning caption the same caption turning "
        'the other way (guidance then amplifies what the direction word changes; bobbing keeps "")',
    )
    parser.add_argument("--num-frames", type=int, default=None, help="frames per clip (None: the teacher's own)")
    parser.add_argument("--chunk", type=int, default=120, help="prompts per pipeline call")
    parser.add_argument("--reference-num", type=int, default=256, help="real clips behind FVD_shapes")
    parser.add_argument("--out", required=True, help="folder for clips/, scores.json")
    args = parser.parse_args(argv)
    if args.num_clips < 1 or args.chunk < 1 or args.steps < 1:
        parser.error("--num-clips, --chunk and --steps must be at least 1")
    out = Path(args.out)
    if (out / "scores.json").exists():
        parser.error(f"{out / 'scores.json'} exists; choose another --out")
    from sdtoolkit.eval.metrics import Evaluator
    from sdtoolkit.eval.video import clip_report, save_clips

    prompts = balanced_prompts(args.num_clips)
    start = time.perf_counter()
    frames = generate(args, prompts)
    seconds = time.perf_counter() - start
    save_clips(frames, out / "clips", prompts)
    report = clip_report(Evaluator.load(None, device=args.device), frames, prompts, reference_num=args.reference_num)
    report["per_motion"] = per_motion(frames, prompts)
    report["generate_seconds"] = seconds
    keys = ("model", "steps", "guidance", "seed", "chunk", "negative")
    report["settings"].update({k: getattr(args, k) for k in keys})
    report["settings"]["num_clips"] = len(prompts)
    (out / "scores.json").write_text(json.dumps(report, indent=2))
    for name, value in report["metrics"].items():
        print(f"{name:24s} {value['value']:.3f} [{value['low']:.3f}, {value['high']:.3f}]")
    for motion, row in report["per_motion"].items():
        print(f"{motion:28s} right {row['right']}/{row['clips']}  classified {row['classified']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
