"""Stable Diffusion 3 / 3.5: an MMDiT transformer on flow matching, with CLIP-L + CLIP-G (+ optional T5) text
(Esser et al. 2024)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F

from sdtoolkit.core.attention import takes_attention_bias
from sdtoolkit.core.conditioning import Conditioning
from sdtoolkit.core.families.base import ModelFamily, cast
from sdtoolkit.core.repeated_tokens import collapse_conditioning, compact_joint_attention, expand_conditioning


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
        log_n = cond.encoder_log_multiplicity
        if log_n is not None and not takes_attention_bias(model):
            cond, log_n = expand_conditioning(cond), None
        context = contextlib.nullcontext()
        if log_n is not None:  # SD3 without T5: the 256 zero tokens once, weighted log 256 in attention (exact)
            image_tokens = self.image_seq_len(model, x.shape[-2], x.shape[-1])
            bias = F.pad(log_n, (image_tokens, 0)).to(x.dtype)[:, None, None, :]
            context = compact_joint_attention(model, bias)
        with context:
            return model(
                hidden_states=x,
                timestep=timestep,
                encoder_hidden_states=cast(cond.encoder_hidden_states, x.dtype),
                pooled_projections=cast(cond.pooled_projections, x.dtype),
                return_dict=False,
            )[0]

    def encode_prompt(self, pipe: Any, prompts: list[str], negative: list[str], device: torch.device):
        """The stock pipeline's conditioning; without T5 its zero tokens are collapsed to one
        (`sdtoolkit.core.repeated_tokens`), which every call then weights back exactly."""
        embeds, neg_embeds, pooled, neg_pooled = pipe.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=device,
            do_classifier_free_guidance=True,
            negative_prompt=negative,
        )
        cond = Conditioning(embeds, pooled_projections=pooled)
        uncond = Conditioning(neg_embeds, pooled_projections=neg_pooled)
        if getattr(pipe, "text_encoder_3", None) is None:
            cond, uncond = collapse_conditioning(cond), collapse_conditioning(uncond)
        return cond, uncond
