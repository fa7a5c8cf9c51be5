"""Scores exported 1-4-step students (diffusers folders) on builtin:shapes in a stock-diffusers process: prompt
accuracy and FD-shapes over every builtin prompt x `--seeds` images, as `benchmarks/dm_shapes.py` does.

    python -m benchmarks.eval_export runs/dm2/dmd2-ema/export runs/dm2/sid-full/export --seeds 5 --out scores.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.eval_export", description=__doc__.split("\n")[0])
    parser.add_argument("exports", nargs="+", type=Path, help="exported pipeline folders (with export.json)")
    parser.add_argument("--seeds", type=int, default=5, help="images per builtin prompt (120 prompts)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the scores (appended per folder)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from benchmarks.dm_shapes import evaluate
    from sdtoolkit.eval import Evaluator

    evaluator = Evaluator.load(device=args.device)
    results = json.loads(args.out.read_text()) if args.out and args.out.is_file() else {}
    for folder in args.exports:
        spec = json.loads((folder / "export.json").read_text())
        scores = evaluate(
            folder, spec["num_inference_steps"], spec["guidance_scale"], args.device, args.seeds, evaluator
        )
        results[str(folder)] = scores
        print(
            f"{folder}: prompt acc {scores['prompt_accuracy']:.3f} shape {scores['shape_accuracy']:.3f} "
            f"colour {scores['colour_accuracy']:.3f} FD-shapes {scores['fd_shapes']:.2f}",
            flush=True,
        )
        if args.out:
            args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
