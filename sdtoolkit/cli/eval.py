"""`sdtoolkit eval`: score a folder of generated PNGs against their prompts with the shapes evaluator."""

from __future__ import annotations

import json
from pathlib import Path

from sdtoolkit.cli import CLIError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="score images of the procedural shapes against their prompts",
        description=(
            "Scores a folder of images against their prompts with the shipped shapes evaluator: prompt, shape, "
            "colour and view accuracy, and FD_shapes against real renders. Prompts come from --prompts (a .txt "
            "with one prompt per line in the images' natural name order, or a .jsonl with file_name and text), "
            "else from prompts.txt or metadata.jsonl beside the images."
        ),
    )
    parser.add_argument("--images", required=True, help="folder of images, or a quoted glob such as 'out/*.png'")
    parser.add_argument("--prompts", default=None, help="prompts file (.txt or .jsonl); default: beside the images")
    parser.add_argument("--out", default=None, help="write the scores as JSON to this file")
    parser.add_argument(
        "--evaluator", default=None, help="evaluator folder (default: the shipped sdtoolkit/assets/evaluator)"
    )
    parser.add_argument(
        "--reference-num",
        type=int,
        default=2048,
        help="real renders behind the FD_shapes reference statistics (0 skips FD_shapes)",
    )
    parser.add_argument("--reference-seed", type=int, default=10_000, help="dataset seed of the reference renders")
    parser.add_argument("--batch-size", type=int, default=256, help="images per classifier forward pass")
    parser.add_argument("--device", default="cpu", help="torch device of the classifier, e.g. cpu or cuda")
    parser.set_defaults(run=run)


def run(args) -> int:
    from sdtoolkit.data.dataset import parse_caption
    from sdtoolkit.eval.images import find_images, read_prompts
    from sdtoolkit.eval.metrics import Evaluator

    # 1. Check every input before any work.
    files = find_images(args.images)
    if not files:
        raise CLIError(f"--images {args.images!r} matches no .png/.jpg/.jpeg/.webp file; give a folder or a glob")
    try:
        prompts = read_prompts(files, args.prompts)
        for prompt in prompts:
            parse_caption(prompt)
    except ValueError as error:
        raise CLIError(str(error)) from error
    if args.reference_num < 0 or args.reference_num == 1:
        raise CLIError(f"--reference-num must be 0 (skip FD_shapes) or at least 2, got {args.reference_num}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.evaluator is not None and not (Path(args.evaluator) / "config.json").is_file():
        raise CLIError(f"--evaluator {args.evaluator!r} has no config.json; give a folder saved by train-evaluator")
    images = _load_images(files)

    # 2. Score.
    evaluator = Evaluator.load(args.evaluator, device=args.device)
    evaluator.batch_size = args.batch_size
    scores = evaluator.score(images, prompts)
    if args.reference_num and len(files) >= 2:
        reference = evaluator.reference_stats(n=args.reference_num, seed=args.reference_seed)
        scores["fd_shapes"] = evaluator.fd_shapes(images, reference)
        scores["fd_reference_num"] = args.reference_num

    # 3. Report.
    print(format_table(scores))
    if args.out:
        result = {"images": args.images, "prompts": args.prompts, "evaluator": args.evaluator, "scores": scores}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def _load_images(files: list[Path]):
    """The images, or one CLIError line naming the first file PIL cannot read (corrupt, truncated, not an image)."""
    from PIL import Image

    from sdtoolkit.eval.images import load_images

    try:
        return load_images(files)
    except ValueError as error:  # differing sizes
        raise CLIError(f"--images: {error}") from None
    except (OSError, SyntaxError) as error:  # PIL.UnidentifiedImageError is an OSError
        for file in files:
            try:
                with Image.open(file) as image:
                    image.load()
            except (OSError, SyntaxError) as reason:
                raise CLIError(f"--images: {file} is not a readable image ({reason}); replace or remove it") from None
        raise CLIError(f"--images: an image could not be read ({error})") from None


def format_table(scores: dict) -> str:
    """A two-column text table of the scores."""
    rows = [
        (key, "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value))
        for key, value in scores.items()
    ]
    width = max(len(key) for key, _ in rows)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  -----"]
    lines += [f"{key:<{width}}  {value}" for key, value in rows]
    return "\n".join(lines)
