"""The registry of 3D guidance types: a `sdtoolkit.core.registry.Registry` (the pattern the distillation methods use
too) whose entries carry their typed config dataclass (nerfstudio's pattern: each config names what it builds);
a name registered twice is an error (threestudio: "Names of extensions conflict!")."""

from __future__ import annotations

from typing import Any

from sdtoolkit.core.registry import Registry

__all__ = ["GUIDANCES", "available", "build", "find", "register"]

GUIDANCES: Registry[type] = Registry("guidance", allow_same=False)
"""Guidance classes by name; `GUIDANCES.meta(name)["config_class"]` is the config dataclass each is built from."""


def register(name: str, config_class: type):
    """Class decorator: registers a guidance class under `name` with its config dataclass; a second registration of
    the same name raises (threestudio: "Names of extensions conflict!")."""

    def decorator(cls: type) -> type:
        GUIDANCES.add(name, cls, config_class=config_class)
        cls.registry_name = name
        return cls

    return decorator


def available() -> list[str]:
    """Registered guidance names, sorted."""
    return GUIDANCES.names()


def find(name: str) -> tuple[type, type]:
    """(guidance class, config class) registered under `name`; the error lists the valid names."""
    cls = GUIDANCES.get(name)
    return cls, GUIDANCES.meta(name)["config_class"]


def build(name: str, denoiser: Any, config: Any = None, **kwargs: Any) -> Any:
    """Builds guidance `name` around a `Denoiser`, from its config (default config when None)."""
    cls, config_class = find(name)
    if config is None:
        config = config_class()
    if not isinstance(config, config_class):
        raise TypeError(f"guidance {name!r} takes a {config_class.__name__}, got {type(config).__name__}")
    return cls(config, denoiser, **kwargs)
