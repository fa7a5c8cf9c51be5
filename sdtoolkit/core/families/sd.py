"""Stable Diffusion 1.x / 2.x UNets (ε or v prediction) and the embedded `builtin:shapes` teacher; pixel-space
`UNet2DModel`s (unconditional or class-conditional) for tests and small models."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from sdtoolkit.core.conditioning import Conditioning
from sdtoolkit.core.families.base import ModelFamily, cast, w_embedding


class StableDiffusionFamily(ModelFamily):
    """`UNet2DConditionModel` without SDXL's added text/time conditioning: SD 1.x, SD 2.x (ε and v), LCM students
    with a w-embedding (`time_cond_proj_dim`)."""

    name = "sd"
    model_classes = ("UNet2DConditionModel",)
    pipeline_classes = ("StableDiffusionPipeline", "LatentConsistencyModelPipeline")
    export_pipeline = "StableDiffusionPipeline"
    description = "Stable Diffusion 1.x/2.x UNet (epsilon or v), builtin:shapes"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return super().matches(model) and getattr(model.config, "addition_embed_type", None) != "text_time"

    def call(self, model, x, timestep, cond, guidance_embed):
        added = {k: cast(v, x.dtype) for k, v in cond.added_cond_kwargs.items()} or None
        return model(
            x,
            timestep,
            encoder_hidden_states=cast(cond.encoder_hidden_states, x.dtype),
            timestep_cond=w_embedding(model, guidance_embed, x.dtype),
            class_labels=cond.class_labels,
            added_cond_kwargs=added,
            return_dict=False,
        )[0]

    def encode_prompt(self, pipe: Any, prompts: list[str], negative: list[str], device: torch.device):
        embeds, neg_embeds = pipe.encode_prompt(
            prompts, device, 1, do_classifier_free_guidance=True, negative_prompt=negative
        )
        return Conditioning(embeds), Conditioning(neg_embeds)


class PixelUNetFamily(ModelFamily):
    """`UNet2DModel`: pixel-space, unconditional or class-conditional (`Conditioning.class_labels`)."""

    name = "unet2d"
    model_classes = ("UNet2DModel",)
    pipeline_classes = ("DDPMPipeline", "DDIMPipeline")
    export_pipeline = "DDIMPipeline"
    description = "pixel-space UNet2DModel (unconditional or class-conditional)"

    def call(self, model, x: Tensor, timestep: Tensor, cond, guidance_embed):
        return model(x, timestep, class_labels=cond.class_labels, return_dict=False)[0]
