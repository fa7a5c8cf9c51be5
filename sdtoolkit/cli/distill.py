"""`sdtoolkit distill <method>`: train a few-step student; one subcommand per registered distillation method.

Flags come from the typed dataclass configs: `TrainConfig` (teacher, data, loop) and the method's config, one
`--flag` per field with the field's docstring as help. Values resolve in this order, later wins: the dataclass
defaults, the run being resumed (`--resume`), a JSON config file (`--config`, the layout of a run's config.json:
`{"method": ..., "train": {...}, "<method>": {...}}`), then the flags given on the command line. The resolved
configuration is written to `<output>/config.json`. Every bad input is reported before any training starts.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import re
import textwrap
import types
import typing
from pathlib import Path
from typing import Any

from sdtoolkit.cli import CLIError

RESERVED = ("config", "resume")


def add_parser(subparsers) -> None:
    from sdtoolkit.distill.loop import TrainConfig, get_method, method_names

    parser = subparsers.add_parser(
        "distill",
        help="Distil a few-step student from a teacher (LCM, LCM-LoRA, PCM, ...).",
        description="Train a few-step student with one of the registered distillation methods, then export it as "
        "a ready diffusers pipeline. `sdtoolkit distill METHOD --help` lists every flag of a method.",
    )
    methods = parser.add_subparsers(dest="method", metavar="METHOD")
    for name in method_names():
        method = get_method(name)
        sub = methods.add_parser(
            name,
            help=_first_sentence(method.description) or name,
            description=method.description or None,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
            argument_default=argparse.SUPPRESS,
        )
        sub.add_argument(
            "--config",
            metavar="FILE.json",
            help="JSON config ({'train': {...}, '<method>': {...}}, e.g. a run's config.json); flags override it.",
        )
        sub.add_argument(
            "--resume",
            metavar="DIR",
            help="Continue a run: its folder (latest checkpoint) or one checkpoints/step_N folder; its config "
            "is the starting point (flags override it, e.g. a larger --max-steps).",
        )
        train_group = sub.add_argument_group("training loop (all methods)")
        _add_dataclass_flags(train_group, TrainConfig, "train")
        method_group = sub.add_argument_group(f"{name} method")
        _add_dataclass_flags(method_group, method.config_class, name)
        sub.set_defaults(run=run)
    parser.set_defaults(run=_require_method(parser))


def _first_sentence(text: str) -> str:
    """The first sentence of a description ("et al." and "e.g." do not end one)."""
    match = re.search(r"(?<!\bal)(?<!\be\.g)\.(\s|$)", text)
    return text[: match.start() + 1] if match else text


def _require_method(parser: argparse.ArgumentParser):
    def run(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    return run


# ---------------------------------------------------------------------------------------------------- flags


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each dataclass field (nerfstudio/tyro style), from the source of `cls` and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass.__module__ == "builtins":
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, following in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_dataclass_flags(group, cls: type, section: str) -> None:
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in RESERVED:
            raise AssertionError(f"{cls.__name__}.{f.name} collides with a reserved flag")
        hint = hints[f.name]
        base, optional = _unwrap_optional(hint)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = docs.get(f.name, "") + f" (default: {_show(default)})"
        kwargs: dict[str, Any] = {"dest": f"{section}.{f.name}", "help": help_text.replace("%", "%%")}
        if base is bool:
            group.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(base) is tuple:
            item = typing.get_args(base)[0]
            group.add_argument(_flag(f.name), nargs="+", type=item, metavar="VALUE", **kwargs)
        elif base in (int, float, str):
            metavar = {int: "N", float: "X", str: "TEXT"}[base]
            group.add_argument(
                _flag(f.name), type=_optional_type(base) if optional else base, metavar=metavar, **kwargs
            )
        else:
            raise AssertionError(f"{cls.__name__}.{f.name}: unsupported flag type {hint}")


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def _optional_type(base: type):
    def parse(text: str):
        return None if text.lower() in ("none", "null") else base(text)

    parse.__name__ = base.__name__
    return parse


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value) if len(value) <= 4 else f"{len(value)} values"
    return str(value)


# ---------------------------------------------------------------------------------------------------- resolution


def resolve(args: argparse.Namespace) -> tuple[Any, Any, Any, Path | None, dict[str, Any]]:
    """(method class, its config, TrainConfig, checkpoint to resume or None, resolved dict), or CLIError."""
    from sdtoolkit.distill.loop import CONFIG_NAME, TrainConfig, config_from_dict, get_method, latest_checkpoint

    name = args.method
    method = get_method(name)
    train_values: dict[str, Any] = {}
    method_values: dict[str, Any] = {}
    checkpoint: Path | None = None

    resume = getattr(args, "resume", None)
    if resume is not None:
        folder = Path(resume)
        if not folder.is_dir():
            raise CLIError(
                f"--resume {resume}: no such folder; pass a run folder (holding config.json) or a checkpoint"
            )
        checkpoint = latest_checkpoint(folder)
        run_dir = checkpoint.parent.parent if checkpoint is not None else folder
        saved = run_dir / CONFIG_NAME
        if not saved.is_file():
            raise CLIError(f"--resume {resume}: no {CONFIG_NAME} in {run_dir}; it is not an sdtoolkit run folder")
        stored = json.loads(saved.read_text())
        if stored.get("method") != name:
            raise CLIError(
                f"--resume {resume} is a {stored.get('method')!r} run, not {name!r}: resume it with "
                f"`sdtoolkit distill {stored.get('method')} --resume {resume}` or choose a {name} run"
            )
        if checkpoint is None:
            raise CLIError(f"--resume {resume}: the run has no checkpoint yet (checkpoints/step_N); start it anew")
        train_values.update(stored.get("train", {}))
        method_values.update(stored.get(name, {}))
        train_values["output"] = str(run_dir)

    config_file = getattr(args, "config", None)
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise CLIError(f"--config {config_file}: no such file; pass a JSON file like a run's config.json")
        try:
            loaded = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise CLIError(f"--config {config_file}: not valid JSON ({error})") from error
        if loaded.get("method", name) != name:
            raise CLIError(f"--config {config_file} is for method {loaded['method']!r}, not {name!r}")
        unknown = sorted(set(loaded) - {"method", "train", name, "sdtoolkit_version"})
        if unknown:
            raise CLIError(f"--config {config_file}: unknown sections {unknown}; valid: method, train, {name}")
        train_values.update(loaded.get("train", {}))
        method_values.update(loaded.get(name, {}))

    for key, value in vars(args).items():
        section, _, field_name = key.partition(".")
        if section == "train":
            train_values[field_name] = value
        elif section == name:
            method_values[field_name] = value

    try:
        train = config_from_dict(TrainConfig, train_values, "train config")
        method_config = config_from_dict(method.config_class, method_values, f"{name} config")
    except (TypeError, ValueError) as error:
        raise CLIError(str(error)) from error
    from sdtoolkit import __version__

    resolved = {
        "method": name,
        "sdtoolkit_version": __version__,
        "train": dataclasses.asdict(train),
        name: dataclasses.asdict(method_config),
    }
    return method, method_config, train, checkpoint, resolved


def check(method, method_config, train, checkpoint: Path | None) -> None:
    """Every check that needs no model: values, files, folders. Raises CLIError naming the value and the fix."""
    from sdtoolkit.distill.data import read_image_captions, read_prompt_file
    from sdtoolkit.distill.loop import BUILTIN_TEACHER, CONFIG_NAME

    try:
        method.check_config(method_config, train)
    except ValueError as error:
        raise CLIError(str(error)) from error
    positive = ("max_steps", "batch_size", "gradient_accumulation_steps", "checkpoint_every", "sample_prompts")
    for key in positive:
        if getattr(train, key) < 1:
            raise CLIError(f"--{key.replace('_', '-')} {getattr(train, key)} must be at least 1")
    if train.mixed_precision not in ("no", "fp16", "bf16"):
        raise CLIError(f"--mixed-precision {train.mixed_precision!r}; choose no, fp16 or bf16")
    if train.log_with not in ("auto", "tensorboard", "none"):
        raise CLIError(f"--log-with {train.log_with!r}; choose auto, tensorboard or none")
    if train.log_with == "tensorboard":
        from sdtoolkit.distill.loop import _tensorboard_available

        if not _tensorboard_available():
            raise CLIError(
                "--log-with tensorboard: tensorboard is not installed; `pip install tensorboard` or omit it"
            )
    _check_teacher(train.teacher)
    if method.data == "images":
        if train.data is not None:
            try:
                read_image_captions(train.data)
            except (FileNotFoundError, ValueError) as error:
                raise CLIError(f"--data: {error}") from error
        elif train.teacher != BUILTIN_TEACHER:
            raise CLIError(
                f"{method.name} trains on real latents: pass --data FOLDER (images with metadata.jsonl or .txt "
                f"captions) for teacher {train.teacher!r} (only {BUILTIN_TEACHER} has built-in data)"
            )
    if train.prompts is not None:
        try:
            read_prompt_file(train.prompts)
        except (FileNotFoundError, ValueError) as error:
            raise CLIError(f"--prompts: {error}") from error
    elif method.data == "prompts" and train.teacher != BUILTIN_TEACHER:
        raise CLIError(
            f"{method.name} needs prompts: pass --prompts FILE (.txt, .jsonl or .csv) for {train.teacher!r}"
        )
    output = Path(train.output)
    if checkpoint is None and ((output / CONFIG_NAME).exists() or (output / "checkpoints").exists()):
        raise CLIError(
            f"--output {train.output} already holds a run: continue it with --resume {train.output}, "
            "or choose another --output"
        )


def _check_teacher(teacher: str) -> None:
    from sdtoolkit.models.loading import BUILTIN_MODELS, BUILTIN_PREFIX

    if teacher.startswith(BUILTIN_PREFIX):
        if teacher[len(BUILTIN_PREFIX) :] not in BUILTIN_MODELS:
            valid = ", ".join(BUILTIN_PREFIX + name for name in BUILTIN_MODELS)
            raise CLIError(f"--teacher {teacher}: unknown built-in teacher; valid: {valid}")
        return
    path = Path(teacher).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise CLIError(
                f"--teacher {teacher}: the folder has no model_index.json; pass a diffusers pipeline folder"
            )
        return
    if teacher.count("/") != 1 or teacher.startswith((".", "/", "~")):
        raise CLIError(
            f"--teacher {teacher}: not builtin:shapes, an existing diffusers folder, or a Hub id like "
            "stable-diffusion-v1-5/stable-diffusion-v1-5"
        )


def load_teacher(spec: str):
    """The teacher pipeline, or CLIError with the loader's message (e.g. how to fetch a Hub model offline)."""
    from sdtoolkit.models.loading import load_teacher_pipeline

    try:
        return load_teacher_pipeline(spec)
    except (OSError, ValueError) as error:
        raise CLIError(f"--teacher {spec}: {str(error).splitlines()[0]}") from error


# ---------------------------------------------------------------------------------------------------- data


def prepare_data(teacher, pipeline, train, method) -> tuple[Any, Any, list[str]]:
    """(dataset, text cache, prompt list) for `method.data`: cached VAE latents of an image–caption folder or of
    builtin:shapes renders, or the prompts of a prompt file / `sdtoolkit.data.all_prompts()`."""
    from sdtoolkit.distill.config import BUILTIN_TEACHER
    from sdtoolkit.distill.data import (
        CachedImageDataset,
        CachedPromptDataset,
        build_latent_cache,
        build_text_cache,
        folder_images,
        folder_key,
        read_image_captions,
        read_prompt_file,
    )
    from sdtoolkit.models.loading import teacher_resolution

    cache = Path(train.cache_dir) if train.cache_dir else Path(train.output) / "cache"
    resolution = train.resolution or teacher_resolution(pipeline)
    extra_prompts: list[str] = []
    if train.prompts is not None:
        extra_prompts = read_prompt_file(train.prompts)
    elif train.teacher == BUILTIN_TEACHER:
        from sdtoolkit.data import all_prompts

        extra_prompts = all_prompts()
    if method.data == "images":
        if train.data is not None:
            pairs = read_image_captions(train.data)
            images, count = folder_images(pairs, resolution), len(pairs)
            key = folder_key(pairs, resolution, train.teacher)
        else:
            images, count, key = _shapes_images(train, resolution)
        latents = build_latent_cache(teacher, images, count, cache, key)
        captions = latents.pop("captions")
        text = build_text_cache(teacher, extra_prompts or captions, cache, train.teacher)
        if not set(captions) <= set(text.prompts):
            text = build_text_cache(teacher, [*extra_prompts, *captions], cache, train.teacher)
        return CachedImageDataset(text, latents, captions), text, list(extra_prompts or text.prompts)
    text = build_text_cache(teacher, extra_prompts, cache, train.teacher)
    return CachedPromptDataset(text, extra_prompts), text, list(extra_prompts)


SHAPES_DATA_SEED = 1
"""Seed of the builtin:shapes renders used as real data (`sdtoolkit.data.ShapesDataset`)."""


def _shapes_images(train, resolution: int):
    from sdtoolkit.data import ShapesDataset
    from sdtoolkit.distill.data import fingerprint

    dataset = ShapesDataset(train.builtin_images, seed=SHAPES_DATA_SEED, resolution=resolution)

    def items():
        for i in range(len(dataset)):
            item = dataset[i]
            yield item["pixel_values"], item["caption"]

    key = fingerprint("latents", train.teacher, "shapes", train.builtin_images, SHAPES_DATA_SEED, resolution)
    return items(), len(dataset), key


# ---------------------------------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    from sdtoolkit.distill.loop import Trainer

    method, method_config, train, checkpoint, resolved = resolve(args)
    check(method, method_config, train, checkpoint)
    pipeline = load_teacher(train.teacher)
    trainer = Trainer(method, method_config, train, resolved, prepare_data, resume_from=checkpoint, pipeline=pipeline)
    output = trainer.run()
    print(f"run folder: {output}" + (f"\nexported pipeline: {output / 'export'}" if train.export else ""))
    return 0
