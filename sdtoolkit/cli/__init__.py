"""The `sdtoolkit` command line: one subcommand per job, each in its own module."""

from __future__ import annotations

import argparse
import importlib
import re
import sys

# name -> module under sdtoolkit.cli that defines `add_parser(subparsers)` and `run(args)`.
# Later subcommands plug in by adding one line here.
SUBCOMMANDS: dict[str, str] = {
    "info": "sdtoolkit.cli.info",
    "eval": "sdtoolkit.cli.eval",
    "train-evaluator": "sdtoolkit.cli.train_evaluator",
    "train-teacher": "sdtoolkit.cli.train_teacher",
    "train-video-teacher": "sdtoolkit.cli.train_video_teacher",
    "train-novel-view-prior": "sdtoolkit.cli.train_novel_view_prior",
    "generate": "sdtoolkit.cli.generate",
    "distill": "sdtoolkit.cli.distill",
    "export": "sdtoolkit.cli.export",
    "text-to-3d": "sdtoolkit.cli.text_to_3d",
    "image-to-3d": "sdtoolkit.cli.image_to_3d",
    "eval-3d": "sdtoolkit.cli.eval_3d",
    "convert-nerf": "sdtoolkit.cli.convert_nerf",
}


class CLIError(Exception):
    """A bad input the user can fix; printed as one line per problem, exit status 2, nothing written."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `sdtoolkit distill lcm: error: argument --max-steps: invalid int value: 'two'
    (sdtoolkit distill lcm --help lists the flags)` instead of the whole usage block before it; exit status 2."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # argparse takes `-1e-4` for a flag (its negative-number pattern has no exponent), so `--lr -1e-4` said
        # "expected one argument" instead of naming the value; numbers with an exponent are values here
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help lists the flags)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="sdtoolkit",
        description="Diffusion distillation (LCM, PCM, DMD2, SiD) and text-to-3D score distillation on one Denoiser.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMANDS.values():
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def _version() -> str:
    from sdtoolkit import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # outside a loop's own handling (imports, loading, export) or a second Ctrl-C
        print(
            "\nsdtoolkit: stopped: Ctrl-C; what was written is kept (a run continues from its last checkpoint "
            "with --resume, a run stopped before its first one with the same command)",
            file=sys.stderr,
        )
        return 130


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the subcommand that was given them, not by the top-level parser
        prog = " ".join(["sdtoolkit", *(str(v) for v in (args.command, getattr(args, "method", None)) if v)])
        print(
            f"{prog}: error: unrecognized arguments: {' '.join(unknown)} ({prog} --help lists the flags)",
            file=sys.stderr,
        )
        return 2
    if args.command is None:
        parser.print_help()
        return 0
    from sdtoolkit.runs import RunError

    try:
        return int(args.run(args) or 0)
    except RunError as error:  # a run that could not start or had to stop (sdtoolkit.runs): one line, its status
        print(f"sdtoolkit {args.command}: {error.label}: {error}", file=sys.stderr)
        return error.exit_code
    except CLIError as error:
        for line in str(error).splitlines() or [""]:
            print(f"sdtoolkit {args.command}: error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
