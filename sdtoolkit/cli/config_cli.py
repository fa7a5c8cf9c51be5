"""One config → command-line mechanism for every `sdtoolkit` subcommand.

Each subcommand's settings are typed dataclasses (nerfstudio style, a docstring under every field, bounds in
`BOUNDS`, see `sdtoolkit.core.config`). This module turns them into argparse flags, one `--flag` per field, with the
field's docstring, its dataclass default and its bounds as help; nested dataclass fields become dotted flags
(`--nerf.num-samples`). Every subcommand resolves its values the same way, later wins:

    dataclass defaults  <  the run being resumed (--resume)  <  --config FILE (JSON)  <  flags given

then builds the configs strictly (unknown keys and wrong types: one line each, naming the key), checks every value
(bounds, finiteness) before anything is written, refuses on --resume any flag that would change a setting the run
cannot change (each config's `RESUMABLE` fields may change), and saves the resolved config beside its output.

Why our own ~300 lines and not tyro (which nerfstudio uses; tyro 1.0.17 installs and reads these dataclasses and
their field docstrings fine): (1) the failures users hit are in `--config` files and resumed configs, which tyro
does not check: the strict, typed JSON loading and the bounds are needed either way, and tyro would only replace
the flag generation, which is the small part; (2) one argparse tree keeps `sdtoolkit --help`, `sdtoolkit distill
METHOD --help` and the flat flag names that README commands and scripts use (`--max-steps`, not
`--train.max-steps`), and our one-line error convention (tyro prints multi-line boxes); (3) text-to-3D's guidance
config depends on `--method` (`guidance: Any`), which tyro cannot show as flags without turning the method into a
subcommand; (4) no new dependencies (tyro brings rich, docstring-parser, typeguard and shtab into every install).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import os
import textwrap
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdtoolkit.cli import CLIError
from sdtoolkit.core.config import ConfigError, bounds_of, build, check, show, unwrap_optional

DEST = "cfg:"
"""Prefix of the argparse dest of every generated flag; the rest is the dotted config key (`train.max_steps`)."""
RESERVED = ("config", "resume")
"""Flags every subcommand owns; no config field may be called that."""


def fail(lines: list[str]) -> None:
    """Raise the lines as one CLIError (one printed line each)."""
    raise CLIError("\n".join(lines))


def check_device(device: str, flag: str = "--device") -> None:
    """A torch device this process can use: cpu, or cuda / cuda:N where torch sees a CUDA device (CLIError, one
    line, otherwise; a CPU-only torch wheel used to end a 3D run in a traceback after claiming its folder)."""
    if device != "cpu" and device != "cuda" and not device.startswith("cuda:"):
        raise CLIError(f"{flag} {device!r} is not supported; use cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise CLIError(f"{flag} {device}: torch sees no CUDA device here (a CPU-only build?); use {flag} cpu")


EXPORT_COMMAND_KEYS = ("mesh_resolution", "formats", "uv_texture", "video_frames")
"""The 3D commands' export settings a run's config.json keeps under "command" (a `--resume` re-exports with them)."""


def export_settings(command: Any) -> dict[str, Any]:
    """The `EXPORT_COMMAND_KEYS` of a 3D command's settings that it has, for config.json's "command"."""
    return {key: getattr(command, key) for key in EXPORT_COMMAND_KEYS if hasattr(command, key)}


def resumed_command(cls: type, stored: dict, values: dict, names: dict[str, str]) -> Any:
    """A resumed 3D run's command settings: the export settings its config.json keeps under "command" (popped from
    `stored`), overridden by this call's `values`."""
    kept = stored.pop("command", None) or {}
    kept = {key: value for key, value in kept.items() if key in EXPORT_COMMAND_KEYS} if isinstance(kept, dict) else {}
    return build_section(cls, merge(kept, values), "command", names)


def check_resumed_kind(output: Path, kind: str) -> None:
    """`--resume DIR` of a folder that holds another kind of run (its manifest says so): one line naming the kind
    and the command that resumes it, instead of a list of the other run's unknown config keys."""
    from sdtoolkit.runs import a_kind, read_manifest

    other = (read_manifest(output) or {}).get("kind")
    if other and other != kind:
        raise CLIError(
            f"--resume: {str(output)!r} holds {a_kind(other)} run, not {a_kind(kind)} run; continue it with "
            f"`sdtoolkit {other}{' METHOD' if other == 'distill' else ''} --resume {output}`"
        )


def check_resumed_steps(output: Path, steps: int) -> None:
    """A resumed 3D run's `--steps` is at least the steps its checkpoint has trained (else its config.json would
    record fewer steps than the asset had); CLIError naming both otherwise."""
    from sdtoolkit.text_to_3d.trainer import read_checkpoint_state

    try:
        trained = int(read_checkpoint_state(Path(output))["step"])
    except (KeyError, TypeError, ValueError):
        return  # a torn or missing state is reported by the loader with its own message
    if steps < trained:
        raise CLIError(
            f"--steps {steps} is below the {trained} steps the run in {str(output)!r} has trained; give --steps "
            f"{trained} or more (the same number re-exports without training)"
        )


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


def flag_of(prefix: str, name: str) -> str:
    return "--" + prefix + name.replace("_", "-")


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def help_text(doc: str, default: str, bound: Any = None) -> str:
    """`<docstring> (default: X; bounds)`: the form every generated flag's help takes (tests check it)."""
    text = f"{doc} (default: {default}" + (f"; {bound.describe()}" if bound is not None else "") + ")"
    return text.replace("%", "%%")


def add_flags(
    group,
    cls: type,
    key: str,
    *,
    prefix: str = "",
    skip: tuple[str, ...] = (),
    aliases: dict[str, tuple[str, ...]] | None = None,
    defaults: dict[str, str] | None = None,
    names: dict[str, str] | None = None,
    positional: dict[str, str] | None = None,
    repeat: dict[str, str] | None = None,
) -> dict[str, str]:
    """Adds one flag per field of dataclass `cls` to `group` (nested dataclasses recurse as `--<field>.<sub>`).

    `key` is the dotted config key of `cls` (`train`, `lcm`, `run.nerf`); the flag of field `f` is
    `--<prefix><f>` with dest `cfg:<key>.<f>`. `skip`: dotted keys without a flag; `aliases`: dotted key -> extra
    option strings; `defaults`: dotted key -> the default to show instead of the dataclass's (method-dependent
    ones); `positional`: dotted key -> METAVAR of an optional positional argument instead of a flag; `repeat`:
    dotted key (a `tuple[str, ...]` field) -> a flag given once per item (`--prompt A --prompt B`). Returns (and
    fills `names`) dotted key -> flag, for error messages."""
    positional = positional or {}
    repeat = repeat or {}
    names = {} if names is None else names
    aliases = aliases or {}
    defaults = defaults or {}
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    bounds = bounds_of(cls)
    for f in dataclasses.fields(cls):
        dotted = f"{key}.{f.name}" if key else f.name
        if dotted in skip or not f.init:
            continue
        if f.name in RESERVED and not prefix:
            raise AssertionError(f"{cls.__name__}.{f.name} collides with a reserved flag")
        base, optional = unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(base):
            add_flags(
                group,
                base,
                dotted,
                prefix=f"{prefix}{f.name}.",
                skip=skip,
                aliases=aliases,
                defaults=defaults,
                names=names,
            )
            continue
        option = flag_of(prefix.replace("_", "-"), f.name)  # messages and --help name the hyphenated spelling
        shown = defaults.get(dotted, show(field_default(f)))
        kwargs: dict[str, Any] = {
            "dest": DEST + dotted,
            "help": help_text(docs.get(f.name, ""), shown, bounds.get(f.name)),
        }
        options = [*aliases.get(dotted, ()), option]  # a short alias, if any, names the flag in messages
        if "_" in prefix:  # `--mesh-refine.steps` is also `--mesh_refine.steps`, the config key's own spelling
            options.append(flag_of(prefix, f.name))
        if dotted in positional:
            del kwargs["dest"]
            group.add_argument(DEST + dotted, nargs="?", metavar=positional[dotted], **kwargs)
            names[dotted] = positional[dotted]
            continue
        if dotted in repeat:
            group.add_argument(repeat[dotted], action="append", metavar="TEXT", **kwargs)
            names[dotted] = repeat[dotted]
            continue
        if base is bool:
            group.add_argument(*options, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(base) is tuple:
            args = typing.get_args(base)
            nargs = "+" if len(args) == 2 and args[1] is Ellipsis else len(args)
            group.add_argument(*options, nargs=nargs, type=_parser(args[0], optional), metavar="VALUE", **kwargs)
        elif base in (int, float, str):
            metavar = {int: "N", float: "X", str: "TEXT"}[base]
            group.add_argument(*options, type=_parser(base, optional), metavar=metavar, **kwargs)
        else:
            raise AssertionError(f"{cls.__name__}.{f.name}: no flag for type {hints[f.name]}; skip it")
        names[dotted] = options[0]
    return names


def _parser(base: type, optional: bool) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if optional and text.lower() in ("none", "null"):
            return None
        return base(text)

    parse.__name__ = {int: "integer", float: "number", str: "text"}.get(base, base.__name__)
    return parse


def add_common(parser: argparse.ArgumentParser, config_help: str, resume_help: str | None = None, **resume) -> None:
    """`--config FILE` (and `--resume` where the command can resume) on a subcommand's parser."""
    parser.add_argument("--config", metavar="FILE.json", help=config_help)
    if resume_help is not None:
        parser.add_argument("--resume", help=resume_help, **resume)


# ------------------------------------------------------------------------------------------------ resolution


def given(args: argparse.Namespace) -> dict[str, Any]:
    """The values of the generated flags that were given, as a nested dict (`{"train": {"max_steps": 5}}`)."""
    out: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if dest.startswith(DEST):
            set_path(out, dest[len(DEST) :], list(value) if isinstance(value, tuple) else value)
    return out


def set_path(tree: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value


def flatten(tree: dict, key: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}` (lists and non-dict values are leaves)."""
    out: dict[str, Any] = {}
    for name, value in tree.items():
        dotted = f"{key}.{name}" if key else name
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted))
        else:
            out[dotted] = value
    return out


def merge(base: dict, override: dict) -> dict:
    """Deep merge: `override`'s values win; nested dicts merge key by key."""
    out = dict(base)
    for name, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(name), dict):
            out[name] = merge(out[name], value)
        else:
            out[name] = value
    return out


def read_config_file(path: str | os.PathLike, valid: tuple[str, ...]) -> dict[str, Any]:
    """The JSON object of a `--config` file; one-line CLIError if it is missing, not JSON, not an object or has a
    top-level key outside `valid`."""
    file = Path(path)
    if not file.is_file():
        raise CLIError(f"--config {path}: no such file; pass a JSON file (a run's config.json is one)")
    try:
        loaded = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CLIError(f"--config {path}: not valid JSON ({error})") from None
    if not isinstance(loaded, dict):
        raise CLIError(f"--config {path}: expected a JSON object of settings, got {type(loaded).__name__}")
    unknown = sorted(set(loaded) - set(valid))
    if unknown:
        raise CLIError(
            f"--config {path}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"valid keys: {', '.join(valid)}"
        )
    return loaded


def build_section(cls: type, values: dict, key: str, names: dict[str, str]) -> Any:
    """`build` + `check` for one section: CLIError with one line per bad value (flags named where there is one)."""
    name_of = lambda dotted: names.get(dotted, dotted)  # noqa: E731
    try:
        config = build(cls, values, key, name_of)
    except ConfigError as error:
        fail(error.lines)
    lines = check(config, key, name_of)
    if lines:
        fail(lines)
    return config


def check_with_model(sections: dict[str, Any], names: dict[str, str], context: dict[str, Any]) -> None:
    """The bounds that name model values (`Range(1, "num_train_timesteps")`), checked once the model is loaded and
    before anything is written: CLIError with one line per bad value."""
    lines = []
    for key, config in sections.items():
        lines += check(config, key, lambda dotted: names.get(dotted, dotted), context)
    if lines:
        fail(lines)


def resolve_flat(args: argparse.Namespace, cls: type, key: str) -> Any:
    """The config of a one-section command: defaults < `--config FILE` (an object of `cls`'s fields) < flags, built
    and checked (one line per bad value). The values also land on `args` as plain attributes (`args.steps`)."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None) is not None:
        values = read_config_file(args.config, tuple(f.name for f in dataclasses.fields(cls) if f.init))
    values.update(given(args).get(key, {}))
    config = build_section(cls, values, key, getattr(args, "config_names", {}))
    for f in dataclasses.fields(config):
        setattr(args, f.name, getattr(config, f.name))
    return config


def resume_conflicts(
    stored: dict[str, Any], requested: dict[str, Any], changeable: set[str], names: dict[str, str]
) -> list[str]:
    """One line per requested value that differs from the run's and may not change on resume."""
    old = flatten(stored)
    lines = []
    for dotted, value in flatten(requested).items():
        if dotted in changeable or dotted not in old:
            continue
        if _same(old[dotted], value):
            continue
        flag = names.get(dotted, dotted)
        allowed = ", ".join(sorted(names.get(k, k) for k in changeable))
        lines.append(
            f"--resume: {flag} {show(value)} would change the run's {dotted} = {show(old[dotted])}, which is fixed "
            f"on resume (changeable: {allowed}); start a new run for it"
        )
    return lines


def _same(a: Any, b: Any) -> bool:
    return json.loads(json.dumps(a)) == json.loads(json.dumps(b))


def save_config(path: str | os.PathLike, resolved: dict[str, Any]) -> None:
    """Writes the resolved config as JSON (to a temporary file, then renamed: never a torn file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(resolved, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def to_dict(config: Any) -> Any:
    """A JSON-ready dict of a (nested) dataclass config (tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))
