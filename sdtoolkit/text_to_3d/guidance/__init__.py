"""3D score-distillation guidance on the shared Denoiser: SDS, CSD, VSD, ISM and region-specific SemanticSDS, built by
name from typed configs through a fail-on-duplicate registry."""

from sdtoolkit.text_to_3d.guidance import ism, sds, semantic, vsd  # noqa: F401  (importing registers every guidance)
from sdtoolkit.text_to_3d.guidance.ism import ISMConfig, ISMGuidance
from sdtoolkit.text_to_3d.guidance.prompts import ViewDependentPrompts, view_prompt
from sdtoolkit.text_to_3d.guidance.registry import available, build, find, register
from sdtoolkit.text_to_3d.guidance.sds import (
    CSDConfig,
    GuidanceOutput,
    SDSConfig,
    SDSGuidance,
    TimestepScheduleConfig,
    region_gradient,
    sample_sds_timesteps,
    sds_surrogate_loss,
    sds_weight,
)
from sdtoolkit.text_to_3d.guidance.semantic import (
    Layout,
    LayoutError,
    LayoutObject,
    LayoutPrior,
    SemanticSDSConfig,
    SingleBoxPrior,
    parse_layout,
    region_masks,
)
from sdtoolkit.text_to_3d.guidance.vsd import VSDConfig, VSDGuidance

__all__ = [
    "CSDConfig",
    "GuidanceOutput",
    "ISMConfig",
    "ISMGuidance",
    "Layout",
    "LayoutError",
    "LayoutObject",
    "LayoutPrior",
    "SDSConfig",
    "SDSGuidance",
    "SemanticSDSConfig",
    "TimestepScheduleConfig",
    "VSDConfig",
    "VSDGuidance",
    "ViewDependentPrompts",
    "available",
    "build",
    "find",
    "parse_layout",
    "region_gradient",
    "SingleBoxPrior",
    "region_masks",
    "register",
    "sample_sds_timesteps",
    "sds_surrogate_loss",
    "sds_weight",
    "view_prompt",
]
