"""Latent adversarial distillation alone (`sdtoolkit distill ladd`): the sCM trainer (`sdtoolkit.trainers.scm`) with
its adversarial loss on and the sCM term off, as SANA-Sprint's LADD-only path. The LADD maths (heads on the frozen
teacher's blocks, hinge loss, re-noising) is `sdtoolkit.distill.ladd`."""

from __future__ import annotations

from dataclasses import dataclass

from sdtoolkit.trainers.scm import SCM, SCMConfig

from sdtoolkit.distill.method import register_method

__all__ = ["LADD", "LADDConfig"]


@dataclass
class LADDConfig(SCMConfig):
    """Latent adversarial distillation alone (LADD; SANA-Sprint's LADD-only path, `scm_loss: false`): the sCM
    trainer with the adversarial loss on and the sCM term off; `--scm-weight 1 --adversarial-weight 0.5` is
    `distill scm --adversarial`."""

    adversarial: bool = True
    """LADD's adversarial loss (always on for `distill ladd`)."""
    scm_weight: float = 0.0
    """Weight of the sCM loss (0: LADD alone, SANA-Sprint's `total_loss = adv_loss`)."""
    adversarial_weight: float = 1.0
    """Weight of the adversarial loss (1: SANA-Sprint's LADD-only loss is the adversarial loss itself)."""


@register_method
class LADD(SCM):
    """`sdtoolkit distill ladd`: the student trained by LADD alone (sCM's trainer, sampler and export)."""

    name = "ladd"
    config_class = LADDConfig
    description = (
        "Latent adversarial distillation (LADD, Sauer et al. 2024; as SANA-Sprint, Chen et al. 2025): the student's "
        "clean estimate, re-noised, is judged by heads on the frozen teacher's blocks (hinge loss; heads and "
        "student alternate); half of the time from pure noise. The sCM trainer with --adversarial and --scm-weight "
        "0 (--scm-weight 1 --adversarial-weight 0.5 is sCM + LADD). Needs real latents (--data); exported as scm's."
    )
    config: LADDConfig

    @classmethod
    def check_config(cls, config: LADDConfig, train) -> None:
        if not config.adversarial:
            raise ValueError(
                "--no-adversarial: the adversarial loss is what `distill ladd` trains (always on); for the sCM loss "
                "alone use `sdtoolkit distill scm`"
            )
        super().check_config(config, train)
