"""Model components for the benchmarks: `tiny` (CPU, seconds), `shapes` (the builtin:shapes teacher's architecture,
CPU memory figures), `sd15-thin` (Stable Diffusion 1.5's UNet and VAE topology and module count with narrow
channels: the host-side cost per module shows on a CPU) and `sd15` (Stable Diffusion 1.5 sizes, random weights).

Throughput does not depend on the weights, so `sd15` builds the UNet (860M parameters) and VAE from their published
configs with random initialisation: no download, and the same work as the real model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
)
SD15_THIN_UNET = dict(
    SD15_UNET,
    sample_size=8,
    block_out_channels=(32, 64, 128, 128),
    cross_attention_dim=64,
)
"""SD1.5's UNet with a tenth of its widths (norm groups stay 32) at 8x8 latents: the same 4 down/up levels, 2
resnets per level, 16 transformer blocks and module count (same module names, so LoRA targets the same layers)."""
SD15_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    sample_size=512,
)
SD15_THIN_VAE = dict(SD15_VAE, block_out_channels=(32, 64, 64, 64), sample_size=64)
"""SD1.5's VAE topology with narrow channels (64 px images for the 8x8 latents)."""
SD15_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


VIDEO_FRAMES = 16
"""Frames per clip of the video workloads (MCM's AnimateDiff recipe: 16)."""


@dataclass
class Components:
    """One size's networks and shapes. `unet` is a fresh model each call so student/teacher/target are distinct."""

    size: str
    device: torch.device
    batch_size: int
    latent_size: int
    image_size: int
    text_len: int
    text_dim: int
    time_cond_proj_dim: int | None
    fake_rank: int = 64
    """LoRA rank of the DMD2/SiD fake score: DMD2's 64 at SD1.5 size; the narrow sizes keep SD1.5's ratio of rank to
    the first block width (64 / 320), so the adapter's share of the compute is the one a real run has."""

    def unet(self, time_cond_proj_dim: int | None = None, seed: int = 0) -> nn.Module:
        from diffusers import UNet2DConditionModel

        torch.manual_seed(seed)
        if self.size == "sd15":
            return UNet2DConditionModel(**SD15_UNET, time_cond_proj_dim=time_cond_proj_dim).to(self.device)
        if self.size == "sd15-thin":
            return UNet2DConditionModel(**SD15_THIN_UNET, time_cond_proj_dim=time_cond_proj_dim).to(self.device)
        if self.size == "shapes":
            from sdtoolkit.models.shapes_teacher import TeacherConfig, build_unet

            config = build_unet(TeacherConfig()).config
            torch.manual_seed(seed)  # a keyword, not a dict entry: from_config drops the config's default-valued keys
            return UNet2DConditionModel.from_config(config, time_cond_proj_dim=time_cond_proj_dim).to(self.device)
        from sdtoolkit.testing import tiny_unet

        return tiny_unet(time_cond_proj_dim=time_cond_proj_dim, seed=seed, sample_size=self.latent_size).to(
            self.device
        )

    def vae(self) -> nn.Module:
        from diffusers import AutoencoderKL

        torch.manual_seed(0)
        if self.size == "sd15":
            return AutoencoderKL(**SD15_VAE).to(self.device)
        if self.size == "sd15-thin":
            return AutoencoderKL(**SD15_THIN_VAE).to(self.device)
        if self.size == "shapes":
            from sdtoolkit.models.shapes_teacher import TeacherConfig, build_vae

            return build_vae(TeacherConfig()).to(self.device)
        from sdtoolkit.testing import tiny_vae

        return tiny_vae().to(self.device)

    def scheduler(self):
        from diffusers import DDIMScheduler

        return DDIMScheduler(**SD15_SCHEDULER)

    def pipeline(self, dtype: torch.dtype = torch.float32):
        """A stock `StableDiffusionPipeline` of this size (DDIM scheduler) whose text encoder gives `[B, text_len,
        text_dim]` embeddings, as the real model's (a small random CLIP text model: the benchmarks time the UNet
        and VAE, not the text encoder)."""
        from diffusers import StableDiffusionPipeline

        from sdtoolkit.testing import tiny_text_encoder, tiny_tokenizer

        tokenizer = tiny_tokenizer(model_max_length=self.text_len)
        text_encoder = tiny_text_encoder(
            len(tokenizer), hidden_size=self.text_dim, max_position_embeddings=self.text_len
        )
        pipeline = StableDiffusionPipeline(
            vae=self.vae(),
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=self.unet(),
            scheduler=self.scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipeline.set_progress_bar_config(disable=True)
        return pipeline.to(self.device, dtype)

    def motion_adapter(self, seed: int = 0) -> nn.Module:
        """A `MotionAdapter` for this size's UNet: at sd15 AnimateDiff v1-5-2's layout (8 heads, 32 norm groups, 2
        motion layers per block, a motion mid block), narrower sizes the same with their widths and groups. Output
        projections non-zero (a trained adapter's; the time does not depend on it)."""
        from diffusers import MotionAdapter

        unet = self.unet(seed=seed)
        torch.manual_seed(seed)
        adapter = MotionAdapter(
            block_out_channels=tuple(unet.config.block_out_channels),
            motion_layers_per_block=unet.config.layers_per_block,
            motion_num_attention_heads=8 if self.size in ("sd15", "sd15-thin") else 2,
            motion_norm_num_groups=unet.config.norm_num_groups,
            motion_max_seq_length=32,
            use_motion_mid_block=True,
        )
        for name, parameter in adapter.named_parameters():
            if "proj_out" in name:
                torch.nn.init.normal_(parameter, std=0.02)
        return adapter.to(self.device)

    @property
    def video_clips(self) -> int:
        """Clips of `VIDEO_FRAMES` frames per video step: the size's batch in frames, at least one clip."""
        return max(1, self.batch_size // VIDEO_FRAMES)

    def latents(self, generator: torch.Generator | None = None) -> torch.Tensor:
        shape = (self.batch_size, 4, self.latent_size, self.latent_size)
        return torch.randn(shape, generator=generator).to(self.device)

    def text(self, generator: torch.Generator | None = None) -> torch.Tensor:
        shape = (self.batch_size, self.text_len, self.text_dim)
        return torch.randn(shape, generator=generator).to(self.device)


SIZES = ("tiny", "sd15-thin", "shapes", "sd15")


def scaled_rank(first_width: int) -> int:
    """SD1.5's fake-score LoRA rank 64 at width 320, scaled to another first block width (at least 1)."""
    return max(1, round(64 * first_width / 320))


def build(size: str, device: torch.device, batch_size: int | None = None) -> Components:
    if size == "sd15":
        return Components("sd15", device, batch_size or 16, 64, 512, 77, 768, 256, fake_rank=64)
    if size == "sd15-thin":
        rank = scaled_rank(SD15_THIN_UNET["block_out_channels"][0])
        return Components("sd15-thin", device, batch_size or 4, 8, 64, 77, 64, 32, fake_rank=rank)
    if size == "tiny":
        return Components("tiny", device, batch_size or 8, 8, 16, 16, 32, 32, fake_rank=scaled_rank(8))
    if size == "shapes":
        return Components("shapes", device, batch_size or 16, 16, 64, 16, 64, 256)
    raise ValueError(f"size={size!r} is not known; choose one of {', '.join(SIZES)}")
