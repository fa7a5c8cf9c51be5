"""Trainable students made from a teacher's network: the teacher's weights in a network that also takes the guidance
scale w (an LCM-style `time_cond_proj_dim` embedding for a UNet, SANA-Sprint's guidance embedder for SANA), the new
input zero-initialised so that the student starts exactly as the teacher. Used by LCM and sCM."""

from __future__ import annotations

import copy

from torch import nn

__all__ = ["QK_NORM", "qk_normed_network", "sana_sprint_student", "w_embedded_unet"]


def sana_sprint_student(transformer: nn.Module, guidance_embeds_scale: float = 0.1) -> nn.Module:
    """A SANA-Sprint student from a SANA teacher transformer: the same network with `guidance_embeds=True` (its
    time embedding `SanaCombinedTimestepGuidanceEmbeddings`), the teacher's weights loaded (the timestep embedder
    moves from `time_embed.emb.timestep_embedder` to `time_embed.timestep_embedder`), and the guidance embedder's
    output layer zero-initialised, so that it adds nothing until trained (SANA-Sprint's diffusers port)."""
    cls = type(transformer)
    if transformer.config.get("guidance_embeds"):
        return copy.deepcopy(transformer).float().requires_grad_(True)
    student = cls.from_config(transformer.config, guidance_embeds=True, guidance_embeds_scale=guidance_embeds_scale)
    state = {k.replace("time_embed.emb.", "time_embed."): v for k, v in transformer.state_dict().items()}
    missing, unexpected = student.load_state_dict(state, strict=False)
    if unexpected or any(not name.startswith("time_embed.guidance_embedder.") for name in missing):
        raise RuntimeError(f"SANA-Sprint student copy mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    nn.init.zeros_(student.time_embed.guidance_embedder.linear_2.weight)
    nn.init.zeros_(student.time_embed.guidance_embedder.linear_2.bias)
    return student.float().requires_grad_(True)


def w_embedded_unet(unet: nn.Module, time_cond_proj_dim: int) -> nn.Module:
    """A UNet copy with LCM's w-embedding (`time_cond_proj_dim`), teacher weights loaded, `cond_proj` zeroed."""
    if unet.config.get("time_cond_proj_dim") is not None:
        return copy.deepcopy(unet).float().requires_grad_(True)
    # a keyword, not a dict entry: diffusers drops config keys listed in `_use_default_values`
    student = type(unet).from_config(unet.config, time_cond_proj_dim=time_cond_proj_dim)
    missing, unexpected = student.load_state_dict(unet.state_dict(), strict=False)
    if unexpected or any("cond_proj" not in name for name in missing):
        raise RuntimeError(f"student copy mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    nn.init.zeros_(student.time_embedding.cond_proj.weight)
    return student.float().requires_grad_(True)


QK_NORM = {"sd3": "rms_norm", "sana": "rms_norm_across_heads"}
"""The `qk_norm` a transformer of each family gets for sCM's teacher preparation (SD3.5's per-head RMSNorm; SANA-
Sprint's RMSNorm across heads). FLUX's attention always normalises queries and keys."""


def qk_normed_network(network: nn.Module, family: str) -> nn.Module:
    """A copy of an SD3 or SANA transformer with RMS QK-normalisation in every attention (SANA-Sprint's teacher
    preparation, Chen et al. 2025), every other weight the teacher's. The norms' scales start at 1, so
    the copy is a different function until fine-tuned (`sdtoolkit.trainers.teacher_prep`)."""
    if family not in QK_NORM:
        raise ValueError(f"no QK-normalisation to add to a {family} network (families: {', '.join(sorted(QK_NORM))})")
    # a keyword, not a dict entry: diffusers drops config keys listed in `_use_default_values`
    student = type(network).from_config(network.config, qk_norm=QK_NORM[family])
    missing, unexpected = student.load_state_dict(network.state_dict(), strict=False)
    norms = ("norm_q.", "norm_k.", "norm_added_q.", "norm_added_k.")
    if unexpected or not missing or any(not any(n in name for n in norms) for name in missing):
        raise RuntimeError(f"QK-norm copy mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return student.float().requires_grad_(True)
