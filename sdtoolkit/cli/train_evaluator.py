"""`sdtoolkit train-evaluator`: train the shapes classifier that `sdtoolkit eval` uses, on fresh renders."""

from __future__ import annotations

import json
from pathlib import Path

from sdtoolkit.cli import CLIError


def add_parser(subparsers) -> None:
    from sdtoolkit.eval.train import EvaluatorTrainingConfig

    defaults = EvaluatorTrainingConfig()
    parser = subparsers.add_parser(
        "train-evaluator",
        help="train the shapes evaluator (classifier + FD features) on fresh renders",
        description=(
            "Renders a training pool and a held-out set of procedural shapes, trains the small CNN classifier "
            "(shape, colour, view heads), and saves it as a diffusers folder with training_config.json, "
            "metrics.json (held-out accuracy) and a README.md model card. This is how assets/evaluator was made."
        ),
    )
    parser.add_argument("--output", required=True, help="folder to write the evaluator into (must be empty or new)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the training renders and the run")
    parser.add_argument("--num-train", type=int, default=defaults.num_train, help="rendered training images")
    parser.add_argument("--num-test", type=int, default=defaults.num_test, help="held-out images (seed + 1)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images per step")
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate, help="peak AdamW learning rate")
    parser.add_argument("--num-threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def run(args) -> int:
    output = Path(args.output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise CLIError(f"--output {args.output!r} exists and is not an empty folder; choose a new folder")
    for name in ("steps", "num_train", "num_test", "batch_size"):
        value = getattr(args, name)
        if value < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.num_test < 2:
        raise CLIError(f"--num-test must be at least 2, got {args.num_test}")
    if args.learning_rate <= 0:
        raise CLIError(f"--learning-rate must be positive, got {args.learning_rate}")

    import torch

    from sdtoolkit.eval.train import EvaluatorTrainingConfig, train_evaluator

    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    config = EvaluatorTrainingConfig(
        num_train=args.num_train,
        num_test=args.num_test,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
    )
    metrics = train_evaluator(output, config=config, progress=not args.quiet)
    print(json.dumps(metrics["held_out_accuracy"], indent=2))
    print(f"saved the evaluator to {output}")
    return 0
