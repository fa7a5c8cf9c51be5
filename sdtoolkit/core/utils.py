"""Small tensor helpers shared by the whole toolkit (k-diffusion style)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn


def append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    """Appends trailing singleton dimensions to `x` until it has `target_dims` dimensions.

    Used to broadcast a per-sample scalar such as `alpha_t` of shape `[B]` against a batch `[B, C, H, W]`.
    """
    dims_to_append = target_dims - x.ndim
    if dims_to_append < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * dims_to_append]


@contextlib.contextmanager
def frozen(*parts: nn.Module | Iterable[nn.Parameter] | None) -> Iterator[None]:
    """Temporarily sets `requires_grad=False` on the parameters of `parts` (modules or parameter lists); restores
    each flag on exit. A generator loss that backpropagates through a network it must not train runs inside it."""
    params = [
        p for part in parts if part is not None for p in (part.parameters() if isinstance(part, nn.Module) else part)
    ]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def cast_floating(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """`module.to(dtype)` only when some floating parameter or buffer has another dtype.

    Casting a diffusers model that already has the dtype is a no-op that still logs diffusers' "modules that should
    be kept in float32: []" warning on every run; skipping it keeps the logs to what matters."""
    tensors = [*module.parameters(), *module.buffers()]
    if any(t.is_floating_point() and t.dtype != dtype for t in tensors):
        module.to(dtype)
    return module
