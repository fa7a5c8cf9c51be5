"""Switching peft (LoRA) adapters on a shared backbone: which adapter runs, or none (the plain frozen teacher),
without touching which parameters train."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["adapter_state", "tuner_layers"]


def tuner_layers(model: nn.Module) -> list[nn.Module]:
    """The peft tuner layers of `model`, cached on the model (a full module walk costs milliseconds per call on a
    UNet, and adapters are switched several times per training step); refreshed when its set of adapters changes."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return []
    key = tuple(sorted(getattr(model, "peft_config", None) or {}))
    cached = model.__dict__.get("_sdtoolkit_tuner_layers")
    if cached is None or cached[0] != key:
        cached = (key, [m for m in model.modules() if isinstance(m, BaseTunerLayer)])
        model.__dict__["_sdtoolkit_tuner_layers"] = cached
    return cached[1]


def _fast_switch_supported(layers: list[nn.Module]) -> bool:
    """Whether peft's switch state is the two attributes `_active_adapter` / `_disable_adapters` (peft >= 0.6)."""
    return all(hasattr(m, "_active_adapter") and hasattr(m, "_disable_adapters") for m in layers)


@contextlib.contextmanager
def adapter_state(model: nn.Module, active: str | None) -> Iterator[None]:
    """Runs `model` with only the peft adapter `active` switched on (`None`: every adapter off, i.e. the plain frozen
    backbone = the teacher), then restores each layer's previous active set and on/off state.

    Which parameters train is never changed here. peft's public `set_adapter` / `enable_adapters` also rewrite the
    `requires_grad` flag of every adapter weight (a walk over all of them, several times per step); the fast path
    sets only the two attributes that peft's forward reads (which adapters are active, whether adapters are off),
    and falls back to the public calls plus a restore of every flag where those attributes are absent.
    """
    layers = tuner_layers(model)
    if not layers:
        if active is not None:
            raise ValueError(f"adapter {active!r} requested but the model has no peft adapters")
        yield
        return
    if _fast_switch_supported(layers):
        previous = [(m, m._active_adapter, m._disable_adapters) for m in layers]
        try:
            for m in layers:
                if active is None:
                    m._disable_adapters = True
                else:
                    m._active_adapter = [active]
                    m._disable_adapters = False
            yield
        finally:
            for m, names, disabled in previous:
                m._active_adapter, m._disable_adapters = names, disabled
        return
    flags = [(p, p.requires_grad) for m in layers for p in m.parameters()]
    states = [(m, list(m.active_adapters), bool(m.disable_adapters)) for m in layers]

    def restore_flags() -> None:
        for p, flag in flags:
            p.requires_grad_(flag)

    try:
        for m in layers:
            if active is None:
                m.enable_adapters(False)
            else:
                m.set_adapter(active)
                m.enable_adapters(True)
        restore_flags()
        yield
    finally:
        for m, names, disabled in states:
            m.set_adapter(names)
            m.enable_adapters(not disabled)
        restore_flags()
