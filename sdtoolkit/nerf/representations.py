"""The NeRF representations text-to-3D can optimise and PVD converts between, in one registry (the pattern of
`sdtoolkit.core.registry`): Instant-NGP's hash grid (ours, `HashEncoding`), an MLP NeRF with positional encoding
(Mildenhall et al. 2020), TensoRF's vector-matrix factorisation (Chen et al. 2022) and a dense voxel grid
(Plenoxels-style, Fridovich-Keil et al. 2022).

Every representation is split as PVD (Fang et al., AAAI 2023, Sec. 3.1) needs: a *volume-feature front* (the
representation's own encoding, then one linear layer and a ReLU to a `hidden_dim` feature: `TextTo3DField.features`)
and a *decoder* shared by all four (a hidden layer, then density logit, albedo logits and semantic logits:
`TextTo3DField.decode`). The fronts differ, the feature width and the decoder do not, so a student's front can be
fitted to a teacher's features point by point. The registry entry builds the encoding (the part before the first
linear layer) from a `NeRFConfig`; `TextTo3DField` adds the MLP on top, so the hash grid's parameters and state-dict
keys are exactly those of the field before the registry existed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from sdtoolkit.core.config import AT_LEAST_1, POSITIVE, Bound, Range
from sdtoolkit.core.registry import Registry
from sdtoolkit.nerf.encodings import HashEncoding

REPRESENTATIONS: Registry = Registry("NeRF representation")
"""name -> builder `(NeRFConfig) -> encoding module` (with `out_dim`); metadata: `config_key` (the `NeRFConfig`
field holding its hyper-parameters) and `grid` (whether the encoding's parameters are grid tables, optimised with
text-to-3D's `lr_encoding`, or network weights, optimised with `lr_network`)."""


# ------------------------------------------------------------------------------------------------- configs


@dataclass
class MLPConfig:
    """The MLP NeRF's front: positional encoding, then a ReLU MLP (Mildenhall et al. 2020, Sec. 5.1)."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"num_frequencies": Range(0, 16), "width": AT_LEAST_1, "depth": AT_LEAST_1}

    num_frequencies: int = 8
    """L of the positional encoding gamma(p) (NeRF: 10 for positions; 8 suffice for objects in a 2-unit cube at
    64-128 px and cost less on a CPU)."""
    width: int = 64
    """Width of the hidden layers (NeRF: 256; PVD's `nerf_layer_wide` default is smaller for speed)."""
    depth: int = 4
    """Hidden layers of the backbone (NeRF: 8 with a skip at the 5th; the skip here concatenates gamma(p) at the
    middle layer)."""


@dataclass
class TensoRFConfig:
    """TensoRF's vector-matrix (VM) decomposition (Chen et al. 2022, Sec. 4.1)."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"resolution": Range(2), "components": AT_LEAST_1, "init_scale": POSITIVE}

    resolution: int = 96
    """Grid resolution per axis of the planes and lines (TensoRF grows 128 -> 300; 96 matches the hash grid's
    finest level)."""
    components: int = 16
    """R, components per mode (TensoRF VM-48 uses 16 for density and 48 for appearance; one shared set here)."""
    init_scale: float = 0.1
    """Planes and lines start as N(0, init_scale^2) (TensoRF / PVD: 0.1)."""


@dataclass
class VoxelConfig:
    """A dense feature voxel grid with trilinear interpolation (Plenoxels, Fridovich-Keil et al. 2022, Sec. 3.1;
    PVD's `tensors` model)."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"resolution": Range(2), "features": AT_LEAST_1, "init_scale": POSITIVE}

    resolution: int = 64
    """Voxels per axis (Plenoxels: 128-512; 64^3 x 8 floats = 8 MB)."""
    features: int = 8
    """Feature channels per voxel (Plenoxels stores 1 density + 27 SH coefficients; ours feed the shared decoder)."""
    init_scale: float = 0.02
    """Voxel features start as N(0, init_scale^2) (PVD's `init_plenoxel_volume`: 0.02)."""


# ------------------------------------------------------------------------------------------------- encodings


def positional_encoding(x: Float[Tensor, "*bs 3"], num_frequencies: int) -> Float[Tensor, "*bs out"]:
    """gamma(p) = (p, sin(2^0 pi p), cos(2^0 pi p), ..., sin(2^{L-1} pi p), cos(2^{L-1} pi p)) per coordinate
    (Mildenhall et al. 2020, Eq. 4; the identity term as in the reference code)."""
    if num_frequencies == 0:
        return x
    scales = (2.0 ** torch.arange(num_frequencies, dtype=x.dtype, device=x.device)) * math.pi
    angles = (x[..., None, :] * scales[:, None]).flatten(-2)
    return torch.cat([x, angles.sin(), angles.cos()], dim=-1)


class PositionalMLP(nn.Module):
    """The MLP NeRF's volume front: gamma(2x - 1) through `depth` ReLU layers, with gamma concatenated again at the
    middle layer (NeRF's skip). Input in the unit cube; output `[*, width]`."""

    grid = False

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = config
        in_dim = 3 * (1 + 2 * config.num_frequencies)
        self.skip = config.depth // 2 if config.depth > 2 else -1
        layers = []
        for i in range(config.depth):
            fan_in = in_dim if i == 0 else config.width
            layers.append(nn.Linear(fan_in + (in_dim if i == self.skip else 0), config.width))
        self.layers = nn.ModuleList(layers)
        self.out_dim = config.width

    def forward(self, positions: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs width"]:
        encoded = positional_encoding(positions * 2 - 1, self.config.num_frequencies)
        h = encoded
        for i, layer in enumerate(self.layers):
            if i == self.skip:
                h = torch.cat([h, encoded], dim=-1)
            h = F.relu(layer(h))
        return h


def vm_features(
    planes: Float[Tensor, "3 R N N"], lines: Float[Tensor, "3 R N"], x: Float[Tensor, "P 3"]
) -> Float[Tensor, "P 3R"]:
    """TensoRF's vector-matrix features: for each mode m, the R products M_m(x_a, x_b) v_m(x_c) of a bilinearly
    sampled plane and a linearly sampled line ((a, b, c) = (0, 1, 2), (0, 2, 1), (1, 2, 0)); the 3R products are
    concatenated (Chen et al. 2022, Eq. 3-4, before the appearance basis matrix B). `x` in [-1, 1]."""
    pairs, singles = ((0, 1), (0, 2), (1, 2)), (2, 1, 0)
    plane_coords = torch.stack([x[:, list(p)] for p in pairs])[:, :, None, :]  # [3, P, 1, 2] (grid_sample: x, y)
    line_coords = torch.stack([x[:, s] for s in singles])  # [3, P]
    line_coords = torch.stack([torch.zeros_like(line_coords), line_coords], dim=-1)[:, :, None, :]
    plane = F.grid_sample(planes, plane_coords, align_corners=True)[..., 0]  # [3, R, P]
    line = F.grid_sample(lines[..., None], line_coords, align_corners=True)[..., 0]  # [3, R, P]
    return (plane * line).permute(2, 0, 1).reshape(x.shape[0], -1)


class TensoRFVM(nn.Module):
    """TensoRF VM front: three planes and three lines of R components over the cube; features `[*, 3R]`."""

    grid = True

    def __init__(self, config: TensoRFConfig):
        super().__init__()
        n, r = config.resolution, config.components
        self.planes = nn.Parameter(torch.randn(3, r, n, n) * config.init_scale)
        self.lines = nn.Parameter(torch.randn(3, r, n) * config.init_scale)
        self.out_dim = 3 * r

    def forward(self, positions: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs out"]:
        flat = positions.reshape(-1, 3).clamp(0, 1) * 2 - 1
        return vm_features(self.planes, self.lines, flat).reshape(*positions.shape[:-1], self.out_dim)


def trilinear_features(volume: Float[Tensor, "C N N N"], x: Float[Tensor, "P 3"]) -> Float[Tensor, "P C"]:
    """Trilinear interpolation of a dense grid at points in [-1, 1] (Plenoxels, Fridovich-Keil et al. 2022, Sec. 3.1:
    the value at x is the trilinear interpolation of the 8 nearest voxels' values)."""
    coords = x[None, :, None, None, [2, 1, 0]]  # grid_sample's (x, y, z) index (W, H, D): volume[c, x0, x1, x2]
    return F.grid_sample(volume[None], coords, align_corners=True)[0, :, :, 0, 0].T


class VoxelGrid(nn.Module):
    """Dense voxel-grid front: `features` channels on a `resolution`^3 grid over the cube."""

    grid = True

    def __init__(self, config: VoxelConfig):
        super().__init__()
        n = config.resolution
        self.volume = nn.Parameter(torch.randn(config.features, n, n, n) * config.init_scale)
        self.out_dim = config.features

    def forward(self, positions: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs out"]:
        flat = positions.reshape(-1, 3).clamp(0, 1) * 2 - 1
        return trilinear_features(self.volume, flat).reshape(*positions.shape[:-1], self.out_dim)


# ------------------------------------------------------------------------------------------------- registry


@REPRESENTATIONS.register("hash", config_key="field", grid=True)
def hash_grid(nerf_config) -> nn.Module:
    """Instant-NGP's multi-resolution hash grid (Müller et al. 2022), from `NeRFConfig.field`."""
    c = nerf_config.field
    return HashEncoding(
        num_levels=c.num_levels,
        features_per_level=c.features_per_level,
        log2_hashmap_size=c.log2_hashmap_size,
        min_res=c.min_res,
        max_res=c.max_res,
        implementation=c.implementation,
    )


@REPRESENTATIONS.register("mlp", config_key="mlp", grid=False)
def mlp_nerf(nerf_config) -> nn.Module:
    """NeRF's positional encoding and MLP backbone (Mildenhall et al. 2020), from `NeRFConfig.mlp`."""
    return PositionalMLP(nerf_config.mlp)


@REPRESENTATIONS.register("tensorf", config_key="tensorf", grid=True)
def tensorf_vm(nerf_config) -> nn.Module:
    """TensoRF's VM decomposition (Chen et al. 2022), from `NeRFConfig.tensorf`."""
    return TensoRFVM(nerf_config.tensorf)


@REPRESENTATIONS.register("voxel", config_key="voxel", grid=True)
def voxel_grid(nerf_config) -> nn.Module:
    """A dense voxel grid (Plenoxels-style), from `NeRFConfig.voxel`."""
    return VoxelGrid(nerf_config.voxel)


def build_encoding(nerf_config) -> nn.Module:
    """The encoding of `nerf_config.representation` (KeyError listing the registered names for an unknown one)."""
    return REPRESENTATIONS.get(nerf_config.representation)(nerf_config)
