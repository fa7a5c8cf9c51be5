"""AnimateDiff video UNets: `UNetMotionModel` (a Stable Diffusion UNet with AnimateDiff motion modules) on 5-D
latents `[B, C, F, H, W]`; the teacher family of `sdtoolkit distill mcm` (Zhai et al. 2024)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from sdtoolkit.core.conditioning import Conditioning
from sdtoolkit.core.families.base import ModelFamily, cast, w_embedding
from sdtoolkit.core.families.sd import UNET_LORA_TARGETS


class AnimateDiffFamily(ModelFamily):
    """`UNetMotionModel`: the text conditioning `[B, L, D]` is repeated per frame (as `AnimateDiffPipeline` does before
    calling the UNet), the timestep and the w-embedding stay per clip (the network repeats its time embedding)."""

    name = "animatediff"
    model_classes = ("UNetMotionModel",)
    pipeline_classes = ("AnimateDiffPipeline",)
    export_pipeline = "AnimateDiffPipeline"
    description = "AnimateDiff UNetMotionModel (SD UNet + MotionAdapter), 5-D video latents"
    component = "unet"
    lora_target_modules = UNET_LORA_TARGETS

    def call(self, model: nn.Module, x: Tensor, timestep: Tensor, cond: Any, guidance_embed: Tensor | None) -> Tensor:
        if x.ndim != 5:
            raise ValueError(f"UNetMotionModel takes video latents [B, C, F, H, W]; got shape {tuple(x.shape)}")
        frames = x.shape[2]
        states = cast(cond.encoder_hidden_states, x.dtype).repeat_interleave(frames, dim=0)
        return model(
            # a standard-layout copy: with a permuted clip layout the motion modules' GroupNorm saw a channels-last-3d
            # input and a differently strided gradient, and torch 2.13's CPU GroupNorm backward crashed (segfault)
            x.contiguous(),
            timestep,
            encoder_hidden_states=states,
            timestep_cond=w_embedding(model, guidance_embed, x.dtype),
            return_dict=False,
        )[0]

    def guidance_input(self, model):
        return "w" if getattr(model.config, "time_cond_proj_dim", None) is not None else None

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
