"""Procedural 3D shapes data: cameras, exact SDFs, a sphere-tracing renderer, captions and the dataset."""

from sdtoolkit.data.cameras import (
    BACK_THRESHOLD_DEG,
    FRONT_THRESHOLD_DEG,
    OVERHEAD_THRESHOLD_DEG,
    Cameras,
    sample_cameras,
    turntable_cameras,
    view_word,
)
from sdtoolkit.data.dataset import (
    VOCABULARY,
    ShapesDataset,
    all_prompts,
    caption,
    parse_caption,
    render_batch,
)
from sdtoolkit.data.render import render, render_silhouette
from sdtoolkit.data.shapes import (
    COLOUR_NAMES,
    COLOURS,
    SHAPES,
    VIEWS,
    analytic_volume,
    inside_mask,
    occupancy,
    sdf,
)

__all__ = [
    "BACK_THRESHOLD_DEG",
    "COLOURS",
    "COLOUR_NAMES",
    "Cameras",
    "FRONT_THRESHOLD_DEG",
    "OVERHEAD_THRESHOLD_DEG",
    "SHAPES",
    "ShapesDataset",
    "VIEWS",
    "VOCABULARY",
    "all_prompts",
    "analytic_volume",
    "caption",
    "inside_mask",
    "occupancy",
    "parse_caption",
    "render",
    "render_batch",
    "render_silhouette",
    "sample_cameras",
    "sdf",
    "turntable_cameras",
    "view_word",
]
