"""Switching peft (LoRA) adapters on a shared backbone: which adapter runs, or none (the plain frozen teacher),
without touching which parameters train, and without walking the module tree.

A model's peft tuner layers are found once (`tuner_layers`, cached on the model and refreshed only when its set of
adapters changes). A switch then writes the two attributes peft's forward reads (`_active_adapter`,
`_disable_adapters`) straight into each layer's instance `__dict__`: O(number of LoRA layers) dictionary stores, no
`nn.Module.__setattr__`, no `requires_grad` rewrites, no `named_modules()` walk. Where those attributes are absent
(an older or different peft) the public `set_adapter` / `enable_adapters` calls run instead, followed by a restore
of every `requires_grad` flag.

With every adapter off (the teacher's passes on the shared backbone), each LoRA layer is also taken out of the tree
for the duration: its parent's `_modules` entry points at the layer's `base_layer`, so the teacher runs as the plain
network, without peft's Python wrapper around each adapted layer. Outputs are bitwise peft's disabled path (test).
Not done for merged adapters (the base weights then hold them), or for a model marked `_sdtoolkit_compiled` (dynamo
guards the tree).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["adapter_state", "switch_table", "tuner_layers"]

_CACHE = "_sdtoolkit_tuner_layers"


def tuner_layers(model: nn.Module) -> list[nn.Module]:
    """The peft tuner layers of `model`, cached on the model (a full module walk costs milliseconds per call on a
    UNet, and adapters are switched several times per training step); refreshed when its set of adapters changes."""
    return _cached(model)[1]


def switch_table(model: nn.Module) -> list[dict] | None:
    """The instance `__dict__` of every tuner layer of `model` (cached with `tuner_layers`), or None when peft's
    switch state is not the two plain attributes `_active_adapter` / `_disable_adapters` (peft >= 0.6 has them)."""
    return _cached(model)[2]


_BYPASSED = "_sdtoolkit_lora_bypassed"


def _set_bypass(model: nn.Module, bypass: list, on: bool) -> None:
    """Put each LoRA layer's `base_layer` in its place (on) or the layer back (off)."""
    for modules, name, layer, base in bypass:
        modules[name] = base if on else layer
    model.__dict__[_BYPASSED] = on


def _may_bypass(model: nn.Module, table: list[dict], bypass: list | None) -> bool:
    if bypass is None or getattr(model, "_sdtoolkit_compiled", False):
        return False
    return not any(d.get("merged_adapters") for d in table)


def _cached(model: nn.Module) -> tuple:
    # valid while the model's adapters and the support check are the same (tests swap the check to force the
    # public path)
    key = (tuple(sorted(getattr(model, "peft_config", None) or {})), _fast_switch_supported)
    cached = model.__dict__.get(_CACHE)
    if cached is None or cached[0] != key:
        try:
            from peft.tuners.tuners_utils import BaseTunerLayer
        except ImportError:  # pragma: no cover - peft is a dependency
            return (key, [], None, None)
        layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
        wanted = {id(m) for m in layers}
        slots = {  # where each layer hangs: (its parent's _modules, its name), for the bypass of the teacher's passes
            id(child): (parent._modules, name)
            for parent in model.modules()
            for name, child in parent._modules.items()
            if child is not None and id(child) in wanted
        }
        table = None
        if _fast_switch_supported(layers):
            table = []
            for m in layers:  # materialise the class defaults as instance attributes, so a dict store is a switch
                m.__dict__["_active_adapter"] = m._active_adapter
                m.__dict__["_disable_adapters"] = m._disable_adapters
                table.append(m.__dict__)
        bypass = None
        if table is not None and len(slots) == len(layers) and all(hasattr(m, "base_layer") for m in layers):
            bypass = [(slots[id(m)][0], slots[id(m)][1], m, m.base_layer) for m in layers]
        cached = (key, layers, table, bypass)
        model.__dict__[_CACHE] = cached
    return cached


def _fast_switch_supported(layers: list[nn.Module]) -> bool:
    """Whether peft's switch state is the two attributes `_active_adapter` / `_disable_adapters` (peft >= 0.6)."""
    return all(hasattr(m, "_active_adapter") and hasattr(m, "_disable_adapters") for m in layers)


@contextlib.contextmanager
def adapter_state(model: nn.Module, active: str | None) -> Iterator[None]:
    """Runs `model` with only the peft adapter `active` switched on (`None`: every adapter off, i.e. the plain frozen
    backbone = the teacher), then restores each layer's previous active set and on/off state.

    Which parameters train is never changed here. peft's public `set_adapter` / `enable_adapters` also rewrite the
    `requires_grad` flag of every adapter weight; the fast path stores only the two attributes that peft's forward
    reads (plain instance attributes: a dictionary store each, no `nn.Module.__setattr__`), and falls back to the
    public calls plus a restore of every flag where those attributes are absent.
    """
    key, layers, table, bypass = _cached(model)
    if not layers:
        if active is not None:
            raise ValueError(f"adapter {active!r} requested but the model has no peft adapters")
        yield
        return
    if table is not None:
        previous = [(d["_active_adapter"], d["_disable_adapters"]) for d in table]
        was_bypassed = bool(model.__dict__.get(_BYPASSED))
        try:
            if active is None:
                for d in table:
                    d["_disable_adapters"] = True
                if not was_bypassed and _may_bypass(model, table, bypass):
                    _set_bypass(model, bypass, True)
            else:
                if was_bypassed:  # an adapter inside a teacher pass: the layers go back for it
                    _set_bypass(model, bypass, False)
                names = [active]
                for d in table:
                    d["_active_adapter"] = names
                    d["_disable_adapters"] = False
            yield
        finally:
            if bool(model.__dict__.get(_BYPASSED)) != was_bypassed:
                _set_bypass(model, bypass, was_bypassed)
            for d, (names, disabled) in zip(table, previous):
                d["_active_adapter"] = names
                d["_disable_adapters"] = disabled
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
