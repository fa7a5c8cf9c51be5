"""Stable Diffusion 3 / 3.5: an MMDiT transformer on flow matching, with CLIP-L + CLIP-G (+ optional T5) text
(Esser et al. 2024)."""

from __future__ import annotations

from typing import Any

import torch

from sdtoolkit.core.conditioning import Conditioning
from sdtoolkit.core.families.base import ModelFamily, cast


class StableDiffusion3Family(ModelFamily):
    """`SD3Transformer2DModel`: joint attention over text and image tokens, pooled CLIP projections."""

    name = "sd3"
    model_classes = ("SD3Transformer2DModel",)
    pipeline_classes = ("StableDiffusion3Pipeline",)
    export_pipeline = "StableDiffusion3Pipeline"
    description = "Stable Diffusion 3/3.5 transformer (pooled projections; T5 optional)"
    component = "transformer"
    lora_target_modules = (
        "to_q",
        "to_k",
        "to_v",
        "to_out.0",
        "add_q_proj",
        "add_k_proj",
        "add_v_proj",
        "to_add_out",
        "ff.net.0.proj",
        "ff.net.2",
        "ff_context.net.0.proj",
        "ff_context.net.2",
    )
    """diffusers' SD3 LoRA scripts: attention of both streams and the feed-forwards."""
    feature_output_index = 1  # JointTransformerBlock returns (text, image) hidden states

    def call(self, model, x, timestep, cond, guidance_embed):
        return model(
            hidden_states=x,
            timestep=timestep,
            encoder_hidden_states=cast(cond.encoder_hidden_states, x.dtype),
            pooled_projections=cast(cond.pooled_projections, x.dtype),
            return_dict=False,
        )[0]

    def encode_prompt(self, pipe: Any, prompts: list[str], negative: list[str], device: torch.device):
        embeds, neg_embeds, pooled, neg_pooled = pipe.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=device,
            do_classifier_free_guidance=True,
            negative_prompt=negative,
        )
        return Conditioning(embeds, pooled_projections=pooled), Conditioning(neg_embeds, pooled_projections=neg_pooled)
