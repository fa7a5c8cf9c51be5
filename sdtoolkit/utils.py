"""Small tensor helpers shared by the whole toolkit (k-diffusion style)."""

from __future__ import annotations

import torch


def append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    """Appends trailing singleton dimensions to `x` until it has `target_dims` dimensions.

    Used to broadcast a per-sample scalar such as `alpha_t` of shape `[B]` against a batch `[B, C, H, W]`.
    """
    dims_to_append = target_dims - x.ndim
    if dims_to_append < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * dims_to_append]
