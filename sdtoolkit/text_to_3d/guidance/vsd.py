"""Variational Score Distillation (ProlificDreamer, Wang et al. 2023, Eq. 9 and Algorithm 1) through the shared
score-distillation core: the real score is the frozen prior with CFG, the fake score a LoRA adapter on the same
backbone (`sdtoolkit.distill.score_distillation.ScorePair`), camera-conditioned.

Camera conditioning: the camera-to-world matrix (flattened, 16 numbers) goes through the fake score's
`ExtraEmbedding` MLP, installed as the U-Net's `class_embedding` during fake-score forwards only, so it is added to
the time embedding as in ProlificDreamer's camera-conditioned LoRA U-Net (threestudio sets
`unet_lora.class_embedding` to a camera MLP the same way). With probability `camera_condition_dropout` the camera is
replaced by zeros while training the LoRA (ProlificDreamer's 10 % dropout), so the fake score also learns the
camera-free score. Transformer priors (SD3, SANA, FLUX) have no class embedding to carry it: their fake score is
the camera-free LoRA (ProlificDreamer's ablation without camera conditioning), and the camera input is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
from torch import Tensor

from sdtoolkit.core.config import AT_LEAST_1, FRACTION, POSITIVE, Bound, OneOf, Range
from sdtoolkit.core.denoiser import Conditioning, Denoiser
from sdtoolkit.distill.score_distillation import FakeScoreConfig, ScorePair, sample_timesteps
from sdtoolkit.text_to_3d.guidance.registry import register
from sdtoolkit.text_to_3d.guidance.sds import (
    GuidanceOutput,
    TimestepScheduleConfig,
    clip_gradient,
    region_gradient,
    sample_sds_timesteps,
    sds_surrogate_loss,
    sds_weight,
)

CAMERA_DIM = 16
"""Width of the camera vector: a flattened 4x4 camera-to-world matrix."""


@dataclass
class VSDConfig:
    """ProlificDreamer's VSD hyper-parameters (threestudio `stable-diffusion-vsd-guidance` defaults)."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "guidance_scale": Range(0),
        "guidance_scale_lora": Range(0),
        "weighting": OneOf("sds", "uniform", "fantasia3d"),
        "lora_rank": AT_LEAST_1,
        "lora_lr": POSITIVE,
        "lora_steps_per_step": AT_LEAST_1,
        "camera_condition_dropout": FRACTION,
        "lora_t_range": FRACTION,
        "grad_clip": POSITIVE,
    }

    guidance_scale: float = 7.5
    """CFG scale of the real score, diffusers convention (ProlificDreamer: 7.5; VSD's CFG is already diffusers')."""
    guidance_scale_lora: float = 1.0
    """CFG scale of the fake score (threestudio `guidance_scale_lora: 1.0`: no guidance)."""
    weighting: str = "sds"
    """w(t) (ProlificDreamer: sigma_t^2 = 1 - alphā_t)."""
    timesteps: TimestepScheduleConfig = field(
        default_factory=lambda: TimestepScheduleConfig(anneal="linear", max_step_percent_end=0.5, anneal_end=0.5)
    )
    """ProlificDreamer anneals the upper end 0.98 -> 0.5 (at step 5000 of 25000; here at half of training)."""
    lora_rank: int = 4
    """Rank of the fake score's LoRA (ProlificDreamer: 4)."""
    lora_lr: float = 1e-3
    """Learning rate of the LoRA and camera MLP (ProlificDreamer: 1e-3)."""
    lora_steps_per_step: int = 1
    """LoRA updates per NeRF update (ProlificDreamer: 1)."""
    camera_condition_dropout: float = 0.1
    """Probability that the LoRA's camera input is zeroed in its denoising loss (ProlificDreamer: 0.1)."""
    lora_t_range: tuple[float, float] = (0.0, 1.0)
    """Time range (fractions) of the LoRA's denoising loss (ProlificDreamer trains it on all t)."""
    grad_clip: float | None = None
    """Element-wise clamp of the VSD gradient (None = off)."""

    def __post_init__(self) -> None:
        low, high = self.lora_t_range
        if not low <= high:
            raise ValueError(f"lora_t_range {low} {high}: the first value must not exceed the second")


@register("vsd", VSDConfig)
class VSDGuidance:
    """g = w(t) (eps_real(z_t; y, CFG) - eps_fake(z_t; y, camera)); the LoRA fake score is fitted to the renders."""

    config: VSDConfig

    def __init__(self, config: VSDConfig, denoiser: Denoiser):
        self.config, self.denoiser = config, denoiser
        # the camera MLP enters through a UNet's class embedding (ProlificDreamer); transformer priors (SD3, SANA,
        # FLUX) have none, so their fake score is the camera-free LoRA of VSD's ablation (the camera input is ignored)
        camera_dim = CAMERA_DIM if hasattr(denoiser.base_model, "time_embedding") else None
        self.scores = ScorePair(
            denoiser,
            FakeScoreConfig(kind="lora", rank=config.lora_rank, extra_cond_dim=camera_dim, adapter_name="vsd_lora"),
        )

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The LoRA and camera-MLP parameters (optimised with `lora_lr`)."""
        return self.scores.trainable_parameters()

    def state_dict(self) -> dict[str, Tensor]:
        return self.scores.fake_state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.scores.load_fake_state_dict(state)

    @staticmethod
    def camera_vector(cameras) -> Tensor:
        """`[B, 16]` flattened camera-to-world matrices."""
        return cameras.c2w().flatten(1)

    def __call__(
        self,
        latents: Tensor,
        conds: list[tuple[Conditioning, Conditioning]],
        progress: float,
        *,
        masks: Tensor | None = None,
        cameras=None,
        generator: torch.Generator | None = None,
    ) -> GuidanceOutput:
        """One VSD step: the gradient on the latents and the LoRA's denoising loss (in `extra_losses`)."""
        if cameras is None:
            raise ValueError("VSD needs the cameras (its fake score is camera-conditioned)")
        batch, k = latents.shape[0], len(conds)
        camera = self.camera_vector(cameras).to(latents)
        t = sample_sds_timesteps(self.denoiser, self.config.timesteps, batch, progress, generator).to(latents.device)
        eps = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(latents.device)
        cond = Conditioning.cat([c for c, _ in conds])
        uncond = Conditioning.cat([u for _, u in conds])
        with torch.no_grad():
            z_t = self.denoiser.add_noise(latents.detach(), eps, t).repeat(k, 1, 1, 1)
            t_k = t.repeat(k)
            eps_real = self.scores.real(z_t, t_k, cond, uncond=uncond, guidance_scale=self.config.guidance_scale).eps
            camera_cond = replace(cond, class_labels=camera.repeat(k, 1))
            camera_uncond = replace(uncond, class_labels=camera.repeat(k, 1))
            eps_fake = self.scores.fake(
                z_t, t_k, camera_cond, uncond=camera_uncond, guidance_scale=self.config.guidance_scale_lora
            ).eps
            c = self.denoiser.coefficients(t, latents)
            w = sds_weight(self.config.weighting, c.alpha_t, c.sigma_t)
            grad = region_gradient((eps_real - eps_fake).reshape(k, *latents.shape), masks) * w
            grad = clip_gradient(grad, self.config.grad_clip)
        # the LoRA fits the current renders (x0 = sg(z)), camera-conditioned with dropout to the zero camera
        keep = (torch.rand(batch, generator=generator) >= self.config.camera_condition_dropout).to(latents)
        lora_cond = replace(conds[0][0], class_labels=camera * keep[:, None])
        loss_lora = latents.new_zeros(())
        for _ in range(self.config.lora_steps_per_step):
            # t and eps drawn here (CPU generator, then moved) so a run is reproducible on any device
            t_lora = sample_timesteps(self.denoiser.schedule, batch, *self.config.lora_t_range, generator=generator)
            eps_lora = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(latents.device)
            loss_lora = loss_lora + self.scores.fake_denoising_loss(
                latents.detach(), lora_cond, t=t_lora.to(latents.device), eps=eps_lora
            )
        return GuidanceOutput(sds_surrogate_loss(latents, grad), t, grad.norm(), {"loss_lora": loss_lora})
