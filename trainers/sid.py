"""SiD: score identity distillation (Zhou et al. 2024, "Score identity Distillation: Exponentially Fast Distillation
of Pretrained Diffusion Models for One-Step Generation", ICML 2024) with the long-and-short guidance of SiD-LSG
(Zhou et al. 2024b, "Long and Short Guidance in Score identity Distillation for One-Step Text-to-Image
Generation"). Data-free: prompts only.

Per global step (fake score first, then the generator, as SiD's Algorithm 1):

1. fake score: x = G(z) without gradient; its denoising loss at t ~ U[t_min, t_max] through its OWN CFG with scale
   kappa_1 (`fake_train_guidance`, "long guidance"; with kappa_1 != 1, 10 % of the prompts are dropped to "" so the
   fake score also learns the unconditional branch);
2. generator: x_g = G(z) with gradient; x_t = alpha_t x_g + sigma_t eps (with gradient);
   y_f = fake(x_t) with CFG kappa_2 = kappa_3 (`fake_guidance`), y_r = teacher(x_t) with CFG kappa_4
   (`real_guidance_scale`), both with gradients into x_t (the teacher's and the fake score's weights stay fixed);
   L = sum (y_r - y_f) * ((y_r - x_g) - alpha (y_r - y_f)) / mean|x_g - y_r| (Eq. 14), NaN samples masked.

Option (not SiD's): DMD v1's regression of the generator's output from stored noises onto the teacher's own ODE
outputs (`--regression-weight`, on SiD's per-sample-sum scale). It keeps the method data-free (the pairs come from
the teacher) and anchors the noise -> image map, against the view collapse measured in benchmarks/RESULTS.md.

Deviations: the generator input is pure noise z at the student's timestep (999 for one step by default;
`--generator-timestep 625` gives SiD-LSG's timestep) rather than SiD-LSG's sigma_625 z, so that the exported stock
pipeline (which starts from z) samples exactly what was trained; the fake score is by default a LoRA on the
teacher's backbone (`--fake-score full` gives the paper's copy).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sdtoolkit.core.config import NON_NEGATIVE, Range
from sdtoolkit.core.denoiser import Conditioning
from sdtoolkit.distill.config import OptimizerSpec
from sdtoolkit.distill.data import batch_conditioning
from sdtoolkit.distill.method import register_method
from sdtoolkit.distill.score_distillation import drop_conditioning, finite_mask, sample_timesteps, sid_generator_loss

from .distribution_matching import DistributionMatchingMethod, RegressionConfig

__all__ = ["SiD", "SiDConfig"]


@dataclass
class SiDConfig(RegressionConfig):
    """SiD / SiD-LSG; defaults are SiD-LSG's SD1.5 run (`run_sid.sh`)."""

    BOUNDS = {
        "alpha": NON_NEGATIVE,
        "fake_guidance": NON_NEGATIVE,
        "fake_train_guidance": NON_NEGATIVE,
        "prompt_dropout": Range(0, 1, high_open=True),
    }

    alpha: float = 1.0
    """alpha of the SiD loss (SiD: 1.2 on ImageNet/CIFAR; SiD-LSG text-to-image: 1.0)."""
    learning_rate: float = 1e-6
    """Generator learning rate (SiD-LSG: 1e-6)."""
    fake_learning_rate: float = 1e-6
    """Fake-score learning rate (SiD-LSG: 1e-6)."""
    fake_updates_per_generator: int = 1
    """SiD alternates one fake-score and one generator update."""
    real_guidance_scale: float = 2.0
    """kappa_4: CFG scale of the teacher in the generator loss (SiD-LSG: 2 for SD1.5)."""
    fake_guidance: float = 2.0
    """kappa_2 = kappa_3: CFG scale of the fake score in the generator loss (SiD-LSG: 2)."""
    fake_train_guidance: float = 2.0
    """kappa_1: CFG scale through which the fake score is trained (SiD-LSG: 2; 1 = plain conditional)."""
    prompt_dropout: float = 0.1
    """Fraction of prompts replaced by "" in the fake-score update when kappa_1 or kappa_2 != 1 (SiD-LSG: 0.1)."""
    min_t: float = 0.02
    """Lowest time of both losses as a fraction of the schedule (SiD-LSG: t >= 20 of 1000)."""
    max_t: float = 0.98
    """Highest time of both losses (SiD-LSG: t < 980 of 1000)."""


@register_method
class SiD(DistributionMatchingMethod):
    """SiD / SiD-LSG: score-identity generator loss with gradients through both scores, data-free."""

    name = "sid"
    config_class = SiDConfig
    data = "prompts"
    description = (
        "SiD (Zhou et al. 2024) with SiD-LSG's long and short guidance: a data-free 1-4-step generator trained "
        "with the score-identity loss (alpha), gradients through the teacher's and the fake score's forwards, "
        "NaN-sample masking; the fake score is by default a LoRA on the teacher's own backbone."
    )

    def optimizers(self) -> list[OptimizerSpec]:
        c = self.config
        every = c.fake_updates_per_generator
        return [
            OptimizerSpec("fake_score", self.scores.trainable_parameters(), lr=c.fake_learning_rate, **self._adam()),
            OptimizerSpec(
                "generator",
                list(self._built["student"].parameters()),
                lr=c.learning_rate,
                every=every,
                offset=every - 1,
                **self._generator_adam(),
            ),
        ]

    def fake_score_loss(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        return self.fake_score_terms(batch)[0]

    def fake_score_terms(self, batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor | Conditioning]]:
        """The fake score's denoising loss on fresh generator samples, and what it used (`x`, `cond` before prompt
        dropout, `t`, `eps`) for a subclass that adds terms on the same noisy samples (SiDA's discriminator)."""
        c = self.config
        cond = batch_conditioning(batch)
        B = cond.batch_size
        uncond = self.uncond(B)
        with torch.no_grad():
            x, _ = self.student.generate(self.noise(B), cond)
        t = sample_timesteps(self.teacher.schedule, B, c.min_t, c.max_t, device=x.device)
        eps = torch.randn_like(x)
        fake_cond = cond
        if c.fake_train_guidance != 1 or c.fake_guidance != 1:
            fake_cond = drop_conditioning(cond, uncond, c.prompt_dropout)
        loss = self.scores.fake_denoising_loss(
            x, fake_cond, uncond=uncond, guidance_scale=c.fake_train_guidance, t=t, eps=eps
        )
        loss = _nan_unless(finite_mask(x).any(), loss)
        return {"loss": loss, "loss_denoise": loss}, {"x": x, "cond": cond, "t": t, "eps": eps}

    def generator_loss(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        return self.generator_terms(batch)[0]

    def generator_terms(self, batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor | Conditioning]]:
        """SiD's generator loss, and what it used (`x_g`, `x_t`, `t`, `cond`, `y_real`, the kept-sample mask) for a
        subclass that adds terms on the same noisy samples (SiDA's adversarial loss)."""
        c = self.config
        cond = batch_conditioning(batch)
        B = cond.batch_size
        uncond = self.uncond(B)
        x_g, index = self.student.generate(self.noise(B), cond)
        t = sample_timesteps(self.teacher.schedule, B, c.min_t, c.max_t, device=x_g.device)
        x_t = self.teacher.add_noise(x_g, torch.randn_like(x_g), t)
        with self.scores.fake_frozen():
            y_fake = self.scores.fake(x_t, t, cond, uncond=uncond, guidance_scale=c.fake_guidance).x0
            y_real = self.scores.real(x_t, t, cond, uncond=uncond, guidance_scale=c.real_guidance_scale, grad=True).x0
            loss, keep = sid_generator_loss(x_g, y_real, y_fake, alpha=c.alpha)
            loss = _nan_unless(keep.any(), loss)
        out = {}
        if c.regression_weight > 0:  # on SiD's per-sample-sum scale
            out["loss_regression"] = self.regression_loss(B, reduction="sum")
            loss = loss + c.regression_weight * out["loss_regression"]
        out |= {"loss": loss, "kept": keep.float().mean(), "student_step": torch.tensor(float(index))}
        return out, {"x_g": x_g, "x_t": x_t, "t": t, "cond": cond, "y_real": y_real, "keep": keep}

    def loss(self, name: str, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        if name == "generator":
            return self.generator_loss(batch, step)
        if name == "fake_score":
            return self.fake_score_loss(batch, step)
        raise KeyError(f"SiD has no optimizer {name!r}; it has 'fake_score' and 'generator'")


def _nan_unless(any_kept: Tensor, loss: Tensor) -> Tensor:
    """`loss`, or NaN when SiD's NaN-sample masking dropped every sample: a batch with nothing finite must not log
    a converged-looking 0 (the loop's non-finite guard then skips the update and counts it). The gradient stays
    finite (zero through the NaN branch). No host sync."""
    return torch.where(any_kept, loss, torch.full_like(loss, float("nan")))
