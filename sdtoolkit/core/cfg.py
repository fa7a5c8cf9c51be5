"""Classifier-free guidance in the diffusers convention, guidance rescale and guidance-scale embeddings.

Part of the Denoiser: trainers and 3D optimizers pass a guidance scale to the Denoiser, they do not combine
predictions themselves.

Convention (Ho & Salimans 2022, Eq. 6, as diffusers writes it): pred = pred_u + s (pred_c - pred_u); s = 1 is the
conditional model alone, s = 0 the unconditional one. Other codebases differ by one:
- threestudio's SDS and nerfstudio write pred_c + s (pred_c - pred_u), i.e. diffusers' s + 1;
- LCM (Luo et al. 2023, Eq. 9) writes x0_c + w (x0_c - x0_u) with w in [5, 15], i.e. diffusers' s = w + 1;
  LCM's w-embedding is fed w = s - 1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def classifier_free_guidance(pred_uncond: Tensor, pred_cond: Tensor, guidance_scale: float | Tensor) -> Tensor:
    """pred_u + s (pred_c - pred_u) (diffusers convention). `guidance_scale` is a float or a tensor broadcastable
    against the predictions (e.g. a per-sample scale of shape [B, 1, 1, 1])."""
    return pred_uncond + guidance_scale * (pred_cond - pred_uncond)


def rescale_guidance(pred_cfg: Tensor, pred_cond: Tensor, guidance_rescale: float) -> Tensor:
    """Guidance rescale of Lin et al. 2023 ("Common Diffusion Noise Schedules and Sample Steps are Flawed",
    Sec. 3.4, Eqs. 15-16): match the per-sample std of the guided prediction to the conditional one, then blend
    with factor phi = `guidance_rescale`."""
    if guidance_rescale == 0:
        return pred_cfg
    dims = list(range(1, pred_cond.ndim))
    std_cond = pred_cond.std(dim=dims, keepdim=True)
    std_cfg = pred_cfg.std(dim=dims, keepdim=True)
    pred_rescaled = pred_cfg * (std_cond / std_cfg)
    return guidance_rescale * pred_rescaled + (1 - guidance_rescale) * pred_cfg


def guidance_scale_embedding(w: Tensor, embedding_dim: int = 256, dtype: torch.dtype = torch.float32) -> Tensor:
    """Sinusoidal embedding of the guidance scale for guidance-distilled UNets (`time_cond_proj_dim`), as in LCM
    (Luo et al. 2023, Sec. 4.1, after Meng et al. 2023): w is scaled by 1000 and embedded like a timestep
    (Vaswani et al. 2017, Sec. 3.5) with sin in the first half and cos in the second.

    Args:
        w: `[B]` guidance values in LCM's convention (diffusers scale minus one).
    Returns:
        `[B, embedding_dim]`
    """
    if w.ndim != 1:
        raise ValueError(f"w must have shape [B], got {tuple(w.shape)}")
    w = w.to(torch.float32) * 1000.0
    half_dim = embedding_dim // 2
    frequencies = torch.exp(
        torch.arange(half_dim, dtype=torch.float32, device=w.device) * -(math.log(10000.0) / (half_dim - 1))
    )
    angles = w[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if embedding_dim % 2 == 1:
        embedding = torch.nn.functional.pad(embedding, (0, 1))
    return embedding.to(dtype)
