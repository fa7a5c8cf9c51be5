"""Continuous-time consistency distillation in TrigFlow (sCM; Lu & Song 2024, "Simplifying, Stabilizing and Scaling
Continuous-Time Consistency Models"), as SANA-Sprint (Chen et al. 2025) trains it, on the shared Denoiser, in the
shared training loop (`sdtoolkit distill scm`).

One step, as `scm_step` runs it (the equations are `sdtoolkit.distill.scm`, the teacher conversion
`sdtoolkit.core.trigflow`):

1. real latents x0 (the teacher's scale) from the cached VAE posteriors; TrigFlow data x0_trig = sigma_d x0 and
   noise z ~ N(0, sigma_d^2 I); s = arctan(e^tau / sigma_d), tau ~ N(P_mean, P_std^2) (SANA-Sprint: 0.2, 1.6);
   x_s = cos(s) x0_trig + sin(s) z;
2. the guidance w per sample from a set (SANA-Sprint {4, 4.5, 5}; diffusers' scale), and the teacher's guided
   ODE velocity dx_s/ds = sigma_d [F_u + w (F_c - F_u)] (no gradient; any VP or flow teacher in TrigFlow time);
3. the student F_theta^-(x_s / sigma_d, s) and cos(s) sin(s) dF_theta^-/ds along the ODE in one forward-mode JVP
   (`torch.func.jvp`, no gradient, float32, on the unwrapped student and a JVP-safe attention kernel); for a network
   that embeds 1000 t (SD's UNets), the time part by a +-20-timestep difference instead (`--time-difference`);
4. the tangent g of Eq. 8-9 with the warm-up r = min(1, step / tangent_warmup_steps), normalised g / (||g|| + c);
5. a normal forward F_theta with gradient and the learned log-variance w_phi(s); the loss of Eq. 10.

With `--adversarial` (SANA-Sprint's sCM + LADD, `sdtoolkit.distill.ladd`): heads on the frozen teacher's blocks
judge the student's clean estimate (from real latents re-noised at sCM's time, or at pi/2 half of the time) against
real latents, both re-noised at s_D; the heads and the student update on alternate steps (heads first), the
student's loss is scm_weight L_sCM + adversarial_weight L_adv (1 and 0.5). `sdtoolkit distill ladd` is LADD alone.

The student takes w through an embedding when its network has one (a UNet's LCM-style `time_cond_proj_dim`, input
w - 1; SANA's `guidance_embeds`, input w * guidance_embeds_scale as SanaSprintPipeline feeds it), zero-initialised
so that it starts as the teacher, or through a guidance-distilled input (FLUX.1-dev's `guidance`, input w); otherwise
it distils one fixed w. A SANA student takes the dense flow time t in [0, 1] (not 1000 t; `dense_time`), which is
what stock `SanaSprintPipeline` feeds it; so does any student of a teacher prepared with `prepare-teacher
--dense-time`, exported with a stock scheduler of num_train_timesteps=1 (its pipeline then feeds t as well).

Sampling is sCM's multistep sampler (`SCMScheduler`): x0 = cos(s) x - sigma_d sin(s) F, re-noised to the next time
with fresh noise. Export: SANA students as a stock `SanaSprintPipeline` + `SCMScheduler` folder
(`sdtoolkit.pipelines.sana_sprint`); VP students (SD, SDXL) as 1-step generators (s = pi/2 is the teacher's noisiest
time), exported like DMD2's; other flow students with the stock FlowMatch Euler scheduler on their times.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sdtoolkit.core.denoiser import Conditioning, Denoiser
from sdtoolkit.core.families import family_for
from sdtoolkit.core.sampling import S_MAX_NETWORK, scm_sample, scm_sampling_times  # noqa: F401  (re-exported)
from sdtoolkit.core.schedules import FlowSchedule, VPSchedule
from sdtoolkit.core.trigflow import SIGMA_DATA
from sdtoolkit.distill.config import MethodConfig, OptimizerSpec, TrainConfig
from sdtoolkit.distill.data import batch_conditioning, sample_latents
from sdtoolkit.distill.method import DistillationMethod, register_method
from sdtoolkit.distill.scm import (  # noqa: F401  (SCMStep, scm_step: re-exported)
    JVP_SAFE_ATTENTION,
    LogVarianceHead,
    SCMStep,
    check_jvp_backend,
    network_time_delta,
    sample_time,
    scm_step,
    tangent_warmup,
)
from sdtoolkit.distill.students import sana_sprint_student, w_embedded_unet  # noqa: F401  (re-exported)
from sdtoolkit.models.loading import teacher_network

__all__ = [
    "SCM",
    "SCMConfig",
    "SCMStep",
    "scm_sample",
    "scm_sampling_times",
    "scm_step",
    "sana_sprint_student",
]


# ---------------------------------------------------------------------------------------------------- config


DENSE_NOTE = (
    " The transformer takes the dense flow time t in [0, 1], not 1000 t (SANA-Sprint's dense time embedding): the "
    "scheduler's num_train_timesteps is 1, so the stock pipeline feeds it t."
)
"""What a flow export's notes add for a dense-time student."""


@dataclass
class SCMConfig(MethodConfig):
    """Continuous-time consistency distillation (sCM) in TrigFlow. Defaults follow SANA-Sprint (Chen et al. 2025,
    `train_scm_ladd.py` and its 1.6B config) unless a field says otherwise."""

    lr: float = 2e-6
    """Learning rate of the student (SANA-Sprint: 2e-6, with CAME; here AdamW)."""
    lr_warmup_steps: int = 0
    """Linear learning-rate warm-up steps."""
    adam_weight_decay: float = 0.0
    """AdamW weight decay."""
    logvar_features: int = 128
    """Sinusoidal features of s read by the log-variance head (even)."""
    p_mean: float = 0.2
    """Mean of tau in s = arctan(e^tau / sigma_d) (SANA-Sprint: 0.2)."""
    p_std: float = 1.6
    """Standard deviation of tau (SANA-Sprint: 1.6)."""
    sigma_data: float = SIGMA_DATA
    """sigma_d of TrigFlow (sCM, SANA-Sprint: 0.5); also the exported SCMScheduler's."""
    guidance_scales: tuple[float, ...] = (4.0, 4.5, 5.0)
    """Teacher CFG scales w (diffusers' convention: F_u + w (F_c - F_u)) drawn uniformly per sample (SANA-Sprint:
    {4, 4.5, 5}). Without a guidance embedding the student distils `sample_w` alone."""
    guidance_embedding: bool | None = None
    """Give the student w through an embedding: a UNet's `time_cond_proj_dim` (LCM's w-embedding, input w - 1) or
    SANA's `guidance_embeds` (input w * guidance_embeds_scale). None: yes where the network can have one (UNets,
    SANA), else a fixed w = `sample_w`. SANA students always need it (SanaSprintPipeline feeds a guidance); a
    network with a guidance input (FLUX.1-dev) takes w through it."""
    time_cond_proj_dim: int = 256
    """Width of the w-embedding added to a UNet student (LCM: 256)."""
    guidance_embeds_scale: float = 0.1
    """SANA: the transformer's `guidance_embeds_scale` (SANA-Sprint's `cfg_embed_scale`: 0.1)."""
    dense_time: bool = True
    """SANA: the student embeds the dense flow time t in [0, 1] instead of the teacher's 1000 t (SANA-Sprint's
    teacher preparation; what stock SanaSprintPipeline feeds). Its time embedding then starts away from the
    teacher's. Other families keep their teacher's time input: dense for a teacher prepared with
    `prepare-teacher --dense-time` (its scheduler's num_train_timesteps is 1), whose time embedding the student
    starts from."""
    tangent_warmup_steps: int = 4000
    """Steps of the tangent warm-up r = min(1, step / N) (SANA-Sprint: 4000; 0: r = 1 from the start)."""
    tangent_norm_c: float = 0.1
    """c of the tangent normalisation g / (||g|| + c) (sCM, SANA-Sprint: 0.1)."""
    time_difference: float | None = None
    """dF/ds's time part by a central difference whose half-step moves the student network's timestep input by this
    fraction of its range (0: the exact JVP, as SANA-Sprint). A network that embeds 1000 t in sinusoids and was
    trained at integer timesteps (SD's UNets, SD3/FLUX/SANA without dense time) wiggles between them, and its exact
    time derivative is mostly that wiggle (`sdtoolkit.distill.scm.ode_derivative`). None: 0.02 (20 of SD's 1000
    timesteps) for such networks, 0 for a dense-time student (SANA's, or any from a dense-time teacher)."""
    grad_clip: float | None = 0.1
    """Gradient-norm clipping of the student update (SANA-Sprint: 0.1; None: the run's --max-grad-norm)."""
    attention: str = "jvp"
    """Attention kernel of the student, JVP pass included: one with forward-mode AD (`jvp` or `math`)."""
    ema_decay: float = 0.999
    """EMA decay of the student (our choice; sCM papers evaluate EMA weights)."""
    export_ema: bool = True
    """Sample and export the EMA student; False: the online student."""
    sample_steps: int | None = None
    """Steps of the sampler for grids, validation and export (None: 2, SanaSprintPipeline's default; 1 for VP
    teachers, whose export is a 1-step generator)."""
    max_time: float = 1.5708
    """First sampling time (SCMScheduler's `max_timesteps`: 1.5708)."""
    intermediate_time: float = 1.3
    """The middle time of 2-step sampling (SCMScheduler's and SanaSprintPipeline's default `intermediate_timesteps`:
    1.3); other step counts use linspace(max_time, 0)."""
    sample_w: float | None = None
    """w used for sampling and export (None: the middle of `guidance_scales`)."""
    init_from: str | None = None
    """Start the student, its EMA and the log-variance head from another sCM run of the same teacher: its folder
    (latest checkpoint) or one checkpoints/step_N. Weights only: the step count, the optimizers and the random state
    start fresh, and discriminator heads are new. For two-stage training (sCM first, then sCM + LADD from it); set
    --tangent-warmup-steps 0 when the first stage finished its warm-up. Resuming the second stage reads this
    checkpoint again before its own: keep it."""
    # LADD (`sdtoolkit.distill.ladd`): discriminator heads on the frozen teacher's features, SANA-Sprint's recipe
    adversarial: bool = False
    """Add LADD's adversarial loss (SANA-Sprint's sCM + LADD): discriminator heads on the frozen teacher's blocks,
    hinge loss; the heads and the student update on alternate steps (heads first)."""
    scm_weight: float = 1.0
    """Weight of the sCM loss in the student's loss (SANA-Sprint's `scm_lambda`: 1; 0 with --adversarial: LADD alone,
    no JVP)."""
    adversarial_weight: float = 0.5
    """Weight of the adversarial loss in the student's loss (SANA-Sprint's `adv_lambda`: 0.5)."""
    discriminator_lr: float = 2e-6
    """Learning rate of the discriminator heads (SANA-Sprint: 2e-6, with CAME; here AdamW)."""
    discriminator_layers: tuple[int, ...] | None = None
    """Hooked teacher blocks (indices into the transformer blocks, or a UNet's down blocks + mid block). None:
    SANA-Sprint's [2, 8, 14, 19] of 20 at the same relative depths; a UNet's down blocks and mid block."""
    discriminator_p_mean: float = -0.6
    """Mean of tau in the discriminator's time s_D = arctan(e^tau / sigma_d) (SANA-Sprint: -0.6)."""
    discriminator_p_std: float = 1.0
    """Standard deviation of that tau (SANA-Sprint: 1.0)."""
    largest_time_prob: float = 0.5
    """Probability that the student's adversarial x0 comes from pure noise, s = largest_time (SANA-Sprint's
    `train_largest_timestep` with `largest_timestep_prob` 0.5)."""
    largest_time: float = 1.5708
    """That time (SANA-Sprint's `largest_timestep`: 1.5708)."""
    misaligned_pairs: bool = False
    """Real latents rolled by one in the batch, with the batch's prompts, as extra fakes for the heads (SANA-Sprint's
    `misaligned_pairs_D`)."""
    r1_weight: float = 0.0
    """Weight of an R1 penalty on the heads' inputs (SANA-Sprint's optional `r1_penalty`; 0: off)."""
    virtual_batch: int = 8
    """Virtual batch of the heads' BatchNorm (StyleGAN-T, SANA-Sprint: 8)."""
    mixed_batches: bool = False
    """Fakes and reals share the heads' BatchNorm virtual batches, in the heads' and in the student's phase
    (`sdtoolkit.distill.ladd.mixed_logits`). False: separate calls, as SANA-Sprint; they erase shifts common to all
    fakes, and on builtin:shapes-flow the heads then never learned (hinge 1.00). With this option they learn, but the
    students came out worse (benchmarks/RESULTS.md, "sCM, LADD and teacher preparation")."""


# ---------------------------------------------------------------------------------------------------- init_from


def init_checkpoint(path: str) -> Path:
    """The checkpoint `--init-from PATH` names (a run folder's latest, or a checkpoints/step_N folder); raises
    ValueError naming the path when there is none or it was written by another method."""
    from sdtoolkit.distill.checkpoint import PROGRESS_NAME, latest_checkpoint

    folder = Path(path)
    checkpoint = latest_checkpoint(folder) if folder.is_dir() else None
    if checkpoint is None:
        raise ValueError(
            f"--init-from {path}: no checkpoint there (expected an sCM run folder with checkpoints/step_N, or one "
            "checkpoints/step_N folder)"
        )
    method = json.loads((checkpoint / PROGRESS_NAME).read_text()).get("method")
    if method != "scm":
        raise ValueError(f"--init-from {path}: {checkpoint} was written by method {method!r}, not 'scm'")
    return checkpoint


def init_mismatch(checkpoint: Path, network: nn.Module) -> str | None:
    """Why an sCM checkpoint's student (model.safetensors, read by its header only) cannot start from a copy of
    `network`: teacher tensors it lacks or holds in other shapes (the student may add a guidance embedding); None
    when it fits."""
    from safetensors import safe_open

    try:
        with safe_open(str(checkpoint / "model.safetensors"), framework="pt") as handle:
            saved = {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as error:  # safetensors raises its own error types for a file that is not one of its own
        return f"model.safetensors unreadable: {str(error).splitlines()[0]}"
    expected = {key: list(value.shape) for key, value in network.state_dict().items()}
    missing = [key for key in expected if key not in saved]
    if missing:
        return f"{len(missing)} of the teacher's {len(expected)} tensors missing, e.g. {missing[0]}"
    shaped = [key for key in expected if saved[key] != expected[key]]
    if shaped:
        return f"{shaped[0]} is {saved[shaped[0]]}, the teacher's {expected[shaped[0]]}"
    return None


def load_init(checkpoint: Path, student: nn.Module, head: nn.Module, ema: Any) -> None:
    """Loads an sCM checkpoint's student (model.safetensors), log-variance head (model_1) and EMA (the registered
    object holding shadows) into freshly built ones; the shapes must match (same teacher and student settings)."""
    from sdtoolkit.distill.checkpoint import load_network, refuse_pickles, saved_objects

    refuse_pickles(checkpoint)
    try:
        load_network(checkpoint, 0, student)
        load_network(checkpoint, 1, head)
        saved = [o for o in saved_objects(checkpoint) if isinstance(o, dict) and "shadow" in o]
        ema.load_state_dict(saved[0])  # the loop's own objects come first; the method's EMA is the one with shadows
    except (IndexError, KeyError, ValueError, RuntimeError) as error:
        raise ValueError(
            f"--init-from {checkpoint}: its networks do not match this run's student (same teacher and student "
            f"settings needed): {str(error).splitlines()[0]}"
        ) from error


# ---------------------------------------------------------------------------------------------------- the step


# ---------------------------------------------------------------------------------------------------- the method


@register_method
class SCM(DistillationMethod):
    """Continuous-time consistency distillation (sCM) in TrigFlow, as SANA-Sprint."""

    name = "scm"
    config_class = SCMConfig
    data = "images"
    description = (
        "Continuous-time consistency distillation in TrigFlow (sCM: Lu & Song 2024; as SANA-Sprint, Chen et al. "
        "2025): the tangent through the student by a forward-mode JVP (torch.func.jvp, math attention), tangent "
        "warm-up and normalisation, adaptive weighting by a learned log-variance, teacher CFG w in {4, 4.5, 5} "
        "embedded in the student, EMA; --adversarial adds LADD (discriminator heads on the frozen teacher's blocks, "
        "hinge loss, weight 0.5, alternating updates). Needs real latents (--data). Exports SANA students as a "
        "stock SanaSprintPipeline with SCMScheduler, SD/SDXL students as 1-step generators."
    )
    config: SCMConfig

    # ------------------------------------------------------------------ checks

    @classmethod
    def check_config(cls, config: SCMConfig, train: TrainConfig) -> None:
        if config.attention not in JVP_SAFE_ATTENTION:
            check_jvp_backend(config.attention)
        checks = [
            ("--lr", config.lr, config.lr > 0, "must be > 0 (SANA-Sprint: 2e-6)"),
            ("--lr-warmup-steps", config.lr_warmup_steps, config.lr_warmup_steps >= 0, "must be >= 0"),
            ("--adam-weight-decay", config.adam_weight_decay, config.adam_weight_decay >= 0, "must be >= 0"),
            (
                "--logvar-features",
                config.logvar_features,
                config.logvar_features >= 2 and config.logvar_features % 2 == 0,
                "must be an even integer >= 2 (default 128)",
            ),
            ("--p-std", config.p_std, config.p_std > 0, "must be > 0 (SANA-Sprint: 1.6)"),
            ("--p-mean", config.p_mean, math.isfinite(config.p_mean), "must be a finite number (SANA-Sprint: 0.2)"),
            ("--sigma-data", config.sigma_data, 0 < config.sigma_data < math.inf, "must be > 0 (sCM: 0.5)"),
            (
                "--guidance-scales",
                list(config.guidance_scales),
                len(config.guidance_scales) > 0 and all(1 <= w < math.inf for w in config.guidance_scales),
                "must be one or more scales >= 1 (SANA-Sprint: 4 4.5 5)",
            ),
            ("--time-cond-proj-dim", config.time_cond_proj_dim, config.time_cond_proj_dim > 0, "must be > 0"),
            ("--guidance-embeds-scale", config.guidance_embeds_scale, config.guidance_embeds_scale > 0, "must be > 0"),
            ("--tangent-warmup-steps", config.tangent_warmup_steps, config.tangent_warmup_steps >= 0, "must be >= 0"),
            ("--tangent-norm-c", config.tangent_norm_c, config.tangent_norm_c > 0, "must be > 0 (sCM: 0.1)"),
            (
                "--time-difference",
                config.time_difference,
                0 <= (config.time_difference or 0) < 0.5,
                "must lie in [0, 0.5) (a fraction of the network's timestep range; 0: the exact JVP)",
            ),
            ("--grad-clip", config.grad_clip, config.grad_clip is None or config.grad_clip > 0, "must be > 0"),
            ("--ema-decay", config.ema_decay, 0 <= config.ema_decay <= 1, "must lie in [0, 1]"),
            (
                "--sample-steps",
                config.sample_steps,
                config.sample_steps is None or 1 <= config.sample_steps <= 1000,
                "must lie in [1, 1000] (SCMScheduler's num_train_timesteps)",
            ),
            (
                "--max-time",
                config.max_time,
                0 < config.max_time <= 1.5708,
                "must lie in (0, 1.5708] (TrigFlow time; SCMScheduler's max_timesteps 1.5708)",
            ),
            (
                "--intermediate-time",
                config.intermediate_time,
                0 < config.intermediate_time < config.max_time,
                f"must lie in (0, --max-time {config.max_time}) (SCMScheduler's default 1.3)",
            ),
            ("--sample-w", config.sample_w, config.sample_w is None or config.sample_w >= 1, "must be >= 1"),
            ("--scm-weight", config.scm_weight, config.scm_weight >= 0, "must be >= 0 (SANA-Sprint: 1)"),
            ("--scm-weight", config.scm_weight, config.scm_weight > 0 or config.adversarial, "needs --adversarial"),
            ("--adversarial-weight", config.adversarial_weight, config.adversarial_weight >= 0, "must be >= 0"),
            ("--discriminator-lr", config.discriminator_lr, config.discriminator_lr > 0, "must be > 0"),
            (
                "--discriminator-layers",
                list(config.discriminator_layers or []),
                config.discriminator_layers is None
                or (len(config.discriminator_layers) > 0 and min(config.discriminator_layers) >= 0),
                "must be one or more block indices >= 0",
            ),
            ("--discriminator-p-std", config.discriminator_p_std, config.discriminator_p_std > 0, "must be > 0"),
            ("--discriminator-p-mean", config.discriminator_p_mean, math.isfinite(config.discriminator_p_mean), ""),
            ("--largest-time-prob", config.largest_time_prob, 0 <= config.largest_time_prob <= 1, "must be in [0, 1]"),
            ("--largest-time", config.largest_time, 0 < config.largest_time <= 1.5708, "must lie in (0, 1.5708]"),
            ("--r1-weight", config.r1_weight, config.r1_weight >= 0, "must be >= 0"),
            ("--virtual-batch", config.virtual_batch, config.virtual_batch >= 1, "must be >= 1 (SANA-Sprint: 8)"),
        ]
        for flag, value, ok, why in checks:
            if not ok:
                raise ValueError(f"{flag} {value} {why or 'must be a finite number'}")
        if config.init_from is not None:
            init_checkpoint(config.init_from)

    @classmethod
    def check_teacher(cls, config: SCMConfig, train: TrainConfig, pipeline: Any) -> None:
        network = teacher_network(pipeline)
        family = family_for(network)
        if config.init_from is not None:  # before anything is written: the student is a copy of this teacher's net
            mismatch = init_mismatch(init_checkpoint(config.init_from), network)
            if mismatch:
                raise ValueError(
                    f"--init-from {config.init_from}: its student is not a copy of this teacher's "
                    f"{type(network).__name__} ({mismatch}); initialise from an sCM run of the same teacher "
                    "architecture"
                )
        if family.name == "sana" and config.guidance_embedding is False:
            raise ValueError(
                "--no-guidance-embedding: a SANA student exports to SanaSprintPipeline, which always feeds the "
                "transformer a guidance input; keep the guidance embedding (the default)"
            )
        if config.guidance_embedding and family.name != "sana" and not family.supports_w_embedding(network):
            raise ValueError(
                f"--guidance-embedding: the {family.name} {type(network).__name__} has no guidance embedding to add "
                "(UNets: time_cond_proj_dim; SANA: guidance_embeds); drop it to distil one fixed w (--sample-w)"
            )
        if config.adversarial:
            from sdtoolkit.distill.ladd import feature_blocks

            blocks, _ = feature_blocks(network)
            layers = config.discriminator_layers or []
            if any(i >= len(blocks) for i in layers):
                kind = "down/mid blocks" if hasattr(network, "mid_block") else "transformer blocks"
                raise ValueError(
                    f"--discriminator-layers {list(layers)}: the teacher {type(network).__name__} has {len(blocks)} "
                    f"{kind} (indices 0-{len(blocks) - 1})"
                )

    # ------------------------------------------------------------------ properties

    @property
    def family(self):
        return self.teacher.family

    @property
    def embeds_guidance(self) -> bool:
        if self.family.name == "sana" or self.teacher.guidance_input == "scale":  # FLUX.1-dev: its guidance input
            return True
        if self.config.guidance_embedding is None:
            return self.family.supports_w_embedding(self.teacher.base_model)
        return self.config.guidance_embedding

    @property
    def dense_time(self) -> bool:
        """Whether the student's timestep input is the flow time t (not 1000 t): a SANA student with `dense_time`, or
        any student of a teacher already prepared with one (`prepare-teacher --dense-time`)."""
        schedule = self.teacher.schedule
        return (self.family.name == "sana" and self.config.dense_time) or getattr(schedule, "dense", False)

    @property
    def sample_w(self) -> float:
        scales = self.config.guidance_scales
        return self.config.sample_w if self.config.sample_w is not None else (min(scales) + max(scales)) / 2

    @property
    def sample_steps(self) -> int:
        if self.config.sample_steps is not None:
            return self.config.sample_steps
        return 1 if isinstance(self.teacher.schedule, VPSchedule) else 2

    @property
    def time_delta(self) -> float:
        """The half-step of dF/ds's time difference in the student network's timestep units (0: exact JVP)."""
        fraction = self.config.time_difference
        if fraction is None:
            fraction = 0.0 if self.dense_time else 0.02
        return network_time_delta(self.jvp_student.schedule, fraction)

    def guidance_input(self, w: Tensor) -> Tensor | None:
        """The student's guidance input for diffusers scales `w` [B]: w - 1 (a UNet's LCM w-embedding), w times
        `guidance_embeds_scale` (SANA, as SanaSprintPipeline), w itself (a guidance-distilled input, FLUX.1-dev's
        `guidance`, as FluxPipeline feeds it), or None."""
        if not self.embeds_guidance:
            return None
        if self.family.name == "sana":
            return w * self.config.guidance_embeds_scale
        if self.teacher.guidance_input == "scale":
            return w
        return w - 1

    def sampling_times(self) -> Tensor:
        """TrigFlow times of the sampler, SCMScheduler's for every family: [max_time, intermediate_time, 0] for 2
        steps (1.5708, 1.3), else linspace(max_time, 0). A VP student exports its 1-step generator (s = pi/2 is the
        teacher's noisiest time); other flow students than SANA export these times as flow sigmas
        t = sin s / (sin s + cos s) (`flow_times`), passed to the stock FlowMatch Euler sampler as `sigmas`: its own
        k-step grid linspace(1, 1/T, k) puts the second of 2 steps at t = 0.001 (0.003 after SD3's shift 3), a step
        that re-predicts an almost clean image and adds nothing (measured on builtin:shapes-flow: FD 34.1 with that
        grid, 25.4 with t = 0.78; benchmarks/RESULTS.md, "sCM")."""
        k, c = self.sample_steps, self.config
        return scm_sampling_times(k, c.max_time, c.intermediate_time)

    def flow_times(self) -> list[float]:
        """The sampler's times as flow sigmas t = sin s / (sin s + cos s) (the TrigFlow time map of
        `sdtoolkit.core.trigflow`), noisiest first and without the final 0; SCMScheduler's first time 1.5708 lies
        just beyond pi/2 and maps to t = 1."""
        s = self.sampling_times()[:-1].double()
        t = torch.sin(s) / (torch.sin(s) + torch.cos(s))
        return [min(1.0, float(x)) for x in t]

    def _student_denoiser(self, model: nn.Module) -> Denoiser:
        denoiser = self.teacher.with_model(model)
        if self.dense_time:  # the network's timestep is the flow time t itself, not 1000 t
            denoiser = denoiser.replace_schedule(self.teacher.schedule.replace(num_train_timesteps=1))
        denoiser.autocast_dtype = None
        # the kernel probe of `configure_attention` draws from the global RNG once per process (cached): forked, so
        # that a run's randomness does not depend on whether an earlier run in the process probed (exact resume)
        device = self.accelerator.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            denoiser.set_attention(self.config.attention)
        return denoiser

    # ------------------------------------------------------------------ networks

    def build(self) -> dict[str, nn.Module]:
        config, teacher, device = self.config, self.teacher, self.accelerator.device
        network = teacher.base_model
        if self.family.name == "sana":
            student = sana_sprint_student(network, config.guidance_embeds_scale)
        elif self.embeds_guidance and self.family.supports_w_embedding(network):
            student = w_embedded_unet(network, config.time_cond_proj_dim)
        else:
            student = copy.deepcopy(network).float().requires_grad_(True)
        teacher.freeze()
        student = student.to(device).train()
        head = LogVarianceHead(config.logvar_features).to(device)
        from sdtoolkit.core.ema import EMA, ema_target

        self.ema = EMA(student, decay=config.ema_decay)
        if config.init_from is not None:
            load_init(init_checkpoint(config.init_from), student, head, self.ema)
        self.ema_network = ema_target(student)
        if config.init_from is not None:
            self.ema.copy_to(self.ema_network)  # the loaded EMA, not the online weights, until the first update
        self.built = {"student": student, "logvar": head}
        if config.adversarial:  # LADD: heads on the frozen teacher's blocks (only the heads are a module)
            from sdtoolkit.distill.ladd import DiscriminatorHeads, TeacherFeatures

            self.backbone = TeacherFeatures(teacher, config.discriminator_layers, config.sigma_data)
            heads = DiscriminatorHeads(self.backbone.channels, config.virtual_batch)
            self.built["discriminator"] = heads.to(device)
        return self.built

    def optimizers(self) -> list[OptimizerSpec]:
        config = self.config
        # the log-variance head trains with the student, in its optimizer (as SANA-Sprint's `logvar_linear`)
        params = [p for p in self.built["student"].parameters() if p.requires_grad]
        params += list(self.built["logvar"].parameters())
        student = OptimizerSpec(
            "student",
            params,
            lr=config.lr,
            weight_decay=config.adam_weight_decay,
            warmup_steps=config.lr_warmup_steps,
            max_grad_norm=config.grad_clip,
        )
        if not config.adversarial:
            return [student]
        # G and D alternate (SANA-Sprint; PCM's order, as trainers/lcm.py): the heads on even steps, the student on
        # odd ones; both clipped at grad_clip as SANA-Sprint's `gradient_clip`
        heads = OptimizerSpec(
            "discriminator",
            list(self.built["discriminator"].parameters()),
            lr=config.discriminator_lr,
            every=2,
            max_grad_norm=config.grad_clip,
        )
        student.every, student.offset = 2, 1
        return [heads, student]

    def setup(self, models: dict[str, nn.Module]) -> None:
        super().setup(models)
        unwrapped = self.accelerator.unwrap_model(models["student"])
        self.student = self._student_denoiser(models["student"])  # the prepared (maybe DDP) module: gradients
        self.jvp_student = self._student_denoiser(unwrapped)  # never the DDP wrapper inside torch.func.jvp
        self.ema_network.to(self.accelerator.device)
        self.ema_student = self._student_denoiser(self.ema_network)

    # ------------------------------------------------------------------ the step

    @property
    def unguided(self) -> bool:
        """Whether every teacher guidance scale this run can draw is 1 (no CFG: one teacher forward, not two)."""
        scales = self.config.guidance_scales if self.embeds_guidance else (self.sample_w,)
        return all(w == 1 for w in scales)

    def draw_guidance(self, batch_size: int, device: torch.device) -> Tensor:
        """w per sample, uniform over `guidance_scales` (a student without embedding distils `sample_w`)."""
        if not self.embeds_guidance:
            return torch.full((batch_size,), self.sample_w, device=device)
        scales = torch.tensor(self.config.guidance_scales, device=device, dtype=torch.float32)
        return scales[torch.randint(0, len(scales), (batch_size,), device=device)]

    def loss(self, name: str, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        config = self.config
        device = self.accelerator.device
        x0 = sample_latents({k: v.to(device) for k, v in batch.items() if k.startswith("latent_")})
        batch_size = x0.shape[0]
        cond = batch_conditioning(batch).to(device)
        if name == "discriminator":
            return self.discriminator_loss(x0, cond)
        if config.scm_weight == 0:  # LADD alone: no sCM term, no JVP
            w = self.draw_guidance(batch_size, device)
            adv = self.adversarial_loss(x0, cond, w)
            return {"loss": config.adversarial_weight * adv, "adversarial": adv.detach()}
        uncond = self.training_data.uncond(batch_size)
        z = torch.randn_like(x0)
        s = sample_time(batch_size, config.p_mean, config.p_std, config.sigma_data, device=device)
        w = self.draw_guidance(batch_size, device)
        r = tangent_warmup(step, config.tangent_warmup_steps)
        out = scm_step(
            student=self.student,
            jvp_student=self.jvp_student,
            teacher=self.teacher,
            logvar_head=self.models["logvar"],
            x0=x0,
            z=z,
            s=s,
            w=None if self.unguided else w,  # decided once from the config: no host sync in the step
            embed=self.guidance_input(w),
            cond=cond,
            uncond=uncond,
            r=r,
            c=config.tangent_norm_c,
            sigma_data=config.sigma_data,
            time_delta=self.time_delta,
        )
        logs = {
            "loss": out.loss,
            "tangent_norm": out.g.detach().flatten(1).norm(dim=1).mean(),
            "logvar": out.logvar.detach().mean(),
            "r": torch.tensor(r),
        }
        if not config.adversarial:
            return logs
        # the student's loss = scm_weight L_sCM + adversarial_weight L_adv (SANA-Sprint: 1 and 0.5), same w
        adv = self.adversarial_loss(x0, cond, w)
        loss = config.scm_weight * out.loss + config.adversarial_weight * adv
        return {**logs, "loss": loss, "scm": out.loss.detach(), "adversarial": adv.detach()}

    # ------------------------------------------------------------------ LADD

    def adversarial_x0(self, student: Denoiser, x0: Tensor, cond: Conditioning, w: Tensor) -> Tensor:
        """The student's clean estimate for LADD (`sdtoolkit.distill.ladd.student_x0`), TrigFlow scale."""
        from sdtoolkit.distill.ladd import student_x0

        c = self.config
        s = sample_time(x0.shape[0], c.p_mean, c.p_std, c.sigma_data, device=x0.device)
        embed = self.guidance_input(w)
        return student_x0(student, x0, s, cond, embed, c.largest_time, c.largest_time_prob, c.sigma_data)

    def adversarial_loss(self, x0: Tensor, cond: Conditioning, w: Tensor) -> Tensor:
        """L_adv = -mean D(x_D) of the student's x0_hat re-noised at s_D (`sdtoolkit.distill.ladd`), with gradient
        into the student through the frozen teacher's features."""
        from sdtoolkit.distill.ladd import discriminator_time, ladd_generator_loss

        config = self.config
        x0_hat = self.adversarial_x0(self.student, x0, cond, w)
        s_D = discriminator_time(
            x0.shape[0], config.discriminator_p_mean, config.discriminator_p_std, config.sigma_data, device=x0.device
        )
        heads = self.models["discriminator"]
        real = config.sigma_data * x0.float() if config.mixed_batches else None
        return ladd_generator_loss(self.backbone, heads, x0_hat, cond, s_D, config.sigma_data, x0_real=real)

    def discriminator_loss(self, x0: Tensor, cond: Conditioning) -> dict[str, Tensor]:
        """The heads' hinge loss on the student's x0_hat (no gradient; fresh w) against the real x0, both re-noised
        at one s_D; optionally text-misaligned reals as extra fakes and R1 (SANA-Sprint's D phase)."""
        from sdtoolkit.distill.ladd import discriminator_time, ladd_discriminator_loss, misaligned_fakes

        config, sd, device = self.config, self.config.sigma_data, x0.device
        n = x0.shape[0]
        w = self.draw_guidance(n, device)
        with torch.no_grad():
            x0_fake = self.adversarial_x0(self.jvp_student, x0, cond, w)
        s_D = discriminator_time(n, config.discriminator_p_mean, config.discriminator_p_std, sd, device=device)
        misaligned = None
        if config.misaligned_pairs and n > 1:  # SANA-Sprint skips them for a batch of one
            s_shift = discriminator_time(n, config.discriminator_p_mean, config.discriminator_p_std, sd, device=device)
            misaligned = (misaligned_fakes(sd * x0.float()), s_shift)
        return ladd_discriminator_loss(
            self.backbone,
            self.models["discriminator"],
            x0_fake,
            sd * x0.float(),
            cond,
            s_D,
            misaligned=misaligned,
            r1_weight=config.r1_weight,
            sigma_data=sd,
            mixed=config.mixed_batches,
        )

    def after_step(self, name: str, step: int) -> None:
        if name != "student":
            return
        self.ema.update(self.unwrapped("student"))
        self.ema.copy_to(self.ema_network)

    def checkpoint_objects(self) -> list[Any]:
        return [self.ema]

    def after_load(self) -> None:
        self.ema.copy_to(self.ema_network)

    # ------------------------------------------------------------------ sampling and saving

    @property
    def sampler(self) -> Denoiser:
        return self.ema_student if self.config.export_ema else self.jvp_student

    def sample(self, cond: Conditioning, uncond: Conditioning, generator: torch.Generator) -> Tensor:
        shape = self.latent_shape(cond.batch_size)
        device = self.accelerator.device
        noise = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
        embed = self.guidance_input(torch.full((shape[0],), self.sample_w, device=device))
        with torch.no_grad():
            return scm_sample(
                self.sampler, noise, cond, self.sampling_times(), generator, embed, self.config.sigma_data
            )

    def save_student(self, folder: Path) -> Any:
        from sdtoolkit.pipelines.export import ExportSpec

        config, family = self.config, self.family
        network = self.ema_network if config.export_ema else self.unwrapped("student")
        network.save_pretrained(Path(folder) / family.component, safe_serialization=True)
        times = self.sampling_times()[:-1].tolist()
        k = self.sample_steps
        w = self.sample_w
        guided = f"w in {list(config.guidance_scales)}" if self.embeds_guidance else f"w = {w} (distilled in)"
        about = "sCM (continuous-time consistency in TrigFlow, Lu & Song 2024; as SANA-Sprint)"
        if config.adversarial:  # LADD: heads on the frozen teacher's blocks, hinge loss
            ladd = f"LADD (adversarial weight {config.adversarial_weight}; heads on teacher blocks)"
            about = f"{about} + {ladd}" if config.scm_weight > 0 else ladd
        about = f"{about}, teacher guidance {guided}" if config.scm_weight > 0 else f"{about}, no teacher guidance"
        if family.name == "sana":
            return ExportSpec(
                method=self.name,
                student=family.component,
                pipeline_class="SanaSprintPipeline",
                scheduler_class="SCMScheduler",
                num_inference_steps=k,
                guidance_scale=w,
                scheduler_config={"sigma_data": config.sigma_data},
                call_kwargs=self.sana_call_kwargs(),
                notes=f"{about}, embedded (guidance = w * {config.guidance_embeds_scale}). TrigFlow times "
                f"{', '.join(f'{t:.4g}' for t in times)}.",
            )
        guidance = w if self.embeds_guidance else 1.0
        if isinstance(self.teacher.schedule, FlowSchedule):
            from sdtoolkit.distill.method import flow_export_fields

            flow_times = self.flow_times()
            return ExportSpec(
                method=self.name,
                student=family.component,
                num_inference_steps=k,
                guidance_scale=guidance,
                notes=f"{about}. Flow times {', '.join(f'{t:.4g}' for t in flow_times)} (x0 re-noised between "
                f"steps: stochastic_sampling).{DENSE_NOTE if self.dense_time else ''}",
                **flow_export_fields(self, flow_times, stochastic=k > 1),
            )
        note = ""
        if k > 1:
            note = f" Sampled with {k} TrigFlow steps during training; exported as its 1-step generator."
        return ExportSpec(
            method=self.name,
            student=family.component,
            pipeline_class=family.export_pipeline,
            scheduler_class="LCMScheduler",
            num_inference_steps=1,
            guidance_scale=guidance,
            scheduler_config={"original_inference_steps": 1},
            notes=f"{about}. A 1-step generator at s = pi/2, the teacher's noisiest time.{note}",
        )

    def sana_call_kwargs(self) -> dict[str, Any]:
        """SanaSprintPipeline call arguments beyond its defaults: the sampler's times where they differ from the
        stock 1.5708 / 1.3, and the training resolution where it is not a 1024-px bin of a 32-latent model."""
        config, k = self.config, self.sample_steps
        kwargs: dict[str, Any] = {}
        if config.max_time != 1.5708:
            kwargs["max_timesteps"] = config.max_time
        if k != 2:
            kwargs["intermediate_timesteps"] = None
        elif config.intermediate_time != 1.3:
            kwargs["intermediate_timesteps"] = config.intermediate_time
        shape = self.latent_shape(1)
        from sdtoolkit.models.loading import vae_scale_factor

        factor = vae_scale_factor(self.teacher.pipeline)
        height, width = shape[2] * factor, shape[3] * factor
        if self.teacher.base_model.config.sample_size != 32 or (height, width) != (1024, 1024):
            kwargs.update(height=height, width=width, use_resolution_binning=False)
        return kwargs
