"""FLUX.1: an MMDiT / single-stream transformer on flow matching over 2x2-packed latents, with CLIP-L pooled and
T5 sequence text, rotary position ids for text and image tokens, and (FLUX.1-dev) a distilled guidance input
(Black Forest Labs 2024; diffusers' `FluxPipeline`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sdtoolkit.core.conditioning import Conditioning
from sdtoolkit.core.families.base import ModelFamily, cast
from sdtoolkit.core.families.sd3 import StableDiffusion3Family


def pack_latents(x: Tensor) -> Tensor:
    """`[B, C, H, W]` latents -> `[B, (H/2)(W/2), 4C]` tokens of 2x2 patches (FluxPipeline._pack_latents)."""
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"FLUX packs 2x2 latent patches: latent height and width must be even, got {h}x{w}")
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: Tensor, height: int, width: int) -> Tensor:
    """Inverse of `pack_latents`: `[B, (H/2)(W/2), 4C]` -> `[B, C, H, W]` for latent size `height` x `width`."""
    b, _, d = tokens.shape
    c = d // 4
    x = tokens.view(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, height, width)


def image_ids(height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Rotary position ids `[(H/2)(W/2), 3]` of the packed image tokens: (0, row, column)
    (FluxPipeline._prepare_latent_image_ids)."""
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] = torch.arange(height // 2)[:, None]
    ids[..., 2] = torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


class FluxFamily(ModelFamily):
    """`FluxTransformer2DModel` (FLUX.1 dev/schnell and their derivatives).

    The Denoiser's latents stay `[B, C, H, W]`; this adapter packs them into tokens for the transformer and
    unpacks the velocity. Its timestep input is t in [0, 1] (the transformer multiplies by 1000 itself), so the
    schedule's model timestep t * T is divided by T = 1000. `guidance_embed` is FLUX.1-dev's distilled guidance
    scale (the pipeline's `guidance_scale`, default 3.5); models without `guidance_embeds` take none.
    """

    name = "flux"
    model_classes = ("FluxTransformer2DModel",)
    pipeline_classes = ("FluxPipeline",)
    export_pipeline = "FluxPipeline"
    description = "FLUX.1 transformer (packed latents, guidance embedding, text/image ids)"
    num_train_timesteps = 1000
    component = "transformer"
    lora_target_modules = (*StableDiffusion3Family.lora_target_modules, "proj_mlp", "proj_out")
    """diffusers' FLUX LoRA scripts: both streams' attention and feed-forwards, the single blocks' MLP."""
    flow_sigmas = "inverse_steps"  # FluxPipeline samples sigmas = linspace(1, 1/N, N), then its dynamic shift
    latent_packing = 2
    feature_output_index = 1  # FLUX's double and single blocks return (text, image) hidden states

    def guidance_input(self, model):
        return "scale" if model.config.guidance_embeds else None

    def call(self, model, x, timestep, cond, guidance_embed):
        b, _, h, w = x.shape
        guidance = None
        if model.config.guidance_embeds:
            if guidance_embed is None:
                raise ValueError("this FLUX transformer has guidance_embeds (FLUX.1-dev): pass guidance_embed")
            guidance = guidance_embed.to(x.dtype).expand(b)
        text = cond.encoder_hidden_states
        out = model(
            hidden_states=pack_latents(x),
            timestep=(timestep / self.num_train_timesteps).to(x.dtype),
            guidance=guidance,
            pooled_projections=cast(cond.pooled_projections, x.dtype),
            encoder_hidden_states=cast(text, x.dtype),
            txt_ids=torch.zeros(text.shape[1], 3, device=x.device, dtype=x.dtype),
            img_ids=image_ids(h, w, x.device, x.dtype),
            return_dict=False,
        )[0]
        return unpack_latents(out, h, w)

    def encode_prompt(self, pipe: Any, prompts: list[str], negative: list[str], device: torch.device):
        """FLUX encodes each prompt list alone (no joint CFG batch): T5 sequence embeddings and CLIP pooled ones.
        The unconditional row is the encoding of the negative prompts ("" by default), as FluxPipeline's true-CFG
        path does."""
        embeds, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=device)
        neg_embeds, neg_pooled, _ = pipe.encode_prompt(prompt=negative, prompt_2=None, device=device)
        return Conditioning(embeds, pooled_projections=pooled), Conditioning(neg_embeds, pooled_projections=neg_pooled)
