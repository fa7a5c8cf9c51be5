"""Flash-DMD's timestep-aware distillation (Chen et al. 2025, "Flash-DMD: Towards High-Fidelity Few-Step Image
Generation with Efficient Distillation and Joint Reinforcement Learning", arXiv 2511.20549, CVPR 2026), stage 1.

No official code exists; this follows the paper's Sec. 3 and Algorithm 1 as published. Per global step:

1. generator (every `fake_updates_per_generator`-th step; the paper's TTUR 1 or 2):
   a. distribution matching at a HIGH-noise student step only: i from the high-noise half of the student's
      timesteps, x_{t_i} by backward simulation, x = G(x_{t_i}, t_i), and DMD2's loss L_DM on x (Eq. 4);
   b. a pixel-space GAN at a LOW-noise student step only: the chain is continued from x to a clean x_0 without
      gradient (x_0 = Detach(B(x, 0))), re-noised at a low-noise student step t_hat, denoised with gradient,
      decoded by the VAE and scored by the pixel discriminator: L_adv (Eq. 10);
   c. L = L_DM + gan_weight L_adv (+ reward_weight * reward, the hook for the joint RL stage), then the fake score
      is pulled towards the generator in parameter space: psi <- lambda psi + (1 - lambda) theta (Eq. 11).
2. fake score (every step): ONLY its denoising loss on detached generator samples (it is no discriminator).
3. pixel discriminator (every step): its loss on decoded real latents vs decoded student samples (k-step chain).

Where the paper is silent or cannot be followed, and what this implementation does:
- Discriminator backbone: the paper uses a frozen SAM vision encoder with trainable heads. SAM cannot be shipped;
  `sdtoolkit.distill.adversarial.PixelDiscriminator` (a small spectrally-normalised conv net with a text projection,
  trained from scratch) stands in for it.
- Split between high- and low-noise steps: the paper gives no threshold for the DM loss (its RL stage samples the
  high-noise steps 999 and 749 of its 4-step student); we take the first ceil(k / 2) student steps as high-noise
  (999,749 | 499,249 for k = 4; 999 | 499 for k = 2). A 1-step student has no low-noise step: the pixel GAN is then
  applied to the one-step output itself.
- GAN loss form: Algorithm 1 says hinge for the discriminator while Eqs. 9-10 are written as log-likelihoods;
  `gan_loss="hinge"` (default, both sides) or `"softplus"` (non-saturating).
- Time range of L_DM and of the fake-score loss: not stated beyond DMD2's; we use DMD2's (U[0.02, 0.98] for L_DM,
  all of [0, 1] for the fake score). The fake-score target is written as eps in Sec. 3.3 but as x in Algorithm 1;
  we regress the teacher's native prediction (eps for SD), as Sec. 3.3 and DMD2 do.
- lambda_ema: its value is not given; default 0.99. The injection needs the fake score and the generator to share
  a parameterisation, so the default fake score here is a full copy (`--fake-score lora` requires
  `--fake-ema-decay 1`, i.e. no injection).
- Guidance, learning rates, TTUR: the paper's SDXL runs use TTUR 1-2; the rest follows this toolkit's DMD2 defaults.
- Joint RL (stage 2: DPO on a latent reward model's win/lose pairs at high-noise steps) is not implemented; set
  `method.reward_fn = f(x0_latents, cond) -> [B] rewards` with `--reward-weight > 0` to add a differentiable
  reward at the high-noise step (the place the paper applies RL).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sdtoolkit.core.config import AT_LEAST_1, FRACTION, NON_NEGATIVE, POSITIVE
from sdtoolkit.core.denoiser import Conditioning
from sdtoolkit.core.utils import frozen
from sdtoolkit.distill.adversarial import PixelDiscriminator, gan_discriminator_loss, gan_generator_loss, pooled_text
from sdtoolkit.distill.config import OptimizerSpec, TrainConfig
from sdtoolkit.distill.data import batch_conditioning, sample_latents
from sdtoolkit.distill.method import register_method

from .distribution_matching import DistributionMatchingConfig, DistributionMatchingMethod

__all__ = ["FlashDMD", "FlashDMDConfig"]


@dataclass
class FlashDMDConfig(DistributionMatchingConfig):
    """Flash-DMD stage 1 (Chen et al. 2025). Defaults: the paper where it says, DMD2 SD1.5 elsewhere."""

    BOUNDS = {
        "fake_ema_decay": FRACTION,
        "gan_weight": NON_NEGATIVE,
        "discriminator_learning_rate": POSITIVE,
        "discriminator_channels": AT_LEAST_1,
        "high_noise_steps": AT_LEAST_1,
        "reward_weight": NON_NEGATIVE,
    }

    fake_updates_per_generator: int = 1
    """TTUR: fake-score updates per generator update (Flash-DMD: 1 or 2, instead of DMD2's 5-10)."""
    fake_score: str = "full"
    """`full` (default: the EMA injection mixes generator and fake-score weights) or `lora` (needs
    fake_ema_decay = 1)."""
    fake_ema_decay: float = 0.99
    """lambda of the injection psi <- lambda psi + (1 - lambda) theta after each generator update (Eq. 11; the paper
    gives no value). 1 disables it."""
    gan_weight: float = 1e-2
    """Weight of the low-noise pixel-GAN loss in the generator update."""
    gan_loss: str = "hinge"
    """`hinge` (Algorithm 1) or `softplus` (non-saturating, Eqs. 9-10 as written)."""
    discriminator_learning_rate: float = 1e-4
    """Learning rate of the pixel discriminator."""
    discriminator_channels: int = 32
    """Width of the first layer of the pixel discriminator (the stand-in for the SAM encoder)."""
    high_noise_steps: int | None = None
    """How many of the student's first (high-noise) steps get the DM loss; None: ceil(k / 2)."""
    reward_weight: float = 0.0
    """Weight of the reward hook at the high-noise step (needs `method.reward_fn`; 0 = off)."""


@register_method
class FlashDMD(DistributionMatchingMethod):
    """Flash-DMD: DM loss at high-noise steps, pixel GAN at low-noise steps, EMA-stabilised fake score."""

    name = "flash-dmd"
    config_class = FlashDMDConfig
    data = "images"
    description = (
        "Flash-DMD's timestep-aware distillation (Chen et al. 2025): the distribution-matching loss only at the "
        "high-noise student steps, a pixel-space GAN (small stand-in discriminator on decoded images) only at the "
        "low-noise ones, a fake score trained only to denoise and pulled towards the generator by an EMA, and "
        "TTUR 1-2. Stage 2 (joint RL) is left as a reward hook."
    )

    reward_fn: Callable[[Tensor, Conditioning], Tensor] | None = None
    """Optional differentiable reward r(x0_latents, cond) -> [B], maximised at the high-noise step."""

    @classmethod
    def check_config(cls, config: FlashDMDConfig, train: TrainConfig) -> None:
        super().check_config(config, train)
        if config.gan_loss not in ("hinge", "softplus"):
            raise ValueError(f"--gan-loss {config.gan_loss!r}: choose hinge or softplus")
        if config.fake_score == "lora" and config.fake_ema_decay < 1.0:
            raise ValueError(
                f"--fake-score lora with --fake-ema-decay {config.fake_ema_decay}: the EMA injection of the generator "
                "into the fake score needs --fake-score full (or --fake-ema-decay 1 to train a LoRA without it)"
            )
        if config.high_noise_steps is not None and not 1 <= config.high_noise_steps <= config.num_steps:
            k = config.num_steps
            raise ValueError(f"--high-noise-steps {config.high_noise_steps}: choose 1 to --num-steps ({k})")

    # ------------------------------------------------------------------ networks

    def extra_modules(self) -> dict[str, nn.Module]:
        if self.config.gan_weight <= 0:
            return {}
        from sdtoolkit.models.loading import vae_scale_factor

        text_dim = pooled_text(self.training_data.conditioning([0])).shape[-1]  # the discriminator's text input
        teacher = self.teacher
        if teacher.pipeline is not None:
            factor = vae_scale_factor(teacher.pipeline)
        else:
            factor = 2 ** (len(teacher.vae.config.block_out_channels) - 1)
        resolution = self.latent_shape(1)[-1] * factor
        disc = PixelDiscriminator(text_dim, resolution, self.config.discriminator_channels)
        return {"discriminator": disc.to(self.accelerator.device)}

    def optimizers(self) -> list[OptimizerSpec]:
        c = self.config
        specs = [
            OptimizerSpec(
                "generator",
                list(self._built["student"].parameters()),
                lr=c.learning_rate,
                every=c.fake_updates_per_generator,
                **self._generator_adam(),
            ),
            OptimizerSpec("fake_score", self.scores.trainable_parameters(), lr=c.fake_learning_rate, **self._adam()),
        ]
        if "discriminator" in self._built:
            specs.append(
                OptimizerSpec(
                    "discriminator",
                    list(self._built["discriminator"].parameters()),
                    lr=c.discriminator_learning_rate,
                    betas=(0.0, 0.99),
                )
            )
        return specs

    def setup(self, models: dict[str, nn.Module]) -> None:
        super().setup(models)
        k = self.config.num_steps
        self.num_high = self.config.high_noise_steps or math.ceil(k / 2)

    # ------------------------------------------------------------------ losses

    def pixel_logits(self, latents: Tensor, cond: Conditioning) -> Tensor:
        images = self.teacher.decode(latents)
        return self.head(images, pooled_text(cond))

    def generator_loss(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        c = self.config
        cond = batch_conditioning(batch)
        B = cond.batch_size
        # a. distribution matching at a high-noise step
        index = int(torch.randint(self.num_high, ()).item())
        x, _ = self.student.generate(self.noise(B), cond, index=index)
        self.stash(batch, step, x)
        out = self.distribution_matching_loss(x, cond, self.uncond(B))
        loss = out["loss_dm"]
        # b. pixel GAN at a low-noise step, on the continued (detached) chain
        if c.gan_weight > 0:
            if self.num_high < self.student.num_steps:
                low = int(torch.randint(self.num_high, self.student.num_steps, ()).item())
                with torch.no_grad():
                    x_clean = x.detach()
                    for i in range(index + 1, self.student.num_steps):
                        x_clean = self.student.x0(self.student.renoise(x_clean, i), i, cond)
                x_low = self.student.x0(self.student.renoise(x_clean, low), low, cond)
            else:  # one-step student: no low-noise step exists
                x_low = x
            with frozen(self.head):
                out["loss_gan"] = gan_generator_loss(self.pixel_logits(x_low, cond), c.gan_loss)
            loss = loss + c.gan_weight * out["loss_gan"]
        # c. the reward hook (joint RL stage) at the high-noise step
        if c.reward_weight > 0 and self.reward_fn is not None:
            out["reward"] = self.reward_fn(x, cond).mean()
            loss = loss - c.reward_weight * out["reward"]
        return {"loss": loss, **out}

    def fake_score_loss(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        cond = batch_conditioning(batch)
        x = self.stashed(batch, step)
        if x is None:
            with torch.no_grad():
                x, _ = self.student.generate(self.noise(cond.batch_size), cond)
        loss = self.scores.fake_denoising_loss(x, cond)
        return {"loss": loss, "loss_denoise": loss}

    def discriminator_loss(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        cond = batch_conditioning(batch)
        with torch.no_grad():
            fake = self.student.sample(self.noise(cond.batch_size), cond)
            real = sample_latents(batch)
        logits_real, logits_fake = self.pixel_logits(real, cond), self.pixel_logits(fake, cond)
        loss = gan_discriminator_loss(logits_real, logits_fake, self.config.gan_loss)
        return {"loss": loss, "d_real": logits_real.mean().detach(), "d_fake": logits_fake.mean().detach()}

    def loss(self, name: str, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        losses = {"generator": self.generator_loss, "fake_score": self.fake_score_loss}
        losses["discriminator"] = self.discriminator_loss
        if name not in losses:
            raise KeyError(f"Flash-DMD has no optimizer {name!r}; it has {', '.join(losses)}")
        return losses[name](batch, step)

    def after_step(self, name: str, step: int) -> None:
        """Eq. 11: after each generator update, psi <- lambda psi + (1 - lambda) theta (full fake score)."""
        super().after_step(name, step)
        decay = self.config.fake_ema_decay
        if name != "generator" or decay >= 1.0:
            return
        student = self.unwrapped("student")
        fake = self.unwrapped("fake_score")
        with torch.no_grad():
            for psi, theta in zip(fake.parameters(), student.parameters()):
                psi.lerp_(theta.to(psi.dtype), 1.0 - decay)
