"""Tiny seeded diffusers components built in-process (diffusers' `get_dummy_components` style) for tests and
CPU benchmarks. Nothing here touches the network."""

from __future__ import annotations

import torch

TINY_WORDS = "a photo of red green blue yellow cube sphere cone torus cylinder front side back overhead view , ."


def tiny_tokenizer(model_max_length: int = 16):
    from sdtoolkit.models.text import build_word_tokenizer

    return build_word_tokenizer([TINY_WORDS], model_max_length=model_max_length)


def tiny_text_encoder(vocab_size: int, hidden_size: int = 32, max_position_embeddings: int = 16, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        projection_dim=hidden_size,
    )
    return CLIPTextModel(config).eval()


def tiny_unet(cross_attention_dim: int = 32, time_cond_proj_dim: int | None = None, seed: int = 0, **overrides):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    kwargs = dict(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
        norm_num_groups=4,
        time_cond_proj_dim=time_cond_proj_dim,
    )
    kwargs.update(overrides)
    return UNet2DConditionModel(**kwargs)


def tiny_unconditional_unet(seed: int = 0):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=4,
        norm_num_groups=4,
    )


def tiny_sd3_transformer(seed: int = 0):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=16,
        pooled_projection_dim=32,
        out_channels=4,
        pos_embed_max_size=16,
    )


def tiny_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )


def tiny_sd_pipeline(prediction_type: str = "epsilon", time_cond_proj_dim: int | None = None, seed: int = 0):
    """A complete tiny `StableDiffusionPipeline` (16×16 images, 8×8 latents) with a DDIM scheduler."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    tokenizer = tiny_tokenizer()
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    return StableDiffusionPipeline(
        vae=tiny_vae(seed),
        text_encoder=tiny_text_encoder(len(tokenizer), seed=seed),
        tokenizer=tokenizer,
        unet=tiny_unet(time_cond_proj_dim=time_cond_proj_dim, seed=seed),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


# ---------------------------------------------------------------------------------------------------------------
# tiny pipelines of every model family (`sdtoolkit.core.families`), for the family and trainer x family tests
# ---------------------------------------------------------------------------------------------------------------


def tiny_clip_with_projection(vocab_size: int, hidden_size: int = 32, seed: int = 0):
    """SDXL's / SD3's second CLIP text encoder (`CLIPTextModelWithProjection`), tiny."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        projection_dim=hidden_size,
    )
    return CLIPTextModelWithProjection(config).eval()


def tiny_sdxl_pipeline(seed: int = 0):
    """A tiny `StableDiffusionXLPipeline` (two CLIP encoders of width 16, text_time UNet, 16x16 images) with a
    trailing DDIM scheduler."""
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    tokenizer, tokenizer_2 = tiny_tokenizer(), tiny_tokenizer()
    unet = tiny_unet(
        cross_attention_dim=32,
        seed=seed,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=8 * 6 + 16,
        transformer_layers_per_block=1,
    )
    return StableDiffusionXLPipeline(
        vae=tiny_vae(seed),
        text_encoder=tiny_text_encoder(len(tokenizer), hidden_size=16, seed=seed),
        text_encoder_2=tiny_clip_with_projection(len(tokenizer_2), hidden_size=16, seed=seed + 1),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=DDIMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            timestep_spacing="trailing",
            set_alpha_to_one=True,
            clip_sample=False,
        ),
        force_zeros_for_empty_prompt=True,
    )


def tiny_sd3_pipeline(seed: int = 0):
    """A tiny `StableDiffusion3Pipeline` (CLIP-L/G stand-ins of width 16, no T5) with a flow-matching scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    tokenizer, tokenizer_2 = tiny_tokenizer(), tiny_tokenizer()
    vae = tiny_vae(seed)
    vae.register_to_config(shift_factor=0.0)  # SD3's VAE has one (stock decoding adds it)
    return StableDiffusion3Pipeline(
        transformer=tiny_sd3_transformer(seed),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=tiny_clip_with_projection(len(tokenizer), hidden_size=16, seed=seed),
        tokenizer=tokenizer,
        text_encoder_2=tiny_clip_with_projection(len(tokenizer_2), hidden_size=16, seed=seed + 1),
        tokenizer_2=tokenizer_2,
        text_encoder_3=None,
        tokenizer_3=None,
    )


def tiny_sana_pipeline(seed: int = 0):
    """A tiny `SanaPipeline`: a Gemma-2 text encoder of width 16, a 4-channel deep-compression autoencoder (32x),
    a one-layer SANA transformer and a flow-matching scheduler."""
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    tokenizer = tiny_tokenizer(model_max_length=300)
    torch.manual_seed(seed)
    text_encoder = Gemma2Model(
        Gemma2Config(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=512,
            pad_token_id=1,
        )
    ).eval()
    torch.manual_seed(seed)
    vae = AutoencoderDC(
        in_channels=3,
        latent_channels=4,
        attention_head_dim=2,
        encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        encoder_qkv_multiscales=((), (5,)),
        decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=(1, 1),
        downsample_block_type="conv",
        upsample_block_type="interpolate",
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        scaling_factor=0.41407,
    )
    torch.manual_seed(seed)
    transformer = SanaTransformer2DModel(
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        num_attention_heads=2,
        attention_head_dim=4,
        num_cross_attention_heads=2,
        cross_attention_head_dim=4,
        cross_attention_dim=8,
        caption_channels=16,
        sample_size=8,
    )
    return SanaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )


def tiny_flux_transformer(seed: int = 0, guidance_embeds: bool = True):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=16,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 4, 8),
    )


def tiny_flux_pipeline(seed: int = 0, guidance_embeds: bool = True):
    """A tiny `FluxPipeline` (CLIP pooled width 16, T5 width 32, 4-channel VAE packed to 16-dim tokens, dynamic
    shifting scheduler as FLUX.1-dev's)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import T5Config, T5EncoderModel

    tokenizer, tokenizer_2 = tiny_tokenizer(), tiny_tokenizer(model_max_length=512)
    torch.manual_seed(seed)
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2),
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=1,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=1,
        )
    ).eval()
    vae = tiny_vae(seed)
    vae.register_to_config(shift_factor=0.0)  # FLUX's VAE has one (stock decoding adds it)
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(
            use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096
        ),
        vae=vae,
        text_encoder=tiny_text_encoder(len(tokenizer), hidden_size=16, seed=seed),
        tokenizer=tokenizer,
        text_encoder_2=t5,
        tokenizer_2=tokenizer_2,
        transformer=tiny_flux_transformer(seed, guidance_embeds),
    )


TINY_CAPTIONS = ("a photo of a red cube", "a photo of a blue sphere", "a photo of a green cone")
"""Captions of the tiny image folder of `write_tiny_assets`."""


def write_tiny_assets(root, prompts: list[str] | None = None, num_images: int = 6):
    """A tiny SD teacher folder (`root/teacher`), a captioned image folder (`root/data`: 16x16 PNGs with same-name
    .txt captions) and, with `prompts`, a prompt file (`root/prompts.txt`), for end-to-end CLI tests. Returns root."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    root = Path(root)
    tiny_sd_pipeline().save_pretrained(root / "teacher")
    data = root / "data"
    data.mkdir()
    generator = torch.Generator().manual_seed(0)
    for i in range(num_images):
        pixels = (torch.rand(16, 16, 3, generator=generator) * 255).to(torch.uint8).numpy()
        Image.fromarray(np.asarray(pixels)).save(data / f"image{i}.png")
        (data / f"image{i}.txt").write_text(TINY_CAPTIONS[i % len(TINY_CAPTIONS)])
    if prompts is not None:
        (root / "prompts.txt").write_text("\n".join(prompts) + "\n")
    return root
