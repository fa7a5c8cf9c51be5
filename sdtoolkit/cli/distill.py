"""`sdtoolkit distill <method>`: train a few-step student; one subcommand per registered distillation method.

Flags come from the typed dataclass configs: `TrainConfig` (teacher, data, loop) and the method's config, one
`--flag` per field with the field's docstring as help. Values resolve in this order, later wins: the dataclass
defaults, the run being resumed (`--resume`), a JSON config file (`--config`, the layout of a run's config.json:
`{"method": ..., "train": {...}, "<method>": {...}}`), then the flags given on the command line. The resolved
configuration is written to `<output>/config.json`. Every bad input is reported before any training starts.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from sdtoolkit.cli import CLIError, config_cli


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
            help=(_first_sentence(method.description) or name).replace("%", "%%"),
            description=method.description or None,
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
            help="Continue a run: its folder (latest checkpoint) or one checkpoints/step_N folder. Its config is "
            "the starting point; flags may change only "
            + ", ".join(_flag(k) for k in TrainConfig.RESUMABLE)
            + " (other flags that differ from the run are refused).",
        )
        train_group = sub.add_argument_group("training loop (all methods)")
        names = config_cli.add_flags(train_group, TrainConfig, "train")
        method_group = sub.add_argument_group(f"{name} method")
        config_cli.add_flags(method_group, method.config_class, name, names=names)
        sub.set_defaults(
            run=run, config_names=names, config_sections={"train": TrainConfig, name: method.config_class}
        )
    parser.set_defaults(run=_require_method(parser))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


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

field_docs = config_cli.field_docs  # the field-docstring reader now lives in sdtoolkit.cli.config_cli


# ---------------------------------------------------------------------------------------------------- resolution


def resolve(args: argparse.Namespace) -> tuple[Any, Any, Any, Path | None, dict[str, Any]]:
    """(method class, its config, TrainConfig, checkpoint to resume or None, resolved dict), or CLIError naming
    every bad value (one line each) before anything is written."""
    from sdtoolkit.distill.loop import CONFIG_NAME, TrainConfig, get_method, latest_checkpoint

    name = args.method
    method = get_method(name)
    names: dict[str, str] = getattr(args, "config_names", {})
    stored: dict[str, Any] = {}
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
        try:
            stored = json.loads(saved.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CLIError(f"--resume {resume}: {saved} is not valid JSON ({error})") from None
        if not isinstance(stored, dict):
            raise CLIError(f"--resume {resume}: {saved} is not a JSON object of settings")
        if stored.get("method") != name:
            raise CLIError(
                f"--resume {resume} is a {stored.get('method')!r} run, not {name!r}: resume it with "
                f"`sdtoolkit distill {stored.get('method')} --resume {resume}` or choose a {name} run"
            )
        if checkpoint is None:
            raise CLIError(
                f"--resume {resume}: the run has no checkpoint yet (checkpoints/step_N); rerun the same command "
                "without --resume to start it again in place"
            )
        newest = latest_checkpoint(run_dir)
        if newest is not None and newest != checkpoint:
            raise CLIError(
                f"--resume {resume}: the run also holds {newest.name}, newer than {checkpoint.name}; continuing from "
                f"the older one would mix two training histories in {run_dir} (losses, samples, checkpoints): resume "
                "the newest, or copy the run folder and delete the newer checkpoints in the copy"
            )
        stored = {"train": {**stored.get("train", {}), "output": str(run_dir)}, name: stored.get(name, {})}

    requested: dict[str, Any] = {}
    config_file = getattr(args, "config", None)
    if config_file is not None:
        valid = ("method", "sdtoolkit_version", "train", name)
        loaded = config_cli.read_config_file(config_file, valid)
        if loaded.get("method", name) != name:
            raise CLIError(f"--config {config_file} is for method {loaded['method']!r}, not {name!r}")
        requested = {key: loaded[key] for key in ("train", name) if key in loaded}
        bad = [
            f"--config {config_file}: {key} = {json.dumps(value)}: expected an object of {key} settings"
            for key, value in requested.items()
            if not isinstance(value, dict)
        ]
        if bad:
            config_cli.fail(bad)
    requested = config_cli.merge(requested, config_cli.given(args))

    if resume is not None:
        changeable = {f"train.{key}" for key in TrainConfig.RESUMABLE}
        lines = config_cli.resume_conflicts(stored, requested, changeable, names)
        if lines:
            config_cli.fail(lines)
    values = config_cli.merge(stored, requested)
    errors: list[str] = []
    sections = []
    for key, cls in (("train", TrainConfig), (name, method.config_class)):
        try:
            sections.append(config_cli.build_section(cls, values.get(key, {}), key, names))
        except CLIError as error:
            errors += str(error).splitlines()
    if errors:
        config_cli.fail(errors)
    train, method_config = sections
    if checkpoint is not None and train.max_steps < int(checkpoint.name[5:]):
        raise CLIError(
            f"--max-steps {train.max_steps} is below the {int(checkpoint.name[5:])} steps the run has trained "
            f"({checkpoint}); give --max-steps {int(checkpoint.name[5:])} or more (the same number re-exports)"
        )
    from sdtoolkit import __version__

    resolved = {
        "method": name,
        "sdtoolkit_version": __version__,
        "train": config_cli.to_dict(train),
        name: config_cli.to_dict(method_config),
    }
    return method, method_config, train, checkpoint, resolved


def check(method, method_config, train, checkpoint: Path | None) -> None:
    """Every check that needs no model: values, files, folders. Raises CLIError naming the value and the fix."""
    from sdtoolkit.distill.config import SHAPES_TEACHERS, shapes_video_teacher, shapes_world
    from sdtoolkit.distill.data import read_image_captions, read_prompt_file

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
        elif not (shapes_world(train.teacher) or shapes_video_teacher(train.teacher)):
            raise CLIError(
                f"{method.name} trains on real latents: pass --data FOLDER (images with metadata.jsonl or .txt "
                f"captions) for teacher {train.teacher!r} (only {' and '.join(SHAPES_TEACHERS)}, folders exported "
                "from them and video teachers trained on them have built-in data)"
            )
    if train.prompts is not None:
        try:
            read_prompt_file(train.prompts)
        except (FileNotFoundError, ValueError) as error:
            raise CLIError(f"--prompts: {error}") from error
    elif method.data == "prompts" and not shapes_world(train.teacher):
        raise CLIError(
            f"{method.name} needs prompts: pass --prompts FILE (.txt, .jsonl or .csv) for {train.teacher!r}"
        )
    from sdtoolkit.distill.checkpoint import CheckpointError, refuse_pickles
    from sdtoolkit.distill.loop import check_output_folder
    from sdtoolkit.runs import OutputFolderError

    try:  # the output folder is the user's (sdtoolkit.runs); a checkpoint holding a pickle is never loaded
        check_output_folder(train, resume=checkpoint is not None)
        if checkpoint is not None:
            refuse_pickles(checkpoint)
    except (OutputFolderError, CheckpointError) as error:
        raise CLIError(str(error)) from None


def _check_teacher(teacher: str) -> None:
    from sdtoolkit.models.loading import BUILTIN_PREFIX, BUILTIN_TEACHERS

    if teacher.startswith(BUILTIN_PREFIX):
        if teacher[len(BUILTIN_PREFIX) :] not in BUILTIN_TEACHERS:
            valid = ", ".join(BUILTIN_PREFIX + name for name in BUILTIN_TEACHERS)
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
    from sdtoolkit.models.loading import hub_offline, uncached_hub_model

    if hub_offline():  # a Hub id offline must be in the cache: said now, not after the data checks or a cache build
        missing = uncached_hub_model(teacher)
        if missing is not None:
            raise CLIError(f"--teacher {teacher}: no such folder, and as a Hub id: {missing}")


def check_resolution(resolution: int | None, pipeline, flag: str, key: str) -> None:
    """A resolution the teacher's VAE maps to whole latents: a multiple of its scale factor, at least one UNet
    downsampling's worth of latents. CLIError naming the value and the nearest valid ones."""
    if resolution is None:
        return
    factor = int(getattr(pipeline, "vae_scale_factor", 8))
    if resolution % factor or resolution < 2 * factor:
        low = max(2 * factor, resolution // factor * factor)
        high = max(2 * factor, -(-resolution // factor) * factor)
        nearest = f"{low}" if low == high else f"{low} or {high}"
        raise CLIError(
            f"{flag} {resolution}: must be a multiple of the teacher's VAE scale factor {factor} and at least "
            f"{2 * factor} (e.g. {nearest}) ({key})"
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
    from sdtoolkit.distill.config import shapes_world
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
    elif shapes_world(train.teacher):
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
    if type(pipeline).__name__ == "AnimateDiffPipeline" and args.method != "mcm":
        raise CLIError(
            f"--teacher {train.teacher} is a video teacher (AnimateDiffPipeline): `distill {args.method}` distils "
            "image teachers; distil a video teacher with `sdtoolkit distill mcm`"
        )
    try:  # whether the method applies to the teacher's family (e.g. a UNet w-embedding on a transformer)
        method.check_teacher(method_config, train, pipeline)
    except ValueError as error:
        raise CLIError(str(error)) from error
    check_resolution(train.resolution, pipeline, "--resolution", "train.resolution")
    context = {"num_train_timesteps": int(pipeline.scheduler.config.num_train_timesteps)}
    config_cli.check_with_model({"train": train, args.method: method_config}, args.config_names, context)
    trainer = Trainer(method, method_config, train, resolved, prepare_data, resume_from=checkpoint, pipeline=pipeline)
    output = trainer.run()
    print(f"run folder: {output}" + (f"\nexported pipeline: {output / 'export'}" if train.export else ""))
    return 0
