"""Stable Diffusion XL: a UNet with two text encoders, whose pooled embedding and size/crop `time_ids` enter as
`added_cond_kwargs` (Podell et al. 2023, Sec. 2.2 "micro-conditioning")."""

from __future__ import annotations

from typing import Any

import torch

from sdtoolkit.core.conditioning import Conditioning
from sdtoolkit.core.families.base import ModelFamily
from sdtoolkit.core.families.sd import StableDiffusionFamily


class StableDiffusionXLFamily(StableDiffusionFamily):
    """`UNet2DConditionModel` with `addition_embed_type="text_time"` (SDXL base, SDXL-Turbo, SSD-1B, ...)."""

    name = "sdxl"
    pipeline_classes = ("StableDiffusionXLPipeline",)
    export_pipeline = "StableDiffusionXLPipeline"
    description = "Stable Diffusion XL UNet (two text encoders, text_embeds/time_ids)"

    @classmethod
    def matches(cls, model) -> bool:
        return ModelFamily.matches.__func__(cls, model) and model.config.addition_embed_type == "text_time"

    def encode_prompt(self, pipe: Any, prompts: list[str], negative: list[str], device: torch.device):
        """SDXL's conditioning: the two encoders' penultimate hidden states concatenated, the second encoder's
        pooled projection as `text_embeds`, and `time_ids` = (original size, crop top-left, target size) at the
        pipeline's default resolution with no crop, exactly as `StableDiffusionXLPipeline.__call__` builds them."""
        # all-empty negatives go in as None, so `force_zeros_for_empty_prompt` applies as in the stock call
        embeds, neg_embeds, pooled, neg_pooled = pipe.encode_prompt(
            prompt=prompts,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=True,
            negative_prompt=None if all(n == "" for n in negative) else negative,
        )
        size = pipe.default_sample_size * pipe.vae_scale_factor
        time_ids = self.time_ids(pipe, (size, size), (0, 0), (size, size), pooled, embeds.dtype)
        rows = time_ids.to(device).expand(len(prompts), -1)
        cond = Conditioning(embeds, added_cond_kwargs={"text_embeds": pooled, "time_ids": rows})
        uncond = Conditioning(neg_embeds, added_cond_kwargs={"text_embeds": neg_pooled, "time_ids": rows.clone()})
        return cond, uncond

    @staticmethod
    def time_ids(pipe: Any, original_size, crop, target_size, pooled, dtype) -> torch.Tensor:
        """SDXL's micro-conditioning vector `[1, 6]` through the pipeline's own `_get_add_time_ids`."""
        dim = pipe.text_encoder_2.config.projection_dim if pipe.text_encoder_2 is not None else pooled.shape[-1]
        return pipe._get_add_time_ids(original_size, crop, target_size, dtype=dtype, text_encoder_projection_dim=dim)
