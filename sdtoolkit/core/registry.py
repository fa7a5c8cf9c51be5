"""One registry pattern for every pluggable kind: distillation methods (`sdtoolkit.distill.method.METHODS`), 3D
guidances (`sdtoolkit.text_to_3d.guidance.registry.GUIDANCES`) and, next, NeRF representations.

A `Registry` is a name -> class mapping (a `dict`, so `name in registry`, `registry[name]` and `sorted(registry)`
work as before) with a fail-on-duplicate `register` decorator (threestudio: "Names of extensions conflict!"),
per-entry metadata (e.g. the guidance's config class: nerfstudio's typed-config pattern), a lookup whose error
lists the valid names, and an optional `load` hook that imports the built-in entries and plug-ins before the first
lookup::

    GUIDANCES = Registry("3D guidance")

    @GUIDANCES.register("sds", config_class=SDSConfig)
    class SDSGuidance: ...

    cls = GUIDANCES.get("sds"); GUIDANCES.meta("sds")["config_class"]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(dict, Generic[T]):
    """Named entries of one kind.

    Args:
        kind: what the entries are, for messages ("distillation method", "3D guidance").
        load: called once before the first `get`/`names` (imports the modules whose decorators register).
        allow_same: re-registering the very same object under its name is accepted (a module imported twice);
            False: any second registration of a name is an error.
    """

    def __init__(self, kind: str, *, load: Callable[[], None] | None = None, allow_same: bool = True):
        super().__init__()
        self.kind = kind
        self._load = load
        self._loaded = load is None
        self._allow_same = allow_same
        self._meta: dict[str, dict[str, Any]] = {}

    def add(self, name: str, obj: T, **meta: Any) -> T:
        """Registers `obj` under `name` with metadata `meta`; a name taken by another object raises ValueError."""
        if name in self and not (self._allow_same and self[name] is obj):
            owner = self[name]
            where = getattr(owner, "__module__", "?") + "." + getattr(owner, "__qualname__", repr(owner))
            raise ValueError(f"a {self.kind} named {name!r} is already registered ({where}); names must be unique")
        self[name] = obj
        self._meta[name] = dict(meta)
        return obj

    def register(self, name: str | None = None, **meta: Any) -> Callable[[T], T]:
        """Class decorator: `@registry.register("name", **meta)`, or `@registry.register()` to use `cls.name`."""

        def decorator(obj: T) -> T:
            key = name if name is not None else getattr(obj, "name", None)
            if not key:
                raise ValueError(f"a {self.kind} needs a name: pass register('name') or set a `name` attribute")
            return self.add(key, obj, **meta)

        return decorator

    def ensure_loaded(self) -> None:
        """Runs the `load` hook once (imports the built-in entries and plug-ins)."""
        if not self._loaded:
            self._loaded = True  # before the call: a lookup made while loading must not load again
            try:
                self._load()
            except BaseException:
                self._loaded = False
                raise

    def names(self) -> list[str]:
        """Registered names, sorted."""
        self.ensure_loaded()
        return sorted(self)

    def get(self, name: str, default: Any = ...) -> T:  # type: ignore[override]
        """The entry registered under `name`; an unknown name raises KeyError listing the registered ones (or
        returns `default` when one is given)."""
        self.ensure_loaded()
        if name not in self:
            if default is not ...:
                return default
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {', '.join(sorted(self))}")
        return self[name]

    def meta(self, name: str) -> dict[str, Any]:
        """The metadata given at registration (e.g. `config_class`)."""
        self.get(name)
        return self._meta[name]
