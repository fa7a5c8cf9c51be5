"""`sdtoolkit eval`: score a folder of generated PNGs against their prompts with the shapes evaluator."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from sdtoolkit.cli import CLIError, config_cli
from sdtoolkit.core.config import AT_LEAST_1, Bound, Range


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="score images of the procedural shapes against their prompts, or compare two scored runs",
        description=(
            "Scores a folder of images against their prompts with the shipped shapes evaluator, every figure with "
            "its 95% interval and image count: all-attributes accuracy (shape, colour and the view where renders "
            "can tell views apart), prompt/shape/colour/view accuracy, sharpness, noise, speckle/floaters, colour "
            "error, FD_shapes, precision/recall and per-prompt diversity against real renders (see "
            "sdtoolkit.eval.report). Prompts come from --prompts (a .txt with one prompt per line in the images' "
            "natural name order, or a .jsonl with file_name and text), else from prompts.txt or metadata.jsonl "
            "beside the images. --compare A.json B.json says, per figure, whether two runs written by --out differ "
            "beyond noise. Intervals need images: use at least 20 per prompt (2400 for the 120 builtin prompts) "
            "to resolve differences of about 2 points of accuracy. --clips FOLDER scores video clips instead (one "
            "animated GIF per clip, clip captions as prompts): per-frame prompt and view accuracy, motion accuracy "
            "(the shipped motion classifier), temporal consistency and FVD_shapes, each with its 95% interval."
        ),
        argument_default=argparse.SUPPRESS,
    )
    config_cli.add_common(parser, "JSON config of the settings below (EvalCommand fields); flags override it.")
    names = config_cli.add_flags(parser, EvalCommand, "eval")
    parser.set_defaults(run=run, config_names=names, config_sections={"eval": EvalCommand})


@dataclass
class EvalCommand:
    """The settings of `sdtoolkit eval` (the command line is generated from them: `sdtoolkit.cli.config_cli`)."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "reference_num": Range(0),
        "reference_seed": Range(0),
        "clip_reference_num": Range(0),
        "fd_splits": Range(0),
        "bootstrap": Range(100),
        "batch_size": AT_LEAST_1,
    }

    images: str | None = None
    """Folder of images, or a quoted glob such as 'out/*.png'."""
    clips: str | None = None
    """Folder of clips to score with the video metrics instead: one animated GIF per clip, prompts (clip captions
    such as "a red cube, front view, turning clockwise") as for --images; `generate --clips-dir` writes it."""
    prompts: str | None = None
    """Prompts file (.txt or .jsonl); None: prompts.txt or metadata.jsonl beside the images."""
    out: str | None = None
    """Write the scores (and the full report) as JSON to this file."""
    compare: tuple[str, str] | None = None
    """Compare two JSON files A B written by --out: B - A per figure with its 95% interval and a verdict."""
    evaluator: str | None = None
    """Evaluator folder (None: the shipped sdtoolkit/assets/evaluator)."""
    reference_num: int = 2048
    """Real renders behind FD_shapes, precision and recall (0 skips them)."""
    reference_seed: int = 10_000
    """Dataset seed of the reference renders."""
    clip_reference_num: int = 256
    """--clips: real clips (same frames and size) behind FVD_shapes (0 skips it)."""
    fd_splits: int = 4
    """K interleaved splits of the images whose FD / recall give those figures' intervals (0: none)."""
    bootstrap: int = 2000
    """Bootstrap resamples of every other interval."""
    diversity: bool = True
    """Compute the per-prompt diversity figures (--no-diversity skips them)."""
    batch_size: int = 256
    """Images per classifier forward pass."""
    device: str = "cpu"
    """torch device of the classifier, e.g. cpu or cuda."""
    overwrite: bool = False
    """Replace an existing --out file (without it an existing file is refused before any work)."""


def strict_json(value) -> str:
    """JSON that strict parsers accept: a figure that could not be computed (NaN, e.g. a view accuracy with no
    distinguishable view) is written as null, not as the bare NaN Python's json writes."""

    def finite(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [finite(x) for x in v]
        return v

    return json.dumps(finite(value), indent=2, allow_nan=False) + "\n"


def _nan_for_null(value):
    """The inverse of `strict_json` for a saved report: null figures back to NaN (older files hold bare NaN)."""
    if value is None:
        return math.nan
    if isinstance(value, dict):
        return {k: _nan_for_null(x) for k, x in value.items()}
    if isinstance(value, list):
        return [_nan_for_null(x) for x in value]
    return value


def run(args) -> int:
    config = config_cli.resolve_flat(args, EvalCommand, "eval")
    args.no_diversity = not args.diversity
    config_cli.check_device(args.device)
    given = [flag for flag, value in (("--images", args.images), ("--clips", args.clips), ("--compare", args.compare))
             if value is not None]  # fmt: skip
    if len(given) > 1:  # one of them used to win silently
        raise CLIError(f"give one of --images, --clips or --compare, not {' and '.join(given)}")
    if args.out:
        from sdtoolkit.runs import OutputFolderError, check_new_files

        try:
            check_new_files([args.out], overwrite=args.overwrite)
        except OutputFolderError as error:
            raise CLIError(str(error)) from None
    if args.compare:
        return run_compare(args)
    if args.clips is not None:
        return run_clips(args, config)
    from sdtoolkit.data.dataset import parse_caption
    from sdtoolkit.eval.images import find_images, read_prompts
    from sdtoolkit.eval.metrics import Evaluator
    from sdtoolkit.eval.report import format_report

    # 1. Check every input before any work.
    if args.images is None:
        raise CLIError("give --images FOLDER (or --clips FOLDER, or --compare A.json B.json)")
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
    if args.fd_splits < 0 or args.fd_splits == 1:
        raise CLIError(f"--fd-splits must be 0 (no FD interval) or at least 2, got {args.fd_splits}")
    if args.bootstrap < 100:
        raise CLIError(f"--bootstrap must be at least 100 resamples, got {args.bootstrap}")
    if args.evaluator is not None and not (Path(args.evaluator) / "config.json").is_file():
        raise CLIError(f"--evaluator {args.evaluator!r} has no config.json; give a folder saved by train-evaluator")
    images = _load_images(files)

    # 2. Score: the evaluator's plain scores (comparable with earlier runs) and the full report with intervals.
    evaluator = Evaluator.load(args.evaluator, device=args.device)
    evaluator.batch_size = args.batch_size
    scores = evaluator.score(images, prompts)
    report = evaluator.report(
        images,
        prompts,
        reference_num=args.reference_num if len(files) >= 2 else 0,
        reference_seed=args.reference_seed,
        fd_splits=args.fd_splits,
        diversity=not args.no_diversity,
        num_resamples=args.bootstrap,
    )
    if "fd_shapes" in report["metrics"]:
        scores["fd_shapes"] = report["metrics"]["fd_shapes"]["value"]
        scores["fd_reference_num"] = args.reference_num
    scores["view_accuracy_4way"] = scores.pop("view_accuracy")
    scores.update({name: m["value"] for name, m in report["metrics"].items()})

    # 3. Report.
    print(f"{len(files)} images, {report['num_prompts']} prompts")
    if args.fd_splits >= 2 and report.get("fd_splits") == 0 and "fd_shapes" in report["metrics"]:
        print(
            f"note: --fd-splits {args.fd_splits} needs at least {4 * args.fd_splits} images (4 per split); FD_shapes "
            f"of these {len(files)} has no interval",
            file=sys.stderr,
        )
    print(format_report(report))
    if args.out:
        result = {"images": args.images, "prompts": args.prompts, "evaluator": args.evaluator, "scores": scores}
        result["report"] = report
        result["config"] = config_cli.to_dict(config)  # the resolved settings (`--config` takes this object back)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(strict_json(result))
        print(f"wrote {args.out}")
    return 0


def run_clips(args, config) -> int:
    """`--clips FOLDER`: the video figures of a folder of GIF clips (`sdtoolkit.eval.video.clip_report`)."""
    from sdtoolkit.data.clips import parse_clip_caption
    from sdtoolkit.eval.images import natural_key, read_prompts
    from sdtoolkit.eval.metrics import Evaluator
    from sdtoolkit.eval.report import format_report
    from sdtoolkit.eval.video import CLIP_SUFFIX, clip_report, load_clips

    folder = Path(args.clips)
    if not folder.is_dir():
        raise CLIError(f"--clips {args.clips!r} is not a folder; give a folder of {CLIP_SUFFIX} clips")
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() == CLIP_SUFFIX), key=natural_key)
    if not files:
        raise CLIError(f"--clips {args.clips!r} holds no {CLIP_SUFFIX} file (one animated GIF per clip)")
    try:
        prompts = read_prompts(files, args.prompts)
        for prompt in prompts:
            parse_clip_caption(prompt)
    except ValueError as error:
        raise CLIError(str(error)) from error
    if args.clip_reference_num == 1:
        raise CLIError("--clip-reference-num must be 0 (skip FVD_shapes) or at least 2, got 1")
    if args.fd_splits == 1:
        raise CLIError(f"--fd-splits must be 0 (no FVD interval) or at least 2, got {args.fd_splits}")
    try:
        frames = load_clips(files)
    except ValueError as error:
        raise CLIError(f"--clips: {error}") from None
    except Exception as error:  # PIL raises OSError, SyntaxError, ... on corrupt files
        raise CLIError(f"--clips: a clip could not be read ({error}); replace or remove it") from None
    if frames.shape[1] < 2:
        raise CLIError(f"--clips: {files[0]} has one frame; a clip needs at least 2")
    evaluator = Evaluator.load(args.evaluator, device=args.device)
    evaluator.batch_size = args.batch_size
    report = clip_report(
        evaluator,
        frames,
        prompts,
        reference_num=args.clip_reference_num,
        fd_splits=args.fd_splits,
        num_resamples=args.bootstrap,
    )
    print(f"{len(files)} clips of {report['num_frames']} frames, {report['num_prompts']} prompts")
    print(format_report(report))
    if args.out:
        scores = {name: m["value"] for name, m in report["metrics"].items()}
        result = {"clips": args.clips, "prompts": args.prompts, "evaluator": args.evaluator, "scores": scores}
        result["report"] = report
        result["config"] = config_cli.to_dict(config)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(strict_json(result))
        print(f"wrote {args.out}")
    return 0


def run_compare(args) -> int:
    """`--compare A B`: B - A per figure of two saved reports, with its interval and a verdict."""
    from sdtoolkit.eval.report import compare_reports, format_comparison

    reports = []
    for path in args.compare:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise CLIError(f"--compare: cannot read {path!r} as JSON ({error})") from error
        if "report" not in data:
            raise CLIError(f"--compare: {path!r} has no report; write it with `sdtoolkit eval --images ... --out`")
        reports.append(_nan_for_null(data["report"]))
    comparison = compare_reports(*reports, num_resamples=args.bootstrap)
    print(
        f"A = {args.compare[0]} ({reports[0]['num_images']} images), B = {args.compare[1]} "
        f"({reports[1]['num_images']} images)"
    )
    print(format_comparison(comparison))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(strict_json({"a": args.compare[0], "b": args.compare[1], **comparison}))
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
    except Exception as error:  # PIL raises OSError, SyntaxError, AttributeError, ... on corrupt files
        for file in files:
            try:
                with Image.open(file) as image:
                    image.load()
            except Exception as reason:
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
