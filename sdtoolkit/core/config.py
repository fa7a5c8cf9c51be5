"""Typed dataclass configs (nerfstudio style): valid values declared next to the fields, strict building from
JSON, and validation of a resolved config.

A config dataclass lists the bounds of its fields in a class variable

    BOUNDS: ClassVar[dict[str, Bound]] = {"max_steps": Range(1), "mixed_precision": OneOf("no", "fp16", "bf16")}

and, when a run can be resumed, the fields a resume may change (`RESUMABLE: ClassVar[tuple[str, ...]]`).
`build` makes a config from a JSON-style dict, rejecting unknown keys and wrong types; `check` returns one line per
bad value of a built config (out of its bounds, or a non-finite float). `sdtoolkit.cli.config_cli` turns the same
dataclasses into command-line flags whose help states the default and the bounds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """A number in [low, high] (None: unbounded on that side; `*_open`: the end itself is excluded). `high` may name
    a value known only once the model is loaded (`"num_train_timesteps"`: the teacher scheduler's); it is checked
    when `check` is given that context, and ignored before."""

    low: float | None = None
    high: float | str | None = None
    low_open: bool = False
    high_open: bool = False

    def problem(self, value: Any, context: dict[str, Any] | None = None) -> str | None:
        """Why `value` is out of range, or None."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return None  # reported by the finiteness check
        high = self._high(context)
        below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        above = high is not None and (value >= high if self.high_open else value > high)
        return f"must be {self.describe(context)}" if below or above else None

    def _high(self, context: dict[str, Any] | None) -> float | None:
        if isinstance(self.high, str):
            return (context or {}).get(self.high)
        return self.high

    def describe(self, context: dict[str, Any] | None = None) -> str:
        high = self._high(context)
        if isinstance(self.high, str):
            high = self.high if high is None else f"{self.high} = {high}"
        if self.low is not None and high is not None:
            return f"in {'(' if self.low_open else '['}{self.low}, {high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        if high is not None:
            return f"{'<' if self.high_open else '<='} {high}"
        return "any number"


@dataclass(frozen=True)
class OneOf:
    """One of a fixed set of values (strings, usually)."""

    choices: tuple

    def __init__(self, *choices: Any) -> None:
        object.__setattr__(self, "choices", tuple(choices))

    def problem(self, value: Any, context: dict[str, Any] | None = None) -> str | None:
        return None if value in self.choices else f"choose one of {self.describe()[len('one of ') :]}"

    def describe(self, context: dict[str, Any] | None = None) -> str:
        return "one of " + ", ".join(str(c) for c in self.choices)


Bound = Range | OneOf
"""What a `BOUNDS` entry may be."""


def bounds_of(cls: type) -> dict[str, Bound]:
    """The `BOUNDS` of a config class and its bases (a subclass's entry wins)."""
    out: dict[str, Bound] = {}
    for klass in reversed(cls.__mro__):
        out.update(klass.__dict__.get("BOUNDS", {}))
    return out


POSITIVE = Range(0, low_open=True)
"""> 0 (learning rates, scales)."""
AT_LEAST_1 = Range(1)
"""A count of at least one (steps, batch sizes)."""
NON_NEGATIVE = Range(0)
""">= 0 (periods where 0 disables, weights)."""
FRACTION = Range(0, 1)
"""A fraction in [0, 1]."""
ADAM_BETA = Range(0, 1, high_open=True)
"""An Adam moment decay beta in [0, 1)."""
SEED = Range(0, 2**32 - 1)
"""A random seed (torch, numpy and Python accept 0 to 2^32 - 1 alike)."""
SCHEDULE_STEPS = Range(1, "num_train_timesteps")
"""A number of steps on the teacher's schedule: 1 to its scheduler's num_train_timesteps (checked once loaded)."""


# ------------------------------------------------------------------------------------------------ strict building


class ConfigError(ValueError):
    """Bad config values; `lines` holds one line per bad value (naming the key, the value and what is valid)."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = list(lines)


def unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """(X, True) for `X | None`, else (hint, False)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def show(value: Any) -> str:
    """A value as a user typed it: `1e-4`, `builtin:shapes`, `0.9 0.999`, `None`."""
    if isinstance(value, (tuple, list)):
        return " ".join(show(v) for v in value) if len(value) <= 4 else f"{len(value)} values"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def _json(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "an object"}


def describe_type(hint: Any) -> str:
    """`an integer`, `a number or null`, `a list of 2 numbers`, ..."""
    base, optional = unwrap_optional(hint)
    origin = typing.get_origin(base)
    if base in _TYPE_NAMES:
        text = _TYPE_NAMES[base]
    elif origin is tuple:
        args = typing.get_args(base)
        if len(args) == 2 and args[1] is Ellipsis:
            text = f"a list of {_TYPE_NAMES.get(args[0], 'values').split(' ', 1)[1]}s"
        else:
            text = f"a list of {len(args)} {_TYPE_NAMES.get(args[0], 'values').split(' ', 1)[1]}s"
    elif origin is dict or dataclasses.is_dataclass(base):
        text = "an object"
    elif origin is list or base is list:
        text = "a list"
    else:
        text = str(base)
    return text + (" or null" if optional else "")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class _WrongType(Exception):
    pass


def convert(hint: Any, value: Any, where: str) -> Any:
    """`value` (from JSON or a flag) as the field type `hint` wants it (lists become tuples, ints floats), or
    ConfigError naming `where`, the value and the expected type. Nested dataclasses are built with `build`."""
    try:
        return _convert(hint, value, where)
    except _WrongType:
        line = f"{where} = {_json(value)}: expected {describe_type(hint)}, got {_json_type(value)}"
        raise ConfigError([line]) from None


def _convert(hint: Any, value: Any, where: str) -> Any:
    base, optional = unwrap_optional(hint)
    if value is None:
        if optional or base is Any:
            return None
        raise _WrongType
    origin = typing.get_origin(base)
    if base is Any or base is object:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(base):
            try:
                return _convert(option, value, where)
            except (_WrongType, ConfigError):
                continue
        raise _WrongType
    if base is bool:
        if isinstance(value, bool):
            return value
        raise _WrongType
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _WrongType
    if base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _WrongType
    if base is str:
        if isinstance(value, str):
            return value
        raise _WrongType
    if dataclasses.is_dataclass(base):
        if isinstance(value, base):
            return value
        if not isinstance(value, dict):
            raise _WrongType
        return build(base, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _WrongType
        args = typing.get_args(base)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where) for v in value)
        if len(value) != len(args):
            raise _WrongType
        return tuple(_convert(a, v, where) for a, v in zip(args, value))
    if origin is dict or base is dict:
        if isinstance(value, dict):
            return value
        raise _WrongType
    if origin is list or base is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        raise _WrongType
    return value


def build(cls: type, values: dict[str, Any], where: str = "config", name_of=None) -> Any:
    """Dataclass `cls` from a JSON-style dict. Every unknown key, every wrongly typed value and every given value
    outside its `BOUNDS` or not finite is reported (one line each, naming `where.key`, or `name_of(where.key)`, the
    value and what is valid) in one ConfigError before the class is constructed; so is a ValueError of its own
    `__post_init__`."""
    if not isinstance(values, dict):
        raise ConfigError([f"{where} = {_json(values)}: expected an object of {cls.__name__} fields"])
    names = {f.name: f for f in dataclasses.fields(cls) if f.init}
    errors: list[str] = []
    unknown = sorted(set(values) - set(names))
    if unknown:
        errors.append(
            f"{where or 'config'}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; valid keys: "
            f"{', '.join(sorted(names))}"
        )
    hints = typing.get_type_hints(cls)
    bounds = bounds_of(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            continue
        dotted = f"{where}.{key}" if where else key
        base, _ = unwrap_optional(hints[key])
        try:
            if dataclasses.is_dataclass(base) and isinstance(value, dict):
                kwargs[key] = build(base, value, dotted, name_of)
                continue
            kwargs[key] = convert(hints[key], value, dotted)
        except ConfigError as error:
            errors.extend(error.lines)
            continue
        problem = value_problem(kwargs[key], bounds.get(key), dotted, name_of)
        if problem:
            errors.append(problem)
    if errors:
        raise ConfigError(errors)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        lines = error.lines if isinstance(error, ConfigError) else [f"{where}: {error}" if where else str(error)]
        raise ConfigError(lines) from error


# ------------------------------------------------------------------------------------------------ validation


def value_problem(value: Any, bound: Bound | None, key: str, name_of=None, context=None) -> str | None:
    """The line for a value that is not finite or outside `bound`, or None."""
    if dataclasses.is_dataclass(value) or value is None:
        return None
    name = name_of(key) if name_of else key
    items = value if isinstance(value, (tuple, list)) else (value,)
    if any(isinstance(v, float) and not math.isfinite(v) for v in items):
        return _line(name, key, value, "must be a finite number")
    if bound is None:
        return None
    for item in items:
        problem = bound.problem(item, context)
        if problem is not None:
            choice = isinstance(bound, OneOf)
            return _line(name, key, item if choice else value, problem, choice=choice)
    return None


def check(config: Any, where: str = "config", name_of=None, context: dict[str, Any] | None = None) -> list[str]:
    """One line per bad value of a built config (recursing into nested dataclass fields): a float that is not finite
    or a value outside the field's `BOUNDS`. `name_of(dotted_key)` gives the name to show (e.g. the flag);
    default: the dotted key. `context` gives the values that bounds name (e.g. `num_train_timesteps`)."""
    lines: list[str] = []
    bounds = bounds_of(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            lines += check(value, key, name_of, context)
            continue
        problem = value_problem(value, bounds.get(f.name), key, name_of, context)
        if problem:
            lines.append(problem)
    return lines


def resumable_of(cls: type) -> tuple[str, ...]:
    """The fields of `cls` (and its bases) that a resumed run may change (`RESUMABLE`)."""
    out: list[str] = []
    for klass in reversed(cls.__mro__):
        out += klass.__dict__.get("RESUMABLE", ())
    return tuple(dict.fromkeys(out))


def _line(name: str, key: str, value: Any, problem: str, choice: bool = False) -> str:
    """`--max-steps 0: must be >= 1 (train.max_steps)`, `unknown --method 'nerf'; choose one of ...`."""
    tail = f" ({key})" if name != key else ""
    if choice:
        return f"unknown {name} {value!r}; {problem}{tail}"
    head = f"{name} {show(value)}" if name != key else f"{key} = {show(value)}"
    return f"{head}: {problem}{tail}"
