"""Scores exported 1-4-step students (diffusers folders) on builtin:shapes in a stock-diffusers process: prompt
accuracy and FD-shapes over every builtin prompt x `--seeds` images, as `benchmarks/dm_shapes.py` does, and the
evaluator's full report (per-attribute accuracy, quality, precision/recall, diversity; every figure with its 95 %
interval) under "report".

    python -m benchmarks.eval_export runs/dm2/dmd2-ema/export runs/dm2/sid-full/export --seeds 20 --out scores.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.eval_export", description=__doc__.split("\n\n")[0])
    parser.add_argument("exports", nargs="+", type=Path, help="exported pipeline folders (with export.json)")
    parser.add_argument(
        "--seeds", type=int, default=20, help="images per builtin prompt (120 prompts; 20 gives 2400 images)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the scores (appended per folder)")
    parser.add_argument(
        "--steps", type=int, default=None, help="sampling steps (default: num_inference_steps of its export.json)"
    )
    parser.add_argument(
        "--guidance", type=float, default=None, help="guidance scale (default: guidance_scale of its export.json)"
    )
    parser.add_argument(
        "--fd-splits",
        type=int,
        default=None,
        help="also the FD of K interleaved splits (each holding every prompt; K must divide --seeds) for its noise "
        "(default: 4 when 4 divides --seeds, else 0)",
    )
    parser.add_argument("--no-report", action="store_true", help="skip the full report (plain scores only)")
    parser.add_argument(
        "--report-dir",
        type=Path,
        default=None,
        help="also write each folder's report as DIR/<folder name>.json, for `sdtoolkit eval --compare A B`",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="noise seed of the first image (image i uses seed + i): another value gives an independent replicate",
    )
    args = parser.parse_args(argv)
    if args.fd_splits is None:
        args.fd_splits = 4 if args.seeds % 4 == 0 else 0
    if args.fd_splits and (args.fd_splits < 2 or args.seeds % args.fd_splits):
        parser.error(f"--fd-splits {args.fd_splits} must be 0 or a divisor >= 2 of --seeds {args.seeds}")
    torch.set_num_threads(args.threads)
    from benchmarks.dm_shapes import evaluate
    from sdtoolkit.eval import Evaluator

    evaluator = Evaluator.load(device=args.device)
    results = json.loads(args.out.read_text()) if args.out and args.out.is_file() else {}
    for folder in args.exports:
        spec = json.loads((folder / "export.json").read_text())
        steps = spec["num_inference_steps"] if args.steps is None else args.steps
        guidance = spec["guidance_scale"] if args.guidance is None else args.guidance
        # the export's own call arguments (e.g. `sigmas` of a flow student); a per-step grid only at its own count
        call = dict(spec.get("call_kwargs") or {})
        if steps != spec["num_inference_steps"]:
            call = {k: v for k, v in call.items() if k not in ("sigmas", "timesteps")}
        scores = evaluate(
            folder, steps, guidance, args.device, args.seeds, evaluator, args.fd_splits, args.seed,
            not args.no_report, call,
        )  # fmt: skip
        results[str(folder)] = scores
        print(
            f"{folder}: prompt acc {scores['prompt_accuracy']:.3f} shape {scores['shape_accuracy']:.3f} "
            f"colour {scores['colour_accuracy']:.3f} FD-shapes {scores['fd_shapes']:.2f}",
            flush=True,
        )
        if "fd_shapes_splits" in scores:
            splits = torch.tensor(scores["fd_shapes_splits"])
            print(f"  FD-shapes of {len(splits)} splits: mean {splits.mean():.2f}, sd {splits.std():.2f}", flush=True)
        if "report" in scores:
            from sdtoolkit.eval.report import format_report

            print(format_report(scores["report"]), flush=True)
            if args.report_dir:
                args.report_dir.mkdir(parents=True, exist_ok=True)
                name = folder.parent.name if folder.name == "export" else folder.name
                target = args.report_dir / f"{name}.json"
                target.write_text(json.dumps({"export": str(folder), "report": scores["report"]}) + "\n")
        if args.out:
            args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
