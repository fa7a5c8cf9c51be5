"""Model components for the benchmarks: `tiny` (CPU, seconds) and `sd15` (Stable Diffusion 1.5 sizes, random weights).

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
SD15_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


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

    def unet(self, time_cond_proj_dim: int | None = None, seed: int = 0) -> nn.Module:
        from diffusers import UNet2DConditionModel

        torch.manual_seed(seed)
        if self.size == "sd15":
            return UNet2DConditionModel(**SD15_UNET, time_cond_proj_dim=time_cond_proj_dim).to(self.device)
        from sdtoolkit.testing import tiny_unet

        return tiny_unet(time_cond_proj_dim=time_cond_proj_dim, seed=seed, sample_size=self.latent_size).to(
            self.device
        )

    def vae(self) -> nn.Module:
        from diffusers import AutoencoderKL

        torch.manual_seed(0)
        if self.size == "sd15":
            return AutoencoderKL(**SD15_VAE).to(self.device)
        from sdtoolkit.testing import tiny_vae

        return tiny_vae().to(self.device)

    def scheduler(self):
        from diffusers import DDIMScheduler

        return DDIMScheduler(**SD15_SCHEDULER)

    def latents(self, generator: torch.Generator | None = None) -> torch.Tensor:
        shape = (self.batch_size, 4, self.latent_size, self.latent_size)
        return torch.randn(shape, generator=generator).to(self.device)

    def text(self, generator: torch.Generator | None = None) -> torch.Tensor:
        shape = (self.batch_size, self.text_len, self.text_dim)
        return torch.randn(shape, generator=generator).to(self.device)


def build(size: str, device: torch.device, batch_size: int | None = None) -> Components:
    if size == "sd15":
        return Components("sd15", device, batch_size or 16, 64, 512, 77, 768, 256)
    if size == "tiny":
        return Components("tiny", device, batch_size or 8, 8, 16, 16, 32, 32)
    raise ValueError(f"size={size!r} is not known; choose tiny or sd15")
