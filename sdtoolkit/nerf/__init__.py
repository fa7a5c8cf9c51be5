"""A small NeRF in plain torch for text-to-3D, split like nerfstudio: encodings, fields, colliders, samplers,
renderers, and the model that chains them."""

from sdtoolkit.nerf.colliders import AABBCollider, NearFarCollider, RayBundle, SphereCollider
from sdtoolkit.nerf.encodings import HashEncoding, tcnn_available
from sdtoolkit.nerf.fields import FieldConfig, TextTo3DField
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
    "tcnn_available",
]
