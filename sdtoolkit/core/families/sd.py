"""Stable Diffusion 1.x / 2.x UNets (ε or v prediction) and the embedded `builtin:shapes` teacher; pixel-space
`UNet2DModel`s (unconditional or class-conditional) for tests and small models."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from sdtoolkit.core.conditioning import Conditioning
from sdtoolkit.core.families.base import ModelFamily, cast, w_embedding

UNET_LORA_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
    "time_emb_proj",
)
"""UNet modules a LoRA student adapts (LCM-LoRA, diffusers' consistency_distillation LoRA scripts)."""


class StableDiffusionFamily(ModelFamily):
    """`UNet2DConditionModel` without SDXL's added text/time conditioning: SD 1.x, SD 2.x (ε and v), LCM students
    with a w-embedding (`time_cond_proj_dim`)."""

    name = "sd"
    model_classes = ("UNet2DConditionModel",)
    pipeline_classes = ("StableDiffusionPipeline", "LatentConsistencyModelPipeline")
    export_pipeline = "StableDiffusionPipeline"
    description = "Stable Diffusion 1.x/2.x UNet (epsilon or v), builtin:shapes"
    component = "unet"
    lora_target_modules = UNET_LORA_TARGETS

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return super().matches(model) and getattr(model.config, "addition_embed_type", None) != "text_time"

    def latent_channels(self, model):
        """The output's channels: an image-conditioned UNet (Zero123) takes more input channels than it denoises."""
        return int(model.config.out_channels)

    def call(self, model, x, timestep, cond, guidance_embed):
        added = {k: cast(v, x.dtype) for k, v in cond.added_cond_kwargs.items()} or None
        if cond.concat_latents is not None:  # the reference view of an image-conditioned UNet (Zero123)
            x = torch.cat([x, cast(cond.concat_latents, x.dtype)], dim=1)
        return model(
            x,
            timestep,
            encoder_hidden_states=cast(cond.encoder_hidden_states, x.dtype),
            timestep_cond=w_embedding(model, guidance_embed, x.dtype),
            class_labels=cond.class_labels,
            added_cond_kwargs=added,
            return_dict=False,
        )[0]

    def guidance_input(self, model):
        return "w" if getattr(model.config, "time_cond_proj_dim", None) is not None else None

    def supports_w_embedding(self, model):
        return True

    def feature_blocks(self, model):
        return [*model.down_blocks, model.mid_block]

    def feature_channels(self, model):
        channels = list(model.config.block_out_channels)
        return [*channels, channels[-1]]

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
