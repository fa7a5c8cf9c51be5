"""SANA: a linear-attention DiT on a 32x-compressing autoencoder with a Gemma-2 text encoder whose padded tokens
are masked (Xie et al. 2024); SANA-Sprint students take a `guidance` input (Chen et al. 2025)."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from sdtoolkit.core.conditioning import Conditioning
from sdtoolkit.core.families.base import ModelFamily, cast


class SanaFamily(ModelFamily):
    """`SanaTransformer2DModel` (SANA 0.6B-4.8B, SANA-Sprint with `guidance_embeds`)."""

    name = "sana"
    model_classes = ("SanaTransformer2DModel",)
    pipeline_classes = ("SanaPipeline", "SanaSprintPipeline")
    export_pipeline = "SanaPipeline"
    description = "SANA transformer (attention mask; SANA-Sprint guidance input)"
    component = "transformer"
    lora_target_modules = ("to_q", "to_k", "to_v", "to_out.0", "conv_inverted", "conv_point")
    """Self and cross attention and the GLUMBConv feed-forward's pointwise convs (diffusers' SANA LoRA scripts train
    the first four; the depthwise `conv_depth` cannot take a peft LoRA)."""

    def call(self, model, x, timestep, cond, guidance_embed):
        kwargs = {}
        if guidance_embed is not None:
            kwargs["guidance"] = guidance_embed
        return model(
            hidden_states=x,
            encoder_hidden_states=cast(cond.encoder_hidden_states, x.dtype),
            timestep=timestep,
            encoder_attention_mask=cond.encoder_attention_mask,
            return_dict=False,
            **kwargs,
        )[0]

    def encode_prompt(self, pipe: Any, prompts: list[str], negative: list[str], device: torch.device):
        # the stock call's own defaults (SANA prefixes prompts with its "complex human instruction" by default)
        defaults = inspect.signature(type(pipe).__call__).parameters
        kwargs = {
            name: defaults[name].default
            for name in ("complex_human_instruction", "max_sequence_length")
            if name in defaults and defaults[name].default is not inspect.Parameter.empty
        }
        embeds, mask, neg_embeds, neg_mask = pipe.encode_prompt(
            prompts, do_classifier_free_guidance=True, negative_prompt=negative, device=device, **kwargs
        )
        return Conditioning(embeds, encoder_attention_mask=mask), Conditioning(
            neg_embeds, encoder_attention_mask=neg_mask
        )
