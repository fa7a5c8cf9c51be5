"""A small NeRF in plain torch for text-to-3D, split like nerfstudio: encodings, fields, colliders, samplers,
renderers, an occupancy grid, and the model that chains them.

Why not nerfstudio's own components: `pip install --no-deps nerfstudio==1.1.5` plus jaxtyping, nerfacc==0.5.2,
viser==0.2.7, tensorboard and rich imports cleanly next to torch 2.13 CPU, diffusers 0.42, transformers 5.24 and
numpy 2.4 (checked in a throwaway venv), but (1) that install cannot be expressed as a pip extra (it needs
`--no-deps`, because nerfstudio's dependencies replace the CPU torch with an 8 GB CUDA build), and (2) on the
2-core CPU its HashEncoding(torch) + NerfactoField + ProposalNetworkSampler step took 0.8-3.3 s for 512 rays x 16
samples and 5-9 s for 3000 rays x 16 samples (one 64x64 render's rays), which cannot fit a 10-minute asset; it has
no empty-space skipping on CPU (nerfacc's estimators are CUDA kernels). This package keeps nerfstudio's split and
jaxtyping shapes, adds nerfacc-style occupancy-grid pruning in plain torch, and uses tiny-cuda-nn's HashGrid when
`tinycudann` imports and the input is on CUDA.
"""

from sdtoolkit.nerf.colliders import AABBCollider, NearFarCollider, RayBundle, SphereCollider
from sdtoolkit.nerf.encodings import HashEncoding, tcnn_available
from sdtoolkit.nerf.fields import FieldConfig, TextTo3DField, restoring_checkpoint
from sdtoolkit.nerf.model import NeRF, NeRFConfig
from sdtoolkit.nerf.renderers import render_rgb, render_weights
from sdtoolkit.nerf.samplers import PDFSampler, RaySamples, UniformSampler, contributing_samples

__all__ = [
    "AABBCollider",
    "FieldConfig",
    "HashEncoding",
    "NeRF",
    "NeRFConfig",
    "NearFarCollider",
    "PDFSampler",
    "RayBundle",
    "RaySamples",
    "SphereCollider",
    "TextTo3DField",
    "UniformSampler",
    "contributing_samples",
    "render_rgb",
    "render_weights",
    "restoring_checkpoint",
    "tcnn_available",
]
