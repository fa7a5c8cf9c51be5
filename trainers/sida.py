"""SiDA: adversarial score identity distillation (Zhou et al. 2025, "Adversarial Score identity Distillation:
Rapidly Surpassing the Teacher in One Step", ICLR 2025): SiD (trainers/sid.py) plus a GAN whose discriminator
shares the fake score's encoder, trained on real images.

Per global step (SiDA's training loop; everything else as SiD):

1. fake score and discriminator: x = G(z) without gradient; t ~ U[min_t, max_t] and one eps for both real and fake;
   SiD's denoising loss of the fake score at x_t = alpha_t x + sigma_t eps, plus
   `discriminator_weight` * [softplus(D(x_t, t)) + softplus(-D(x_real_t, t))] / 2 with
   x_real_t = alpha_t x_real + sigma_t eps (the same t and eps; SiDA's `fakescore_discriminator_share_encoder_loss`),
   D = a head on the fake score's bottleneck;
2. generator: SiD's loss L_SiD at x_t = alpha_t x_g + sigma_t eps, and on the SAME x_t the non-saturating GAN loss
   L_adv = mean_b [C H W softplus(-D(x_t, t)) / w_b] with SiD's per-sample w_b = mean|x_g - y_real| (SiDA scales
   its per-element BCE by the number of elements and 1/w so that it is on L_SiD's per-sample-sum scale);
   L = (1 - lambda) L_SiD + lambda L_adv, lambda = `adversarial_weight` (SiDA: 0.5 / 0.5).

Where this differs from SiDA, and why:
- D is DMD2's small classification head on the UNet mid-block output (`BottleneckHead`, one logit per sample); SiDA
  reads its EDM2 encoder's output map directly as a map of logits, which a Stable Diffusion mid block (features,
  not logits) does not provide;
- warm-up: SiDA holds the generator for its first 100k images and adds the GAN term after 200k; a CPU run here
  sees 25-50k images in all, so the generator starts at once and the GAN term after `adversarial_start` steps;
- the discriminator loss is not weighted in t (SiDA weights it by EDM's lambda(sigma), the weight of its own x0
  denoising loss; the fake score here is trained with the Denoiser's unweighted native-target MSE, and the
  discriminator term follows it unweighted).
With `--regression-weight` (inherited from SiD) the regression term is part of L_SiD above (logged `loss_sid`).
Unlike SiD, SiDA is not data-free: it reads real images (`--data`, or builtin:shapes renders).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sdtoolkit.core.config import FRACTION, NON_NEGATIVE
from sdtoolkit.core.denoiser import Conditioning
from sdtoolkit.core.utils import frozen
from sdtoolkit.distill.adversarial import bottleneck_features, bottleneck_head, gan_discriminator_loss
from sdtoolkit.distill.config import OptimizerSpec
from sdtoolkit.distill.data import sample_latents
from sdtoolkit.distill.method import register_method

from .sid import SiD, SiDConfig

__all__ = ["SiDA", "SiDAConfig", "sida_adversarial_loss"]


@dataclass
class SiDAConfig(SiDConfig):
    """SiDA: SiD's settings plus its adversarial weights (defaults: SiDA's)."""

    BOUNDS = {"adversarial_weight": FRACTION, "discriminator_weight": NON_NEGATIVE, "adversarial_start": NON_NEGATIVE}

    adversarial_weight: float = 0.5
    """lambda: the generator loss is (1 - lambda) L_SiD + lambda L_adv (SiDA: 0.5; 0 = plain SiD with a trained
    but unused discriminator)."""
    discriminator_weight: float = 1.0
    """Weight of the discriminator's loss in the fake-score update (SiDA: 1)."""
    adversarial_start: int = 0
    """Global step from which L_adv enters the generator loss (plain SiD before it, while the discriminator already
    trains). SiDA waits 200k images (12,500 steps at batch 16); 0 starts at once."""


def sida_adversarial_loss(logits_fake: Tensor, w: Tensor, numel: int) -> Tensor:
    """SiDA's generator GAN term: per sample `numel * softplus(-D(x_t)) / w` (BCE against "real", on the scale of
    SiD's per-sample sum over `numel` elements, divided by SiD's normaliser `w`), averaged over the batch.

    Args:
        logits_fake: `[B]` discriminator logits of the noisy generator samples.
        w: `[B]` SiD's normaliser mean|x_g - y_real| per sample (no gradient).
        numel: elements per sample (C * H * W).
    """
    per_sample = numel * torch.nn.functional.softplus(-logits_fake.float()) / w.float()
    return per_sample.mean() if per_sample.numel() > 0 else per_sample.sum()


@register_method
class SiDA(SiD):
    """SiDA: SiD plus a GAN on the fake score's bottleneck, trained on real images."""

    name = "sida"
    config_class = SiDAConfig
    data = "images"
    description = (
        "SiDA (Zhou et al. 2025): SiD's score-identity generator loss plus an adversarial loss whose discriminator "
        "is a head on the fake score's encoder, trained on real images at the same noise level as the fake ones "
        "(0.5 / 0.5 mix); not data-free (needs --data, or the builtin:shapes renders)."
    )

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"discriminator": bottleneck_head(self.teacher).to(self.accelerator.device)}

    def optimizers(self) -> list[OptimizerSpec]:
        specs = super().optimizers()
        fake = specs[0]  # the head trains with the fake score (SiDA: one optimizer for the shared encoder)
        fake.params = list(fake.params) + list(self._built["discriminator"].parameters())
        return specs

    def discriminator_logits(self, x_t: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        """`[B]` logits of the head on the fake score's mid-block output at (x_t, t)."""
        scores = self.scores
        with scores.fake_context():
            h = bottleneck_features(scores.fake_denoiser, x_t, t, cond)
        return self.head(h)

    def fake_score_loss(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        c = self.config
        out, used = self.fake_score_terms(batch)
        x, t, eps, cond = used["x"], used["t"], used["eps"], used["cond"]
        denoiser = self.scores.fake_denoiser
        x_real = sample_latents(batch)
        logits_fake = self.discriminator_logits(denoiser.add_noise(x, eps, t), t, cond)
        logits_real = self.discriminator_logits(denoiser.add_noise(x_real, eps, t), t, cond)
        out["loss_discriminator"] = gan_discriminator_loss(logits_real, logits_fake) / 2
        out["d_real"] = torch.sigmoid(logits_real).mean().detach()
        out["d_fake"] = torch.sigmoid(logits_fake).mean().detach()
        out["loss"] = out["loss_denoise"] + c.discriminator_weight * out["loss_discriminator"]
        return out

    def generator_loss(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        c = self.config
        out, used = self.generator_terms(batch)
        keep = used["keep"]
        x_g, y_real = used["x_g"][keep], used["y_real"][keep]
        with torch.no_grad():
            dims = tuple(range(1, x_g.ndim))
            w = (x_g - y_real).abs().mean(dim=dims).clamp_min(1e-5)
        with self.scores.fake_frozen(), frozen(self.head):
            logits = self.discriminator_logits(used["x_t"][keep], used["t"][keep], used["cond"][keep])
        out["loss_sid"] = out["loss"]
        out["loss_adversarial"] = sida_adversarial_loss(logits, w, x_g[0].numel() if len(x_g) else 1)
        lam = c.adversarial_weight if step >= c.adversarial_start else 0.0
        out["loss"] = (1 - lam) * out["loss_sid"] + lam * out["loss_adversarial"]
        return out
