"""Latent consistency distillation: LCM (Luo et al. 2023, Algorithm 1), LCM-LoRA (Luo et al. 2023b) and phased
consistency (PCM, Wang et al. 2024) on the shared Denoiser, in the shared training loop.

One step of Algorithm 1 ("LCD"), as `LCM.loss` runs it:

1. draw real latents z ~ q(z | x) from the cached VAE posteriors;
2. draw n ~ U{1..N} on the skipping-step DDIM grid t_1 < ... < t_N (t_i = i k - 1, k = T / N; LCM Sec. 4.3,
   N = 50, k = 20 for T = 1000) and set t_{n+k} = t_n on the grid, t_n its predecessor (k train steps lower);
3. draw the guidance w ~ U[w_min, w_max] (LCM's w: x0 = x0_c + w (x0_c - x0_u), i.e. diffusers' scale w + 1);
4. noise: z_{t_{n+k}} = alpha z + sigma eps;
5. online student f_theta(z_{t_{n+k}}, w, c, t_{n+k}) = c_skip z + c_out x0_theta (LCM Sec. 4.1; for PCM the DDIM
   jump to the edge of the phase of t_{n+k});
6. the teacher's guided prediction and one DDIM step t_{n+k} -> t_n give z_hat_{t_n} (the augmented PF-ODE solver
   Psi, LCM Sec. 4.2);
7. target f_theta^-(z_hat_{t_n}, w, c, t_n) without gradient, from the EMA target network (full student, EMA
   decay 0.95) or the online student itself (LCM-LoRA);
8. loss d(f_theta, f_theta^-): L2 or pseudo-Huber (c = 0.001); the loop backpropagates, steps, and (full
   student) updates the EMA target.

Students: a full UNet copy (with a w-embedding `time_cond_proj_dim=256` by default, as LCM) or a LoRA on the
teacher's own UNet (`unet.add_adapter(LoraConfig(...))`, the teacher = the same UNet with adapters disabled,
`Denoiser.adapters_disabled()`). Transformer teachers (SD3, SANA, FLUX; `sdtoolkit.core.families`) give a full
copy without w-embedding (they have no `time_cond_proj_dim`; `--w-embedding` is refused), or a LoRA on the family's
`lora_target_modules`; a guidance-distilled network (FLUX.1-dev) takes w through its own guidance input (w + 1).
Flow students export to the family's stock pipeline with a FlowMatch Euler scheduler (`flow_export_fields`).
`--phases N>1` switches to PCM's parameterisation and, with `--adversarial`, adds its hinge GAN loss
(`sdtoolkit.distill.adversarial`); `sdtoolkit distill pcm` (`sdtoolkit.trainers.pcm`) is this trainer with PCM's
defaults. The consistency maths is `sdtoolkit.core.consistency`, the samplers `sdtoolkit.core.sampling`.
Schedules, prediction types and CFG all go through the Denoiser.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sdtoolkit.core.config import AT_LEAST_1, FRACTION, NON_NEGATIVE, POSITIVE, SCHEDULE_STEPS
from sdtoolkit.core.consistency import (
    consistency_distance,
    ddim_grid,
    ddim_jump,
    inference_timesteps,
    lcm_boundary_scalings,
    lcm_consistency_function,
    phase_edge_of,
    phase_edges,
    pseudo_huber,
)
from sdtoolkit.core.denoiser import Conditioning, Denoiser, Prediction
from sdtoolkit.core.families import family_for
from sdtoolkit.core.families.sd import UNET_LORA_TARGETS
from sdtoolkit.core.sampling import lcm_sample, phased_sample
from sdtoolkit.core.schedules import FlowSchedule
from sdtoolkit.core.utils import append_dims
from sdtoolkit.distill.config import MethodConfig, OptimizerSpec, TrainConfig
from sdtoolkit.distill.data import batch_conditioning, sample_latents
from sdtoolkit.distill.method import DistillationMethod, flow_export_fields, register_method
from sdtoolkit.distill.students import w_embedded_unet
from sdtoolkit.models.loading import teacher_network

__all__ = [
    "LCM",
    "LCMConfig",
    "ConsistencyStep",
    "consistency_distance",
    "consistency_step",
    "ddim_grid",
    "ddim_jump",
    "inference_timesteps",
    "lcm_boundary_scalings",
    "lcm_consistency_function",
    "lcm_sample",
    "phased_sample",
    "pseudo_huber",
]

LCM_LORA_TARGET_MODULES = UNET_LORA_TARGETS
"""UNet modules LCM-LoRA adapts (diffusers' consistency_distillation LoRA scripts); transformer families use their
own list (`ModelFamily.lora_target_modules`) when this default is left unchanged."""


# ---------------------------------------------------------------------------------------------------- config


@dataclass
class LCMConfig(MethodConfig):
    """Latent consistency distillation (LCM / LCM-LoRA / phased PCM). Defaults follow LCM (Luo et al. 2023) as
    implemented by diffusers' consistency_distillation scripts."""

    BOUNDS = {
        "num_ddim_timesteps": SCHEDULE_STEPS,  # checked against the teacher's scheduler once it is loaded
        "lora_rank": AT_LEAST_1,
        "lora_alpha": POSITIVE,
        "lr": POSITIVE,
        "lr_warmup_steps": NON_NEGATIVE,
        "adam_weight_decay": NON_NEGATIVE,
        "w_min": NON_NEGATIVE,
        "w_max": NON_NEGATIVE,
        "time_cond_proj_dim": AT_LEAST_1,
        "ema_decay": FRACTION,
        "huber_c": POSITIVE,
        "sigma_data": POSITIVE,
        "timestep_scaling": POSITIVE,
        "phases": AT_LEAST_1,
        "adversarial_weight": NON_NEGATIVE,
        "discriminator_lr": POSITIVE,
        "sample_steps": AT_LEAST_1,
        "sample_w": NON_NEGATIVE,
    }

    lora_rank: int | None = None
    """None: distil a full UNet copy (LCM). R > 0: train a LoRA of rank R on the teacher's UNet (LCM-LoRA: 64)."""
    lora_alpha: float | None = None
    """LoRA scale numerator (None: = rank, i.e. scale 1)."""
    lora_target_modules: tuple[str, ...] = LCM_LORA_TARGET_MODULES
    """Module names the LoRA adapts (LCM-LoRA's UNet list; names absent from the network are skipped). Left at
    this default, transformer teachers use their family's list (`ModelFamily.lora_target_modules`)."""
    lr: float | None = None
    """AdamW learning rate. None: 1e-6 for a full student, 1e-4 for LoRA (diffusers' LCM and LCM-LoRA example
    commands)."""
    lr_warmup_steps: int = 500
    """Linear learning-rate warm-up steps (diffusers' consistency_distillation scripts: 500)."""
    adam_weight_decay: float = 0.0
    """AdamW weight decay."""
    num_ddim_timesteps: int = 50
    """N, the DDIM grid of the solver (LCM: 50, i.e. skip k = T/N = 20)."""
    w_min: float = 5.0
    """Smallest guidance w sampled (LCM's convention; diffusers' guidance_scale = w + 1). LCM: 5 (w ~ U[5, 15])."""
    w_max: float = 15.0
    """Largest guidance w sampled."""
    w_embedding: bool | None = None
    """Condition the student on w through a guidance embedding (time_cond_proj_dim). None: yes for a full UNet
    student (LCM), no for LoRA (LCM-LoRA) and for transformers (which have no time_cond_proj_dim; a network with a
    guidance input, FLUX.1-dev, takes w through it). Exported with LatentConsistencyModelPipeline (SD 1.x/2.x)."""
    time_cond_proj_dim: int = 256
    """Width of the w-embedding given to the full student's UNet copy (LCM: 256)."""
    ema_decay: float = 0.95
    """EMA decay of the target network f_theta^- of a full student (LCM: 0.95). LoRA uses the online student."""
    loss_type: str = "l2"
    """`l2` (mean squared error; diffusers' LCM default) or `huber` (pseudo-Huber sqrt(d^2 + c^2) - c)."""
    huber_c: float = 0.001
    """c of the pseudo-Huber loss (diffusers' LCM scripts: 0.001)."""
    sigma_data: float = 0.5
    """sigma_data of the boundary scalings c_skip, c_out (Song et al. 2023: 0.5)."""
    timestep_scaling: float = 10.0
    """Timestep scaling of c_skip, c_out (LCMScheduler's `timestep_scaling`; c_skip(t) ~ 0 beyond t ~ 1)."""
    phases: int = 1
    """1: LCM (target at the trajectory's origin). N > 1: PCM with N phases (target at the edge of the phase);
    sampled with N steps of TCDScheduler (eta = 0)."""
    adversarial: bool = False
    """PCM's optional adversarial loss: hinge GAN with small heads on the frozen teacher's down/mid features."""
    adversarial_weight: float = 0.1
    """Weight of the generator's adversarial term (PCM: 0.1)."""
    discriminator_lr: float = 1e-5
    """Learning rate of the discriminator heads (PCM: 1e-5)."""
    sample_steps: int | None = None
    """Sampling steps for grids, validation and the exported default (None: 4 for LCM, N for PCM)."""
    sample_w: float | None = None
    """w used when sampling a w-embedded student (None: (w_min + w_max) / 2). Exported as guidance_scale w + 1."""
    export_ema: bool = True
    """Export the EMA target network of a full student (LCM releases EMA weights); False: the online student."""


# ---------------------------------------------------------------------------------------------------- the maths


# The consistency maths (grid, schedules, boundary scalings, the DDIM map, PCM's phase edges) lives in
# `sdtoolkit.core.consistency` and the multistep samplers in `sdtoolkit.core.sampling`; they are re-exported here.


# ---------------------------------------------------------------------------------------------------- one step


@dataclass
class ConsistencyStep:
    """Everything one consistency-distillation step computed (the loss and its ingredients, for tests and GANs)."""

    loss: Tensor
    online: Tensor
    """f_theta(z_{t_{n+k}}) (with gradient)."""
    target: Tensor
    """f_theta^-(z_hat_{t_n}) (no gradient)."""
    x_prev: Tensor
    """z_hat_{t_n}, the teacher's DDIM step."""
    t_start: Tensor
    t_end: Tensor
    edge: Tensor | None
    """PCM: the phase edge both predictions aim at (None for LCM)."""


def consistency_step(
    *,
    student: Denoiser,
    teacher: Denoiser,
    target: Denoiser,
    x0: Tensor,
    noise: Tensor,
    index: Tensor,
    w: Tensor,
    cond: Conditioning,
    uncond: Conditioning,
    config: LCMConfig,
    teacher_context: Any = contextlib.nullcontext,
) -> ConsistencyStep:
    """Lines 4-8 of Algorithm 1 for given draws (latents `x0`, `noise`, grid `index` [B], guidance `w` [B])."""
    schedule = teacher.schedule  # the teacher's schedule owns time: VP integer steps, flow or TrigFlow times
    grid = schedule.grid(config.num_ddim_timesteps).to(x0.device, torch.float32)
    # 2. t_{n+k} on the grid and t_n, one solver step lower (below the first grid point: t_min, where c_skip = 1)
    t_start = grid[index]
    t_end = schedule.grid_predecessor(t_start, config.num_ddim_timesteps)
    edge = None
    if config.phases > 1:
        edge = phase_edge_of(t_start, phase_edges(config.phases, config.num_ddim_timesteps, schedule=schedule))
        # the solver step never crosses the phase edge (VP's edges lie on the grid, so this changes nothing there;
        # a flow student's phase starts are the stock Euler grid, which need not lie on the solver grid)
        t_end = torch.maximum(t_end, edge)
    # 4. z_{t_{n+k}} = alpha z + sigma eps
    x_t = teacher.add_noise(x0, noise, t_start)
    embed = student_guidance(student, w)
    # 5. online consistency function
    online_prediction = student.predict(x_t, t_start, cond, guidance_embed=embed)
    online = _consistency_output(student, x_t, online_prediction, t_start, edge, config)
    # 6. augmented PF-ODE solver: guided teacher prediction, one DDIM step t_{n+k} -> t_n
    with torch.no_grad(), teacher_context():
        if teacher.time_cond_proj_dim is not None:  # an already guidance-distilled teacher: w through its embedding
            guided = teacher.predict(x_t, t_start, cond, guidance_embed=w)
        else:
            guided = teacher.predict(x_t, t_start, cond, uncond=uncond, guidance_scale=w + 1)
        x_prev = ddim_jump(teacher, guided, t_end).to(x0.dtype)
    # 7. target consistency function at (z_hat_{t_n}, t_n), no gradient
    with torch.no_grad():
        target_prediction = target.predict(x_prev, t_end, cond, guidance_embed=embed)
        target_value = _consistency_output(target, x_prev, target_prediction, t_end, edge, config)
        if edge is not None:  # PCM's boundary condition: at the phase edge the target is z_hat_{t_n} itself
            at_edge = append_dims(t_end <= edge, x_prev.ndim)
            target_value = torch.where(at_edge, x_prev, target_value)
    # 8. distance
    loss = consistency_distance(online, target_value, config.loss_type, config.huber_c)
    return ConsistencyStep(loss, online, target_value, x_prev, t_start, t_end, edge)


def student_guidance(denoiser: Denoiser, w: Tensor) -> Tensor | None:
    """The student's guidance input at LCM's w: w for a w-embedded UNet (`time_cond_proj_dim`), the diffusers scale
    w + 1 for a guidance-distilled input (FLUX.1-dev's `guidance`), None for a student without one."""
    kind = denoiser.guidance_input
    if kind == "w":
        return w
    if kind == "scale":
        return w + 1
    return None


def _consistency_output(
    denoiser: Denoiser, x_t: Tensor, prediction: Prediction, t: Tensor, edge: Tensor | None, config: LCMConfig
) -> Tensor:
    if edge is None:  # LCM: c_skip x_t + c_out x0, the boundary scalings on the network's timestep scale (0..T)
        t_model = denoiser.schedule.model_timestep(t)
        return lcm_consistency_function(x_t, prediction.x0, t_model, config.sigma_data, config.timestep_scaling)
    return ddim_jump(denoiser, prediction, edge)  # PCM: the DDIM map to the edge of the phase (c_skip = 0)


# ---------------------------------------------------------------------------------------------------- the method


@register_method
class LCM(DistillationMethod):
    """Latent consistency distillation (LCM / LCM-LoRA / PCM)."""

    name = "lcm"
    config_class = LCMConfig
    data = "images"
    description = (
        "Latent consistency distillation (Luo et al. 2023, Algorithm 1): a full UNet student with an EMA target "
        "and w-embedding (LCM), or a LoRA on the teacher (--lora-rank, LCM-LoRA); --phases N>1 trains a phased "
        "consistency model (PCM, Wang et al. 2024), --adversarial adds its hinge GAN loss. Needs real latents: an "
        "image-caption folder (--data) or the builtin:shapes renders. Exports a LatentConsistencyModelPipeline / "
        "StableDiffusionPipeline with LCMScheduler, or TCDScheduler for PCM."
    )
    config: LCMConfig

    @classmethod
    def check_config(cls, config: LCMConfig, train: TrainConfig) -> None:
        if config.lora_rank is not None and train.teacher_offload:
            raise ValueError(
                "--teacher-offload with a LoRA student (--lora-rank): the LoRA trains on the teacher's own backbone, "
                "so the teacher cannot leave the device; drop --teacher-offload (the LoRA is already the "
                "memory-light setting) or distil a full student"
            )
        if config.lora_rank is not None and config.w_embedding:
            raise ValueError("--w-embedding needs a full student (a LoRA cannot add the embedding); drop --lora-rank")
        if config.phases < 1 or config.phases > config.num_ddim_timesteps:
            raise ValueError(f"--phases {config.phases} must lie in [1, {config.num_ddim_timesteps}]")
        if config.adversarial and config.phases == 1:
            raise ValueError("--adversarial is PCM's loss: use it with --phases N > 1")
        if not 0 <= config.w_min <= config.w_max:
            raise ValueError(f"guidance range [{config.w_min}, {config.w_max}] must satisfy 0 <= w_min <= w_max")
        if config.loss_type not in ("l2", "huber"):
            raise ValueError(f"--loss-type {config.loss_type!r}; choose l2 or huber")
        steps = config.sample_steps
        if steps is not None and not 1 <= steps <= config.num_ddim_timesteps:
            raise ValueError(f"--sample-steps {steps} must lie in [1, {config.num_ddim_timesteps}]")

    @classmethod
    def check_teacher(cls, config: LCMConfig, train: TrainConfig, pipeline: Any) -> None:
        network = teacher_network(pipeline)
        family = family_for(network)
        if config.w_embedding and not family.supports_w_embedding(network):
            via = (
                "; or keep this FLUX teacher's guidance input (w enters as guidance = w + 1 without --w-embedding)"
                if family.guidance_input(network) == "scale"
                else ""
            )
            raise ValueError(
                f"--w-embedding: LCM's w-embedding is a UNet's time_cond_proj_dim, which the {family.name} "
                f"{type(network).__name__} does not have; drop --w-embedding to train a full LCM student without "
                f"it (teacher guidance w ~ U[w_min, w_max] distilled in){via}"
            )
        targets = tuple(config.lora_target_modules)
        if config.lora_rank is not None and targets != LCM_LORA_TARGET_MODULES:  # the default adapts to the family
            names = [name for name, module in network.named_modules() if isinstance(module, (nn.Linear, nn.Conv2d))]
            if not any(name == t or name.endswith(f".{t}") for name in names for t in targets):
                leaves = sorted({name.rsplit(".", 1)[-1] for name in names})
                raise ValueError(
                    f"--lora-target-modules {' '.join(targets)}: no layer of the teacher's {type(network).__name__} "
                    f"has that name; its layer names include {', '.join(leaves[:12])}"
                )

    @property
    def is_lora(self) -> bool:
        return self.config.lora_rank is not None

    @property
    def uses_w_embedding(self) -> bool:
        if self.config.w_embedding is None:
            return not self.is_lora and self.teacher.family.supports_w_embedding(self.teacher.base_model)
        return self.config.w_embedding

    @property
    def sample_steps(self) -> int:
        return self.config.sample_steps or (self.config.phases if self.config.phases > 1 else 4)

    @property
    def sample_w(self) -> float:
        c = self.config
        return c.sample_w if c.sample_w is not None else (c.w_min + c.w_max) / 2

    # ------------------------------------------------------------------ networks

    def build(self) -> dict[str, nn.Module]:
        config, teacher, device = self.config, self.teacher, self.accelerator.device
        teacher_unet = teacher.base_model
        modules: dict[str, nn.Module] = {}
        if self.is_lora:
            from peft import LoraConfig

            # LCM-LoRA: the student is the teacher's UNet plus an adapter; with adapters disabled it is the teacher
            teacher.freeze()
            targets = config.lora_target_modules
            if targets == LCM_LORA_TARGET_MODULES and teacher.family.lora_target_modules:
                targets = teacher.family.lora_target_modules
            teacher_unet.add_adapter(
                LoraConfig(
                    r=config.lora_rank,
                    lora_alpha=config.lora_alpha or config.lora_rank,
                    target_modules=list(targets),
                    init_lora_weights="gaussian",
                )
            )
            for parameter in teacher_unet.parameters():  # LoRA weights train in fp32 over a possibly bf16 base
                if parameter.requires_grad:
                    parameter.data = parameter.data.float()
            student = teacher_unet
        else:
            student = self._full_student_copy(teacher_unet).to(device)
            teacher.freeze()
        student.train()
        modules["student"] = student
        if config.adversarial:
            from sdtoolkit.distill.adversarial import TrunkDiscriminator

            modules["discriminator"] = TrunkDiscriminator.for_denoiser(teacher).to(device)
        if not self.is_lora:
            from sdtoolkit.core.ema import EMA, ema_target

            self.ema = EMA(student, decay=config.ema_decay)
            self.target_unet = ema_target(student)
        self.built = modules
        return modules

    def _full_student_copy(self, teacher_unet: nn.Module) -> nn.Module:
        """A trainable fp32 copy of the teacher UNet; with the w-embedding, a UNet whose config adds
        `time_cond_proj_dim` (as diffusers' LCM script), teacher weights loaded, the new `cond_proj` zero-initialised
        so that the student starts exactly as the teacher (`sdtoolkit.distill.students.w_embedded_unet`)."""
        if not self.uses_w_embedding:
            return copy.deepcopy(teacher_unet).float().requires_grad_(True)
        return w_embedded_unet(teacher_unet, self.config.time_cond_proj_dim)

    def optimizers(self) -> list[OptimizerSpec]:
        config = self.config
        params = [p for p in self.built["student"].parameters() if p.requires_grad]
        lr = config.lr if config.lr is not None else (1e-4 if self.is_lora else 1e-6)
        student = OptimizerSpec(
            "student", params, lr=lr, weight_decay=config.adam_weight_decay, warmup_steps=config.lr_warmup_steps
        )
        if not config.adversarial:
            return [student]
        # PCM alternates: the discriminator on even steps, the student (consistency + adversarial) on odd ones
        discriminator = OptimizerSpec(
            "discriminator", list(self.built["discriminator"].parameters()), lr=config.discriminator_lr, every=2
        )
        student.every, student.offset = 2, 1
        return [discriminator, student]

    def setup(self, models: dict[str, nn.Module]) -> None:
        super().setup(models)
        teacher = self.teacher
        self.student = teacher.with_model(models["student"])  # the prepared (maybe DDP) module: with gradient
        unwrapped = self.accelerator.unwrap_model(models["student"])
        if self.is_lora:
            self.target = teacher.with_model(unwrapped)  # LCM-LoRA: the online student is its own target
            self.sampler = self.target
            self.teacher_context = teacher.adapters_disabled
        else:
            # the target never trains: under mixed precision it runs in the half dtype (the EMA shadow stays fp32)
            half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(self.accelerator.mixed_precision))
            self.target_unet.to(self.accelerator.device, dtype=half)
            # in the EMA's own dtype the target simply IS the average (no copy after each update)
            self.target_is_ema = self.ema.share_with(self.target_unet)
            self.target = teacher.with_model(self.target_unet)
            self.sampler = self.target if self.config.export_ema else teacher.with_model(unwrapped)
            self.teacher_context = contextlib.nullcontext

    # ------------------------------------------------------------------ the step

    def loss(self, name: str, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        config = self.config
        device = self.accelerator.device
        # 1. real latents from the cached posteriors
        x0 = sample_latents({k: v.to(device) for k, v in batch.items() if k.startswith("latent_")})
        batch_size = x0.shape[0]
        cond = batch_conditioning(batch).to(device)
        uncond = self.training_data.uncond(batch_size)
        # 2.-4. grid index n, guidance w, noise
        noise = torch.randn_like(x0)
        index = torch.randint(0, config.num_ddim_timesteps, (batch_size,), device=device)
        w = (config.w_max - config.w_min) * torch.rand(batch_size, device=device) + config.w_min
        out = consistency_step(
            student=self.student,
            teacher=self.teacher,
            target=self.target,
            x0=x0,
            noise=noise,
            index=index,
            w=w,
            cond=cond,
            uncond=uncond,
            config=config,
            teacher_context=self.teacher_context,
        )
        if not config.adversarial:
            return {"loss": out.loss}
        from sdtoolkit.distill.adversarial import phased_adversarial_losses

        adv = phased_adversarial_losses(
            self, out, cond, train_discriminator=(name == "discriminator"), num_phases=config.phases
        )
        if name == "discriminator":
            return {"loss": adv["d_loss"], "consistency": out.loss.detach()}
        return {"loss": out.loss + config.adversarial_weight * adv["g_loss"], "consistency": out.loss.detach(), **adv}

    def after_step(self, name: str, step: int) -> None:
        if name == "student" and not self.is_lora:  # 8. f_theta^- <- EMA of f_theta, only on synced steps
            self.ema.update(self.unwrapped("student"))
            if not self.target_is_ema:
                self.ema.copy_to(self.target_unet)

    def checkpoint_objects(self) -> list[Any]:
        return [] if self.is_lora else [self.ema]

    def after_load(self) -> None:
        if not self.is_lora:
            self.ema.copy_to(self.target_unet)

    # ------------------------------------------------------------------ sampling and saving

    def sample(self, cond: Conditioning, uncond: Conditioning, generator: torch.Generator) -> Tensor:
        sampler = self.sampler
        shape = self.latent_shape(cond.batch_size)
        noise = torch.randn(shape, generator=generator, device=self.accelerator.device, dtype=torch.float32)
        embed = student_guidance(sampler, torch.full((shape[0],), self.sample_w, device=noise.device))
        timesteps = sampler.schedule.student_timesteps(self.sample_steps, self.config.num_ddim_timesteps)
        if self.config.phases > 1:
            return phased_sample(sampler, noise, cond, timesteps, embed)
        c = self.config
        return lcm_sample(sampler, noise, cond, timesteps, generator, embed, c.sigma_data, c.timestep_scaling)

    def _largest_c_skip(self, times: list[float]) -> float:
        """LCM's c_skip at the smallest of a flow student's sampling times (on the network's timestep scale)."""
        t_model = self.teacher.schedule.model_timestep(torch.tensor([min(times)], dtype=torch.float64))
        return float(lcm_boundary_scalings(t_model, self.config.sigma_data, self.config.timestep_scaling)[0])

    def save_student(self, folder: Path) -> Any:
        from sdtoolkit.pipelines.export import ExportSpec

        config = self.config
        family = self.teacher.family
        if self.is_lora:  # with the family's stock pipeline: unet_lora_layers= or transformer_lora_layers=
            import diffusers
            from peft.utils import get_peft_model_state_dict

            network = self.unwrapped("student")
            state = {k: v.detach().float().cpu().contiguous() for k, v in get_peft_model_state_dict(network).items()}
            getattr(diffusers, family.export_pipeline).save_lora_weights(
                folder,
                **{
                    f"{family.component}_lora_layers": state,
                    f"{family.component}_lora_adapter_metadata": network.peft_config["default"].to_dict(),
                },
            )
        else:
            if config.export_ema:  # the fp32 EMA weights (the target network may run in a half dtype)
                network = copy.deepcopy(self.target_unet).float()
                self.ema.copy_to(network)
            else:
                network = self.unwrapped("student")
            network.save_pretrained(folder / family.component, safe_serialization=True)
        lora = ", LCM-LoRA" if self.is_lora else ""
        guided = self.sampler.guidance_input is not None  # w-embedding or a guidance input: sampled at w + 1
        guidance = self.sample_w + 1 if guided else 1.0
        if isinstance(self.teacher.schedule, FlowSchedule):
            times = self.teacher.schedule.student_timesteps(self.sample_steps, config.num_ddim_timesteps)
            phased = config.phases > 1
            fields = flow_export_fields(self, times, stochastic=not phased and self.sample_steps > 1)
            notes = (
                f"Phased consistency model (PCM, Wang et al. 2024) with {config.phases} phases: {config.phases} "
                "deterministic FlowMatch Euler steps, one per phase."
                if phased
                else f"Latent consistency model (Luo et al. 2023{lora}) on a flow teacher: x0 = x - sigma v at each "
                "step, re-noised to the next sigma with fresh noise (stochastic_sampling). The stock scheduler drops "
                f"LCM's boundary scaling c_skip, at most {self._largest_c_skip(times):.1e} at these sigmas."
            )
            return ExportSpec(
                method=self.name,
                student="lora" if self.is_lora else family.component,
                num_inference_steps=self.sample_steps,
                guidance_scale=guidance,
                notes=notes + f" Times (sigma): {', '.join(f'{t:.4g}' for t in times)}.",
                **fields,
            )
        scheduler_config: dict[str, Any] = {
            "original_inference_steps": config.num_ddim_timesteps,
            "clip_sample": False,
            "thresholding": False,
        }
        if config.phases > 1:
            pipeline_class, scheduler_class = family.export_pipeline, "TCDScheduler"
            call_kwargs, notes = (
                {"eta": 0.0},
                (
                    f"Phased consistency model (PCM, Wang et al. 2024) with {config.phases} phases: sample with "
                    f"{config.phases} deterministic TCDScheduler steps (eta=0), one per phase."
                ),
            )
        else:
            scheduler_config["timestep_scaling"] = config.timestep_scaling
            w_embedded = self.sampler.time_cond_proj_dim is not None
            pipeline_class = family.export_pipeline
            if w_embedded and family.name == "sd":
                pipeline_class = "LatentConsistencyModelPipeline"
            scheduler_class, call_kwargs = "LCMScheduler", {}
            notes = (
                f"Latent consistency model (Luo et al. 2023{lora}), teacher guidance w ~ U[{config.w_min}, "
                f"{config.w_max}] (LCM's w; diffusers' scale w + 1)."
            )
        return ExportSpec(
            method=self.name,
            student="lora" if self.is_lora else family.component,
            pipeline_class=pipeline_class,
            scheduler_class=scheduler_class,
            num_inference_steps=self.sample_steps,
            guidance_scale=guidance,
            scheduler_config=scheduler_config,
            call_kwargs=call_kwargs,
            notes=notes,
        )
