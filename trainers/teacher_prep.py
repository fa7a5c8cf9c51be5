"""Teacher preparation for continuous-time consistency distillation, as SANA-Sprint does it (Chen et al. 2025; its
released prepared teachers are `SANA_Sprint_*_teacher`): `sdtoolkit distill prepare-teacher`.

sCM's tangent differentiates the network along the teacher's ODE (`sdtoolkit.distill.scm`). To keep that derivative
tame at scale, SANA-Sprint changes the teacher in two ways before distilling (a write-up of its recipe reports
gradient norms above 1e3 without them, and about 5k fine-tune iterations):

1. **QK-normalisation**: RMS normalisation of queries and keys in every attention (SD3.5's `qk_norm="rms_norm"`,
   SANA-Sprint's `"rms_norm_across_heads"`), which bounds the attention logits and so the JVP's tangents. Its scales
   start at 1, which changes the network: the teacher must be fine-tuned after adding it.
2. **Dense time embedding**: embed t instead of 1000 t (SANA-Sprint's `timestep_norm_scale_factor`), so that the
   time embedding's derivative is not 1000 times steeper than the ODE's. `--dense-time` fine-tunes the teacher
   with the flow time t as its timestep input and exports it with a stock scheduler of `num_train_timesteps=1`,
   under which stock SD3 and SANA pipelines feed t (with `sigmas` in the call: that scheduler's own grid
   degenerates; `FlowSchedule.dense`); `distill scm` from such a teacher gives the student the same dense time and
   the exact JVP. A SANA student of an unprepared teacher can also start dense (`distill scm --dense-time`, the
   default for SANA, because SanaSprintPipeline feeds t). Without it, the sCM trainer smooths the time derivative
   of a 1000 t embedding by a difference instead (`--time-difference`).

This method is the fine-tune: the teacher's network with the change, trained by the teacher's own flow-matching
loss (Liu et al. 2022; Esser et al. 2024, with SD3's logit-normal time density)

    L = E_{t, x0, eps} || v_theta((1 - t) x0 + t eps, t, c) - (eps - x0) ||^2,  t = sigmoid(n), n ~ N(m, s^2)

on real latents, with caption dropout so that classifier-free guidance keeps working. It exports the prepared
teacher as the family's own stock pipeline with the teacher's sampler and guidance as its defaults; pass that folder
to `distill scm --teacher`. A prepared teacher of the embedded shapes world keeps its built-in data and validation.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdtoolkit.core.consistency import ddim_jump
from sdtoolkit.core.denoiser import Conditioning
from sdtoolkit.core.families import family_for
from sdtoolkit.core.sampling import full_time
from sdtoolkit.distill.config import MethodConfig, OptimizerSpec, TrainConfig
from sdtoolkit.distill.data import batch_conditioning, sample_latents
from sdtoolkit.distill.method import DistillationMethod, flow_export_fields, register_method
from sdtoolkit.distill.score_distillation import drop_conditioning
from sdtoolkit.distill.students import QK_NORM, qk_normed_network
from sdtoolkit.models.loading import teacher_network

__all__ = ["PrepareTeacher", "PrepareTeacherConfig", "flow_matching_loss", "logit_normal_time"]

FLOW_FAMILIES = ("sd3", "sana", "flux")
"""Families whose networks are trained by flow matching (the ones this preparation fine-tunes)."""

DENSE_TIME_FAMILIES = ("sd3", "sana")
"""Families whose stock pipelines feed the scheduler's timestep (sigma * num_train_timesteps) to the network as it
is, so that a scheduler with num_train_timesteps=1 feeds the dense time t (`--dense-time`)."""


def logit_normal_time(n: int, mean: float = 0.0, std: float = 1.0, device=None) -> Tensor:
    """t = sigmoid(u), u ~ N(mean, std^2): SD3's logit-normal training-time density (Esser et al. 2024; m = 0,
    s = 1 by default). `[n]` float32 in (0, 1)."""
    return torch.sigmoid(torch.randn(n, device=device) * std + mean)


def flow_matching_loss(velocity: Tensor, x0: Tensor, eps: Tensor) -> Tensor:
    """|| v_theta - (eps - x0) ||^2 averaged over elements: the conditional flow-matching loss with the rectified
    flow path x_t = (1 - t) x0 + t eps (Liu et al. 2022; Esser et al. 2024, Eq. 1), uniform weight."""
    return F.mse_loss(velocity.float(), (eps - x0).float())


@dataclass
class PrepareTeacherConfig(MethodConfig):
    """SANA-Sprint's teacher preparation of a flow-matching teacher: QK-normalisation added, then a short fine-tune
    with the teacher's own flow-matching loss."""

    dense_time: bool = False
    """Fine-tune the teacher to embed the flow time t in [0, 1] instead of 1000 t (SANA-Sprint's dense time
    embedding); the export's scheduler then has num_train_timesteps=1 and its call passes `sigmas`. SD3 and SANA
    (FLUX's transformer multiplies its timestep by 1000 inside)."""
    qk_norm: bool = True
    """Add RMS normalisation of queries and keys to every attention (SD3: `rms_norm` as SD3.5; SANA:
    `rms_norm_across_heads` as SANA-Sprint; FLUX already has it). False: fine-tune the network as it is (the
    ablation's control)."""
    lr: float = 5e-5
    """AdamW learning rate of the fine-tune (our choice for the tiny embedded teacher; SANA-Sprint does not publish
    its preparation's)."""
    lr_warmup_steps: int = 0
    """Linear learning-rate warm-up steps."""
    adam_weight_decay: float = 0.0
    """AdamW weight decay."""
    logit_mean: float = 0.0
    """Mean m of the logit-normal time density (SD3: 0)."""
    logit_std: float = 1.0
    """Scale s of the logit-normal time density (SD3: 1)."""
    caption_dropout: float = 0.1
    """Probability of replacing a caption by the empty prompt's conditioning (keeps classifier-free guidance)."""
    sample_steps: int = 28
    """Euler steps of validation, sample grids and the exported pipeline's default call (builtin:shapes-flow's card
    and SD3's stock default: 28)."""
    guidance_scale: float = 5.0
    """CFG scale of validation, grids and the export's default call (builtin:shapes-flow's card: 5; SD3's stock
    default is 7)."""


@register_method
class PrepareTeacher(DistillationMethod):
    """`sdtoolkit distill prepare-teacher`: a flow teacher fine-tuned with QK-normalisation (SANA-Sprint's teacher
    preparation), exported as its family's stock pipeline."""

    name = "prepare-teacher"
    config_class = PrepareTeacherConfig
    data = "images"
    description = (
        "SANA-Sprint's teacher preparation for sCM (Chen et al. 2025): add RMS QK-normalisation to every attention "
        "of a flow-matching teacher (SD3, SANA; FLUX has it) and fine-tune it with its own flow-matching loss "
        "(logit-normal times, 10% caption dropout). Exports the family's stock pipeline (Euler, --sample-steps, "
        "--guidance-scale); pass it to `distill scm --teacher`. --dense-time: the network embeds t, not 1000 t."
    )
    config: PrepareTeacherConfig

    @classmethod
    def check_config(cls, config: PrepareTeacherConfig, train: TrainConfig) -> None:
        checks = [
            ("--lr", config.lr, config.lr > 0, "must be > 0"),
            ("--lr-warmup-steps", config.lr_warmup_steps, config.lr_warmup_steps >= 0, "must be >= 0"),
            ("--adam-weight-decay", config.adam_weight_decay, config.adam_weight_decay >= 0, "must be >= 0"),
            ("--logit-mean", config.logit_mean, math.isfinite(config.logit_mean), "must be a finite number"),
            ("--logit-std", config.logit_std, 0 < config.logit_std < math.inf, "must be > 0 (SD3: 1)"),
            ("--caption-dropout", config.caption_dropout, 0 <= config.caption_dropout < 1, "must lie in [0, 1)"),
            ("--sample-steps", config.sample_steps, 1 <= config.sample_steps <= 1000, "must lie in [1, 1000]"),
            ("--guidance-scale", config.guidance_scale, 1 <= config.guidance_scale < math.inf, "must be >= 1"),
        ]
        for flag, value, ok, why in checks:
            if not ok:
                raise ValueError(f"{flag} {value} {why}")

    @classmethod
    def check_teacher(cls, config: PrepareTeacherConfig, train: TrainConfig, pipeline: Any) -> None:
        network = teacher_network(pipeline)
        family = family_for(network)
        if family.name not in FLOW_FAMILIES:
            raise ValueError(
                f"prepare-teacher fine-tunes flow-matching teachers (SD3, SANA, FLUX); the {family.name} "
                f"{type(network).__name__} is a VP teacher: distil it with `distill scm` directly (its time "
                "derivative is smoothed by --time-difference)"
            )
        if config.dense_time and family.name not in DENSE_TIME_FAMILIES:
            raise ValueError(
                f"--dense-time: the {family.name} {type(network).__name__} multiplies its timestep input by 1000 "
                "inside, so its stock pipeline cannot feed it a dense time "
                f"(families: {', '.join(DENSE_TIME_FAMILIES)})"
            )
        if config.qk_norm and family.name not in QK_NORM and not _has_qk_norm(network):
            raise ValueError(
                f"--qk-norm: no QK-normalisation to add to the {family.name} {type(network).__name__} "
                f"(families: {', '.join(sorted(QK_NORM))}); pass --no-qk-norm to fine-tune it as it is"
            )

    # ------------------------------------------------------------------ networks

    def build(self) -> dict[str, nn.Module]:
        network = self.teacher.base_model
        if self.config.qk_norm and not _has_qk_norm(network):
            student = qk_normed_network(network, self.teacher.family.name)
        else:
            student = copy.deepcopy(network).float().requires_grad_(True)
        self.teacher.freeze()
        self.built = {"student": student.to(self.accelerator.device).train()}
        return self.built

    def optimizers(self) -> list[OptimizerSpec]:
        config = self.config
        params = [p for p in self.built["student"].parameters() if p.requires_grad]
        spec = OptimizerSpec(
            "student", params, lr=config.lr, weight_decay=config.adam_weight_decay, warmup_steps=config.lr_warmup_steps
        )
        return [spec]

    def setup(self, models: dict[str, nn.Module]) -> None:
        super().setup(models)
        self.student = self._prepared(models["student"])
        self.sampler = self._prepared(self.accelerator.unwrap_model(models["student"]))

    def _prepared(self, model: nn.Module):
        """The prepared network as a Denoiser: the teacher's, with the timestep input t (not 1000 t) when dense."""
        denoiser = self.teacher.with_model(model)
        if self.config.dense_time:
            denoiser = denoiser.replace_schedule(self.teacher.schedule.replace(num_train_timesteps=1))
        return denoiser

    def _guidance_input(self, n: int, device: torch.device) -> Tensor | None:
        """FLUX.1-dev's distilled guidance input (its stock pipeline feeds guidance_scale); None elsewhere."""
        if self.teacher.guidance_input != "scale":
            return None
        return torch.full((n,), self.config.guidance_scale, device=device)

    # ------------------------------------------------------------------ the step

    def loss(self, name: str, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        config, device = self.config, self.accelerator.device
        x0 = sample_latents({k: v.to(device) for k, v in batch.items() if k.startswith("latent_")})
        n = x0.shape[0]
        cond = batch_conditioning(batch).to(device)
        cond = drop_conditioning(cond, self.training_data.uncond(n), config.caption_dropout)
        eps = torch.randn_like(x0)
        t = logit_normal_time(n, config.logit_mean, config.logit_std, device=device)
        x_t = self.student.add_noise(x0, eps, t)
        velocity = self.student.model_output(x_t, t, cond, guidance_embed=self._guidance_input(n, device))
        loss = flow_matching_loss(velocity, x0, eps)
        return {"loss": loss}

    # ------------------------------------------------------------------ sampling and saving

    def sampling_times(self) -> list[float]:
        """The stock FlowMatch Euler grid of `sample_steps`, noisiest first, then 0 (the teacher's grid also for a
        dense-time network, whose own stock grid degenerates: `FlowSchedule.dense`)."""
        return [*self.teacher.schedule.student_timesteps(self.config.sample_steps), 0.0]

    def sample(self, cond: Conditioning, uncond: Conditioning, generator: torch.Generator) -> Tensor:
        """Euler steps of the probability-flow ODE with CFG (what the exported stock pipeline's default call runs)."""
        shape = self.latent_shape(cond.batch_size)
        device = self.accelerator.device
        x = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
        times = self.sampling_times()
        embed = self._guidance_input(shape[0], device)
        guidance = {} if embed is not None else {"uncond": uncond, "guidance_scale": self.config.guidance_scale}
        with torch.no_grad():
            for t, t_next in zip(times[:-1], times[1:]):
                prediction = self.sampler.predict(x, full_time(t, x), cond, guidance_embed=embed, **guidance)
                x = ddim_jump(self.sampler, prediction, full_time(t_next, x))
        return x

    def save_student(self, folder: Path) -> Any:
        from sdtoolkit.pipelines.export import ExportSpec

        family, config = self.teacher.family, self.config
        network = self.unwrapped("student")
        network.save_pretrained(Path(folder) / family.component, safe_serialization=True)
        changes = ["QK-normalisation added"] if config.qk_norm else []
        if config.dense_time:
            changes.append("a dense time input (t, not 1000 t: the scheduler's num_train_timesteps is 1)")
        fields = flow_export_fields(self, self.sampling_times()[:-1], stochastic=False)
        if config.dense_time:
            fields["scheduler_config"] = {**fields["scheduler_config"], "num_train_timesteps": 1}
        return ExportSpec(
            method=self.name,
            student=family.component,
            num_inference_steps=config.sample_steps,
            guidance_scale=config.guidance_scale,
            notes=f"A teacher prepared for sCM as SANA-Sprint (Chen et al. 2025): "
            f"{' and '.join(changes) or 'no architecture change'}, fine-tuned with the flow-matching loss. Sample it "
            "like its teacher (Euler steps with classifier-free guidance).",
            **fields,
        )


def _has_qk_norm(network: nn.Module) -> bool:
    """Whether the network's attentions already normalise queries and keys (FLUX; SD3.5; a prepared teacher)."""
    return any(getattr(m, "norm_q", None) is not None for m in network.modules())
