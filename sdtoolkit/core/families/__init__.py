"""Model families: one thin adapter per diffusers network family (k-diffusion's wrapper per model family).

The `Denoiser` asks `family_for(model)` which adapter calls its network and encodes its prompts; a new family is a
new file here with a `ModelFamily` subclass, listed in `FAMILIES` (more specific families first).

| family | network | stock pipeline |
|---|---|---|
| `sd` | `UNet2DConditionModel` (SD 1.x/2.x, ε or v; builtin:shapes) | `StableDiffusionPipeline` |
| `sdxl` | `UNet2DConditionModel` with `addition_embed_type="text_time"` | `StableDiffusionXLPipeline` |
| `sd3` | `SD3Transformer2DModel` | `StableDiffusion3Pipeline` |
| `sana` | `SanaTransformer2DModel` | `SanaPipeline` / `SanaSprintPipeline` |
| `flux` | `FluxTransformer2DModel` | `FluxPipeline` |
| `unet2d` | `UNet2DModel` (pixel space) | `DDIMPipeline` |
| `animatediff` | `UNetMotionModel` (5-D video latents) | `AnimateDiffPipeline` |
"""

from __future__ import annotations

from torch import nn

from sdtoolkit.core.families.animatediff import AnimateDiffFamily
from sdtoolkit.core.families.base import ModelFamily
from sdtoolkit.core.families.flux import FluxFamily
from sdtoolkit.core.families.sana import SanaFamily
from sdtoolkit.core.families.sd import PixelUNetFamily, StableDiffusionFamily
from sdtoolkit.core.families.sd3 import StableDiffusion3Family
from sdtoolkit.core.families.sdxl import StableDiffusionXLFamily

FAMILIES: tuple[type[ModelFamily], ...] = (
    StableDiffusionXLFamily,
    StableDiffusionFamily,
    StableDiffusion3Family,
    SanaFamily,
    FluxFamily,
    PixelUNetFamily,
    AnimateDiffFamily,
)
"""Every supported family, tried in this order (SDXL before SD: both are UNet2DConditionModel)."""


class UnsupportedModelError(ValueError):
    """The network belongs to no supported family; the message names it and the supported list."""


def family_for(model: nn.Module) -> ModelFamily:
    """The adapter of the (unwrapped) diffusers network `model`."""
    for family in FAMILIES:
        if family.matches(model):
            return family()
    supported = "; ".join(f"{f.name}: {f.description}" for f in FAMILIES)
    raise UnsupportedModelError(
        f"model class {type(model).__name__!r} is not supported; supported families: {supported}"
    )


def supported_model_classes() -> tuple[str, ...]:
    """The diffusers network classes some family accepts."""
    return tuple(dict.fromkeys(name for family in FAMILIES for name in family.model_classes))


__all__ = ["FAMILIES", "ModelFamily", "UnsupportedModelError", "family_for", "supported_model_classes"]
