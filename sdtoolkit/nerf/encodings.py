"""Multi-resolution hash-grid encoding (Müller et al. 2022, "Instant Neural Graphics Primitives"), in plain torch.

The torch implementation follows the paper's Sec. 3 and nerfstudio's `HashEncoding(implementation="torch")`: L levels
with resolutions N_l = floor(N_min b^l), b = exp((ln N_max - ln N_min) / (L - 1)) (Eq. 2 and 3); at each level the
8 corners of the voxel holding x are looked up in a table of T feature vectors of width F, through the spatial hash
h(x) = (XOR_i x_i pi_i) mod T (Eq. 4), or directly when the level's (N_l + 1)^3 grid fits the table; the corner
features are trilinearly interpolated and the L levels concatenated. When `tinycudann` is importable and the input
is on CUDA, `HashEncoding(implementation="tcnn")` runs the fused CUDA kernel instead (same hyper-parameters).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor, nn

#: the per-dimension primes of Müller et al. 2022, Eq. 4 (pi_1 = 1 for cache coherence)
HASH_PRIMES = (1, 2654435761, 805459861)


def tcnn_available() -> bool:
    """True when tiny-cuda-nn's torch bindings import (they need a CUDA build)."""
    try:
        import tinycudann  # noqa: F401
    except Exception:  # ImportError, or an OSError/RuntimeError from a broken CUDA install
        return False
    return True


def level_resolutions(num_levels: int, min_res: int, max_res: int) -> list[int]:
    """N_l = floor(N_min b^l) with growth factor b = exp((ln N_max - ln N_min) / (L - 1)) (Müller et al., Eq. 2-3)."""
    if num_levels == 1:
        return [min_res]
    growth = math.exp((math.log(max_res) - math.log(min_res)) / (num_levels - 1))
    return [int(math.floor(min_res * growth**level)) for level in range(num_levels)]


class HashEncoding(nn.Module):
    """Multi-resolution hash encoding of points in the unit cube [0, 1]^3 -> `[*, num_levels * features_per_level]`.

    Args:
        num_levels: L, the number of resolutions.
        features_per_level: F, the width of each table entry.
        log2_hashmap_size: log2 T, the number of entries per level.
        min_res, max_res: N_min and N_max, the coarsest and finest grid resolutions.
        init_scale: table entries start uniform in [-init_scale, init_scale] (the paper uses 1e-4).
        implementation: "torch", "tcnn" (tiny-cuda-nn, CUDA only), or "auto" (tcnn when installed and on CUDA).
    """

    def __init__(
        self,
        num_levels: int = 8,
        features_per_level: int = 2,
        log2_hashmap_size: int = 15,
        min_res: int = 16,
        max_res: int = 256,
        init_scale: float = 1e-3,
        implementation: str = "auto",
    ):
        super().__init__()
        if implementation not in ("torch", "tcnn", "auto"):
            raise ValueError(f"implementation={implementation!r}; choose 'torch', 'tcnn' or 'auto'")
        self.num_levels, self.features_per_level = num_levels, features_per_level
        self.table_size = 2**log2_hashmap_size
        self.resolutions = level_resolutions(num_levels, min_res, max_res)
        self.min_res, self.max_res = min_res, max_res
        use_tcnn = implementation == "tcnn" or (implementation == "auto" and tcnn_available())
        if implementation == "tcnn" and not tcnn_available():
            raise ImportError("implementation='tcnn' needs tiny-cuda-nn (pip install tinycudann, CUDA only)")
        self.tcnn_encoding = None
        if use_tcnn:
            import tinycudann as tcnn

            growth = math.exp((math.log(max_res) - math.log(min_res)) / max(num_levels - 1, 1))
            self.tcnn_encoding = tcnn.Encoding(
                n_input_dims=3,
                encoding_config={
                    "otype": "HashGrid",
                    "n_levels": num_levels,
                    "n_features_per_level": features_per_level,
                    "log2_hashmap_size": log2_hashmap_size,
                    "base_resolution": min_res,
                    "per_level_scale": growth,
                },
            )
        # one table per level, stacked: [L, T, F]
        self.tables = nn.Parameter((torch.rand(num_levels, self.table_size, features_per_level) * 2 - 1) * init_scale)
        self.register_buffer("scales", torch.tensor(self.resolutions, dtype=torch.float32), persistent=False)
        dense = torch.tensor([(n + 1) ** 3 <= self.table_size for n in self.resolutions])
        self.register_buffer("dense", dense, persistent=False)
        self.register_buffer("strides", torch.tensor([n + 1 for n in self.resolutions]), persistent=False)
        self.active_levels = num_levels
        """Levels whose features are on (`set_active_levels`); the finer ones encode to zero. Not saved: the
        schedule that sets it is a function of the training step."""

    @property
    def out_dim(self) -> int:
        return self.num_levels * self.features_per_level

    def set_active_levels(self, levels: int) -> None:
        """Coarse-to-fine (Neuralangelo's progressive levels, threestudio's `ProgressiveBandHashGrid`): only the
        `levels` coarsest levels contribute, the finer levels' features are zero (and not computed by the torch
        implementation, so early coarse steps are cheaper); clamped to [1, num_levels]."""
        self.active_levels = max(1, min(int(levels), self.num_levels))

    def corner_indices(self, floor: Tensor) -> Tensor:
        """Table indices of the 8 corners of the voxels whose lowest corners are `floor` `[N, L, 3]` (int64): direct
        (x + y s + z s^2) on dense levels, the spatial hash of Eq. 4 on the others; `[N, L, 8]`.

        Both are written per dimension over the two corner values {x, x + 1} and combined by broadcasting (sum or
        XOR), which is 3-4x cheaper on a CPU than hashing 8 corners separately. The hash is computed in int32 with
        wrap-around, which equals the paper's uint32 arithmetic modulo T = 2^k."""
        levels = floor.shape[-2]  # the first `levels` levels (fewer than L while coarse-to-fine masks the finer)
        x, y, z = floor.to(torch.int32).unbind(-1)  # [N, L]
        one = torch.tensor([0, 1], dtype=torch.int32, device=floor.device)
        xs, ys, zs = x[..., None] + one, y[..., None] + one, z[..., None] + one  # [N, L, 2]
        strides = self.strides[:levels].to(torch.int32)[:, None]
        direct = (
            xs[..., :, None, None] + (ys * strides)[..., None, :, None] + (zs * strides * strides)[..., None, None, :]
        )
        primes = _int32_primes()
        hashed = (xs * primes[0])[..., :, None, None] ^ (ys * primes[1])[..., None, :, None]
        hashed = hashed ^ (zs * primes[2])[..., None, None, :]
        index = torch.where(self.dense[:levels, None, None, None], direct, hashed)
        return (index & (self.table_size - 1)).reshape(*floor.shape[:-1], 8).long()

    def forward(self, positions: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs out_dim"]:
        """Encodes points of [0, 1]^3 (points outside are clamped to the cube)."""
        active = self.active_levels
        if self.tcnn_encoding is not None and positions.is_cuda:
            flat = positions.reshape(-1, 3).clamp(0, 1)
            encoded = self.tcnn_encoding(flat).to(positions.dtype)
            encoded = encoded.reshape(-1, self.num_levels, self.features_per_level)
            if active < self.num_levels:
                encoded = encoded * (torch.arange(self.num_levels, device=encoded.device) < active)[:, None]
            return encoded.reshape(*positions.shape[:-1], self.out_dim)
        batch_shape = positions.shape[:-1]
        x = positions.reshape(-1, 1, 3).clamp(0, 1) * self.scales[None, :active, None]  # [N, L, 3]
        floor = x.floor()
        frac = x - floor  # [N, L, 3]
        index = self.corner_indices(floor)  # [N, L, 8]
        offsets = (torch.arange(active, device=x.device) * self.table_size)[None, :, None]
        features = gather_rows(self.tables.reshape(-1, self.features_per_level), index + offsets)  # [N, L, 8, F]
        # trilinear weights prod_i (1 - f_i or f_i), as an outer product over the two values per dimension
        w = torch.stack([1 - frac, frac], dim=-1)  # [N, L, 3, 2]
        weights = (w[..., 0, :, None, None] * w[..., 1, None, :, None] * w[..., 2, None, None, :]).flatten(-3)
        encoded = (weights[..., None] * features).sum(2)  # [N, L, F]
        if active < self.num_levels:  # the finer levels, switched off, encode to zero
            encoded = torch.nn.functional.pad(encoded, (0, 0, 0, self.num_levels - active))
        return encoded.reshape(*batch_shape, self.out_dim)


class _GatherRows(torch.autograd.Function):
    """table[index] whose backward accumulates with `index_add_` (deterministic and faster on a CPU than the
    `index_put_(accumulate=True)` that plain indexing uses, whose summation order varies between runs)."""

    @staticmethod
    def forward(ctx, table: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        ctx.num_rows = table.shape[0]
        return table[index]

    @staticmethod
    def backward(ctx, grad: Tensor):
        (index,) = ctx.saved_tensors
        width = grad.shape[-1]
        table_grad = grad.new_zeros(ctx.num_rows, width).index_add_(0, index.reshape(-1), grad.reshape(-1, width))
        return table_grad, None


def gather_rows(table: Float[Tensor, "T F"], index: Tensor) -> Tensor:
    """`table[index]` (rows), differentiable in `table` with a deterministic backward."""
    return _GatherRows.apply(table, index)


def _int32_primes() -> tuple[int, ...]:
    """HASH_PRIMES reduced to signed int32 (same value modulo 2^32)."""
    return tuple(((p + 2**31) % 2**32) - 2**31 for p in HASH_PRIMES)
