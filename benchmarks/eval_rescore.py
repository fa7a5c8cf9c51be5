"""Re-scores folders of generated images (PNG + prompts.txt, e.g. from `benchmarks/eval_teacher.py` or
`sdtoolkit generate`) with the full evaluator report in one process (the real-render references are built once),
and prints a Markdown table with every figure's 95 % interval and image count (issue 17, item 6).

    python -m benchmarks.eval_rescore ddim-50=runs/eval17/ddim-leading-50 dpmpp-4=runs/eval17/dpmpp-4 \
        --out runs/eval17/rescore.json

A FOLDER of the form `real:S` scores S real renders of every builtin prompt instead (`report.prompt_renders`,
seed 20000, independent of the evaluator's references): the ceiling of every figure.

Images are put in prompt-major order (stable sort by prompt) before scoring, so that the report's interleaved FD
splits each hold every prompt equally often whatever order the folder was written in.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

COLUMNS = (
    ("all_attributes_accuracy", "all attributes", 3),
    ("prompt_accuracy", "shape+colour", 3),
    ("view_accuracy", "view (distinguishable)", 3),
    ("view_accuracy_4way", "view (4-way head)", 3),
    ("sharpness", "sharpness", 3),
    ("floater_rate", "floater rate", 3),
    ("colour_error_deg", "colour error (deg)", 2),
    ("fd_shapes", "FD_shapes", 1),
    ("precision", "precision", 3),
    ("recall", "recall", 3),
    ("modes_ratio", "modes vs real", 2),
)
"""Report figures in the Markdown table: (key, header, decimals)."""


def cell(metric: dict, decimals: int) -> str:
    """'value [low, high]' of one report figure."""
    if metric["method"] == "none":
        return f"{metric['value']:.{decimals}f}"
    return f"{metric['value']:.{decimals}f} [{metric['low']:.{decimals}f}, {metric['high']:.{decimals}f}]"


def markdown(results: dict[str, dict]) -> str:
    """One row per scored folder."""
    lines = ["| row | images | " + " | ".join(header for _, header, _ in COLUMNS) + " |"]
    lines.append("|---" * (len(COLUMNS) + 2) + "|")
    for name, report in results.items():
        cells = [cell(report["metrics"][key], d) if key in report["metrics"] else "" for key, _, d in COLUMNS]
        lines.append(f"| {name} | {report['num_images']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.eval_rescore",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("rows", nargs="+", help="NAME=FOLDER of images with a prompts.txt, or NAME=real:S")
    parser.add_argument("--out", type=Path, required=True, help="JSON file of the reports (updated per row)")
    parser.add_argument("--fd-splits", type=int, default=4, help="K splits behind the FD and recall intervals")
    parser.add_argument("--limit", type=int, default=0, help="score only the first N images of each folder (0: all)")
    parser.add_argument(
        "--wait", action="store_true", help="wait for each folder's generation.json (eval_teacher writes it last)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from sdtoolkit.data import all_prompts
    from sdtoolkit.eval import Evaluator
    from sdtoolkit.eval.images import find_images, load_images, read_prompts
    from sdtoolkit.eval.report import format_report, prompt_renders

    evaluator = Evaluator.load()
    order = {prompt: i for i, prompt in enumerate(all_prompts())}
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for row in args.rows:
        name, _, folder = row.partition("=")
        while args.wait and not folder.startswith("real:") and not (Path(folder) / "generation.json").is_file():
            time.sleep(10)
        started = time.perf_counter()
        if folder.startswith("real:"):
            seeds = int(folder.removeprefix("real:"))
            images = prompt_renders(all_prompts(), seeds, seed=20_000)
            prompts = [p for p in all_prompts() for _ in range(seeds)]
        else:
            files = find_images(folder)
            prompts = read_prompts(files)
            if args.limit:
                files, prompts = files[: args.limit], prompts[: args.limit]
            ranked = sorted(range(len(files)), key=lambda i: (order.get(prompts[i], len(order)), i))
            images, prompts = load_images([files[i] for i in ranked]), [prompts[i] for i in ranked]
        report = evaluator.report(images, prompts, fd_splits=args.fd_splits)
        generation = Path(folder) / "generation.json"
        report["source"] = {
            "folder": folder,
            "generation": json.loads(generation.read_text()) if generation.is_file() else None,
            "score_seconds": round(time.perf_counter() - started, 1),
        }
        results[name] = report
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"{name} ({folder}): {len(prompts)} images, {report['source']['score_seconds']} s", flush=True)
        print(format_report(report), flush=True)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
