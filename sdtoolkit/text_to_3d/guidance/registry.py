"""A registry of 3D guidance types (threestudio's fail-on-duplicate `register`), built from typed dataclass configs
(nerfstudio's `_target` pattern: each config names the class it builds)."""

from __future__ import annotations

from typing import Any

_GUIDANCE: dict[str, type] = {}
_CONFIGS: dict[str, type] = {}


def register(name: str, config_class: type):
    """Class decorator: registers a guidance class under `name` with its config dataclass; a second registration of
    the same name raises (threestudio: "Names of extensions conflict!")."""

    def decorator(cls: type) -> type:
        if name in _GUIDANCE:
            raise ValueError(
                f"guidance {name!r} is already registered by {_GUIDANCE[name].__name__}; names must be unique"
            )
        _GUIDANCE[name] = cls
        _CONFIGS[name] = config_class
        cls.registry_name = name
        return cls

    return decorator


def available() -> list[str]:
    """Registered guidance names, sorted."""
    return sorted(_GUIDANCE)


def find(name: str) -> tuple[type, type]:
    """(guidance class, config class) registered under `name`; the error lists the valid names."""
    if name not in _GUIDANCE:
        raise KeyError(f"unknown guidance {name!r}; registered: {', '.join(available())}")
    return _GUIDANCE[name], _CONFIGS[name]


def build(name: str, denoiser: Any, config: Any = None, **kwargs: Any) -> Any:
    """Builds guidance `name` around a `Denoiser`, from its config (default config when None)."""
    cls, config_class = find(name)
    if config is None:
        config = config_class()
    if not isinstance(config, config_class):
        raise TypeError(f"guidance {name!r} takes a {config_class.__name__}, got {type(config).__name__}")
    return cls(config, denoiser, **kwargs)
