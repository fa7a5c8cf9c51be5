"""Shared machinery of the distribution-matching trainers (DMD2, Flash-DMD, SiD): the few-step student on fixed
timesteps with backward simulation, the real/fake score pair, samples, teacher ODE pairs and the export spec.

The student is a full trainable copy of the teacher's backbone that maps pure noise at t_0 (and re-noised samples
at t_1 > ... > t_{k-1}) to clean latents. Its timesteps are exactly what a stock `LCMScheduler` with
`original_inference_steps = k` produces (999 for one step, 999/499 for two, 999/749/499/249 for four), so the
exported `StableDiffusionPipeline + LCMScheduler` samples the same chain: z ~ N(0, I) -> x0_0; x_{t_1} =
alpha_{t_1} x0_0 + sigma_{t_1} eps; ... (DMD2's multi-step sampler, Yin et al. 2024b, Sec. 4.5). A 1-step student
may instead sit on a lower timestep (`generator_timestep`), exported through a truncated stock LCMScheduler. On a
flow teacher (SD3, SANA, FLUX) the timesteps are the stock FlowMatch Euler k-step grid at the teacher's shift (FLUX:
at the training resolution) and the export is the family's stock pipeline with that scheduler, re-noising between
steps (`stochastic_sampling`); the student is saved as the family's network component (`unet/` or `transformer/`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sdtoolkit.core.config import (
    ADAM_BETA,
    AT_LEAST_1,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    SCHEDULE_STEPS,
    Range,
)
from sdtoolkit.core.denoiser import Conditioning, Denoiser
from sdtoolkit.core.sampling import few_step_sample, full_time
from sdtoolkit.core.schedules import NoiseSchedule, VPSchedule
from sdtoolkit.distill.config import MethodConfig, TrainConfig
from sdtoolkit.distill.method import DistillationMethod
from sdtoolkit.distill.score_distillation import (
    FakeScoreConfig,
    ScorePair,
    dmd_gradient,
    injection_loss,
    sample_timesteps,
)

__all__ = [
    "DistributionMatchingConfig",
    "DistributionMatchingMethod",
    "FewStepStudent",
    "RegressionConfig",
    "student_timesteps",
    "teacher_ode_samples",
]


def student_timesteps(num_steps: int, schedule: NoiseSchedule | None = None) -> list[int] | list[float]:
    """The student's fixed times, noisiest first: `schedule.student_timesteps(num_steps)` (the teacher's schedule
    owns time). For VP they are the integer timesteps of a stock `LCMScheduler` with `original_inference_steps =
    num_steps` (so the exported pipeline uses the same ones): 1 -> [999], 2 -> [999, 499], 4 -> [999, 749, 499,
    249] for 1000 training steps; for flow, the stock FlowMatch Euler times (1 -> [1.0]). Without `schedule`: SD's
    VP schedule of 1000 steps."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if schedule is None:
        schedule = VPSchedule.from_config({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012})
    times = schedule.student_timesteps(num_steps)
    return [int(t) for t in times] if isinstance(schedule, VPSchedule) else times


class FewStepStudent:
    """A k-step generator on fixed timesteps t_0 > ... > t_{k-1} around a student `Denoiser`.

    Randomness comes from torch's global RNG unless a `generator` is passed (sampling for grids/validation).
    """

    def __init__(self, denoiser: Denoiser, timesteps: list[int] | list[float]):
        denoiser.schedule.check_time(torch.tensor(timesteps, dtype=torch.float64), "student timesteps")
        self.denoiser = denoiser
        self.timesteps = list(timesteps)

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def _t(self, i: int, x: Tensor) -> Tensor:
        return full_time(self.timesteps[i], x)

    def x0(self, x_t: Tensor, i: int, cond: Conditioning) -> Tensor:
        """The student's clean-sample prediction at its i-th timestep."""
        return self.denoiser.predict(x_t, self._t(i, x_t), cond).x0

    def renoise(self, x0: Tensor, i: int, generator: torch.Generator | None = None) -> Tensor:
        """x_{t_i} = alpha_{t_i} x0 + sigma_{t_i} eps with fresh eps (LCMScheduler.step's re-noising)."""
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return self.denoiser.add_noise(x0, eps, self._t(i, x0))

    def simulate(self, z: Tensor, cond: Conditioning, steps: int) -> Tensor:
        """Backward simulation (DMD2 Sec. 4.5): run the student's own chain from pure noise z for `steps` steps
        without gradients and return its input at step `steps` (x_{t_steps})."""
        return few_step_sample(self.denoiser, z, cond, self.timesteps, until=steps)

    def sample(self, z: Tensor, cond: Conditioning, generator: torch.Generator | None = None) -> Tensor:
        """The full k-step chain from z (what the exported pipeline does), clean latents out."""
        return few_step_sample(self.denoiser, z, cond, self.timesteps, generator)

    def generate(
        self,
        z: Tensor,
        cond: Conditioning,
        index: int | None = None,
        real_latents: Tensor | None = None,
    ) -> tuple[Tensor, int]:
        """A training sample with gradients through the last student forward only.

        Step i is drawn uniformly from the student's steps unless given; its input is z for i = 0, else the
        backward-simulated x_{t_i} (or, with `real_latents`, the forward-noised real latents: DMD2 without
        backward simulation). Returns (x0 with grad, i)."""
        if index is None:
            index = int(torch.randint(self.num_steps, ()).item())
        if index == 0:
            x = z
        elif real_latents is not None:
            x = self.renoise(real_latents, index)
        else:
            x = self.simulate(z, cond, index)
        return self.x0(x, index, cond), index


@torch.no_grad()
def teacher_ode_samples(
    scores: ScorePair,
    z: Tensor,
    cond: Conditioning,
    uncond: Conditioning,
    guidance_scale: float,
    num_steps: int = 50,
    scheduler_config: Any = None,
) -> Tensor:
    """The teacher's deterministic DDIM (eta = 0, Song et al. 2021, Eq. 12; the Euler step for flow) solution from
    noise z on the stock DDIMScheduler grid (flow: the FlowMatch Euler grid) for `num_steps`, with CFG:
    x_{t'} = alpha_{t'} x0_hat + sigma_{t'} eps_hat. Gives DMD's noise -> image regression pairs."""
    teacher = scores.teacher
    if isinstance(teacher.schedule, VPSchedule):
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config(dict(scheduler_config or {}))
        scheduler.set_timesteps(num_steps)
        timesteps = [float(t) for t in scheduler.timesteps]
    else:  # flow / TrigFlow: the stock Euler grid of the teacher's own schedule (the same update, x0 and eps form)
        timesteps = [float(t) for t in teacher.schedule.grid(num_steps).flip(0)]
    x = z
    for j, t in enumerate(timesteps):
        tt = torch.full((z.shape[0],), t, device=z.device)
        prediction = scores.real(x, tt, cond, uncond=uncond, guidance_scale=guidance_scale)
        if j == len(timesteps) - 1:
            return prediction.x0
        t_next = torch.full_like(tt, timesteps[j + 1])
        x = teacher.add_noise(prediction.x0, prediction.eps, t_next)
    return x


REGRESSION_PAIRS_NAME = "regression_pairs.safetensors"
"""File in the run folder holding the regression pairs (reused on resume)."""


def hash_prompts(prompts: list[str]) -> str:
    """A stable fingerprint of the prompt list (the pairs' prompt rows index it)."""
    import hashlib

    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]


@dataclass
class DistributionMatchingConfig(MethodConfig):
    """Settings shared by the distribution-matching methods (defaults: DMD2 on SD1.5, Yin et al. 2024b)."""

    BOUNDS = {
        "regression_steps": SCHEDULE_STEPS,  # checked against the teacher's scheduler once it is loaded
        "num_steps": Range(1, 8),
        "generator_timestep": Range(1, 999),
        "learning_rate": POSITIVE,
        "fake_learning_rate": POSITIVE,
        "fake_updates_per_generator": AT_LEAST_1,
        "fake_rank": AT_LEAST_1,
        "real_guidance_scale": NON_NEGATIVE,
        "min_t": FRACTION,
        "max_t": FRACTION,
        "adam_beta1": ADAM_BETA,
        "adam_beta2": ADAM_BETA,
        "weight_decay": NON_NEGATIVE,
        "ema_decay": Range(0, 1, high_open=True),  # 0: no EMA
        "regression_weight": NON_NEGATIVE,
        "regression_pairs": AT_LEAST_1,
    }

    num_steps: int = 1
    """Student steps k (1-8); timesteps = LCMScheduler(original_inference_steps=k): 999 | 999,499 | 999,749,499,249."""
    generator_timestep: int | None = None
    """1-step students only: the timestep the generator is conditioned on, its input still pure noise z ~ N(0, I);
    None = T - 1 (999). A lower one lets the eps-parameterised generator carry more of the image
    (x0 = (z - sigma_t eps) / alpha_t; alpha_999 = 0.068, alpha_625 = 0.37 for SD's schedule): DMD2's SDXL 1-step
    model uses 399, SiD-LSG 625 (with input sigma_625 z). Exported with a stock LCMScheduler whose 1-step default is
    exactly this timestep (`lcm_single_step_schedule`)."""
    learning_rate: float = 1e-5
    """Generator learning rate (DMD2 SD1.5 from scratch: 1e-5)."""
    fake_learning_rate: float = 1e-5
    """Fake-score (and its discriminator head) learning rate."""
    fake_updates_per_generator: int = 10
    """Two time-scale update rule: fake-score updates per generator update (DMD2: 10 for SD1.5, 5 for SDXL)."""
    fake_score: str = "lora"
    """`lora` (adapter on the teacher's own backbone) or `full` (a trainable copy, as in the papers)."""
    fake_rank: int = 64
    """LoRA rank of the fake score."""
    real_guidance_scale: float = 1.75
    """CFG scale of the real score (diffusers convention; DMD2: 1.75 for SD1.5, 8 for SDXL)."""
    min_t: float = 0.02
    """Lowest time of the distribution-matching loss, as a fraction of the schedule (DMD2: 0.02)."""
    max_t: float = 0.98
    """Highest time of the distribution-matching loss, as a fraction of the schedule (DMD2: 0.98)."""
    backward_simulation: bool = True
    """Multi-step students: feed step i the student's own backward-simulated x_{t_i} (DMD2 Sec. 4.5) instead of
    forward-noised real latents."""
    adam_beta1: float = 0.9
    """Adam beta1 of both optimizers."""
    adam_beta2: float = 0.999
    """Adam beta2 of both optimizers."""
    weight_decay: float = 0.01
    """AdamW weight decay of both optimizers (DMD2: 0.01)."""
    ema_decay: float = 0.99
    """Decay of an EMA of the generator, updated after every generator update (with the warm-up min(decay,
    (1 + n) / (10 + n))); samples, validation and the export use the EMA weights. 0 disables it (then the online
    generator is exported). SiD and FastGen's DMD2 keep a generator EMA; DMD2's SD1.5 code exports the online one."""


@dataclass
class RegressionConfig(DistributionMatchingConfig):
    """Distribution matching plus DMD v1's optional regression to the teacher's own noise -> image map (Yin et al.
    2024a, Eq. 9): data-free, since the pairs come from the teacher (DMD2 and SiD)."""

    regression_weight: float = 0.0
    """Weight of the regression loss on teacher ODE pairs, on the scale of the method's own generator loss: DMD2 a
    mean over elements, SiD a per-sample sum over elements like its loss (DMD v1: 0.25 with LPIPS; 0 = off)."""
    regression_pairs: int = 256
    """How many (noise, teacher output) pairs are generated at the start for the regression loss."""
    regression_steps: int = 50
    """DDIM steps of the teacher for those pairs."""


class DistributionMatchingMethod(DistillationMethod):
    """Base class: student + score pair + per-step sample stash + sampling + export. Subclasses write the losses."""

    config_class = DistributionMatchingConfig
    find_unused_parameters = True

    @classmethod
    def check_config(cls, config: DistributionMatchingConfig, train: TrainConfig) -> None:
        # single values are checked by the config's BOUNDS when it is built; what spans fields is checked here
        if config.fake_score not in ("lora", "full"):
            raise ValueError(f"--fake-score {config.fake_score!r}: choose lora or full")
        if config.fake_score == "lora" and train.teacher_offload:
            raise ValueError(
                "--teacher-offload with --fake-score lora: the LoRA fake score trains on the teacher's own backbone, "
                "so the teacher cannot leave the device; use --fake-score full or drop --teacher-offload"
            )
        if not config.min_t < config.max_t:
            raise ValueError(f"--min-t {config.min_t} / --max-t {config.max_t}: need 0 <= min-t < max-t <= 1")
        if config.generator_timestep is not None and config.num_steps != 1:
            raise ValueError(
                f"--generator-timestep {config.generator_timestep} is for 1-step students; got --num-steps "
                f"{config.num_steps} (multi-step students use the stock LCMScheduler timesteps)"
            )

    @classmethod
    def check_teacher(cls, config: DistributionMatchingConfig, train: TrainConfig, pipeline: Any) -> None:
        from sdtoolkit.core.schedules import schedule_from_config

        schedule = schedule_from_config(pipeline.scheduler)
        if config.generator_timestep is not None and not isinstance(schedule, VPSchedule):
            raise ValueError(
                f"--generator-timestep {config.generator_timestep} is an integer VP timestep; this teacher's "
                f"schedule is {type(schedule).__name__} (times in [{schedule.t_min:g}, {schedule.t_max:g}]): leave "
                "it unset (the 1-step student then starts at t = t_max)"
            )

    # ------------------------------------------------------------------ networks

    def build(self) -> dict[str, nn.Module]:
        config = self.config
        teacher = self.teacher
        # 1. the student: a full copy of the plain teacher backbone, made BEFORE the fake adapter is attached
        # (its OptimizerSpec has finite_gradients: NaN/inf gradient entries become finite before clipping, SiD-LSG)
        student_unet = copy.deepcopy(teacher.base_model).requires_grad_(True).train()
        # 2. the frozen teacher and the fake score on it
        teacher.freeze()
        fake_config = FakeScoreConfig(kind=config.fake_score, rank=config.fake_rank, **self.fake_score_overrides())
        self.scores = ScorePair(teacher, fake_config)
        if config.generator_timestep is not None:
            if not isinstance(teacher.schedule, VPSchedule):
                raise ValueError(
                    f"--generator-timestep {config.generator_timestep} is an integer VP timestep; this teacher's "
                    f"schedule is {type(teacher.schedule).__name__} (times in [{teacher.schedule.t_min:g}, "
                    f"{teacher.schedule.t_max:g}]): leave it unset"
                )
            self.timesteps = [int(config.generator_timestep)]
        else:
            self.timesteps = student_timesteps(config.num_steps, teacher.schedule)
        self.ema = None
        if config.ema_decay > 0:
            from sdtoolkit.core.ema import EMA

            self.ema = EMA(student_unet, decay=config.ema_decay, warmup=True)
        modules = {"student": student_unet, "fake_score": self._fake_module()}
        modules.update(self.extra_modules())
        self._built = modules  # optimizers() runs before setup(): it reads the parameters from here
        return modules

    def fake_score_overrides(self) -> dict[str, Any]:
        """Extra `FakeScoreConfig` fields of a subclass."""
        return {}

    def extra_modules(self) -> dict[str, nn.Module]:
        """Further trainable networks of a subclass (discriminators)."""
        return {}

    def _fake_module(self) -> nn.Module:
        return self.teacher.base_model if self.scores.config.kind == "lora" else self.scores._fake_backbone

    def setup(self, models: dict[str, nn.Module]) -> None:
        super().setup(models)
        # route calls through the prepared (possibly DDP-wrapped) modules
        if self.scores.config.kind == "lora":
            self.teacher.model = models["fake_score"]
        else:
            self.scores.fake_denoiser.model = models["fake_score"]
        self.student = FewStepStudent(self.teacher.with_model(models["student"]), self.timesteps)
        self.head = models.get("discriminator")
        self._stash: dict[tuple[int, int], Tensor] = {}
        self.pairs = None
        if getattr(self.config, "regression_weight", 0) > 0:
            self.pairs = self._regression_pairs(self.config.regression_pairs)

    @torch.no_grad()
    def _regression_pairs(self, count: int) -> dict[str, Tensor]:
        """(z, prompt row, teacher DDIM output) triples, drawn from a generator seeded independently of training.

        Generating them is the teacher's full ODE solve per pair (minutes for thousands), so they are written to
        the run folder (`regression_pairs.safetensors`, keyed by what determines them) and read back on resume."""
        from safetensors.torch import load_file, save_file
        from tqdm.auto import tqdm

        text = self.training_data.text
        key = {
            "count": str(count),
            "steps": str(self.config.regression_steps),
            "guidance": repr(float(self.config.real_guidance_scale)),
            "latent_shape": repr(tuple(self.latent_shape(1))[1:]),
            "prompts": hash_prompts(text.prompts),
        }
        folder = getattr(self.accelerator, "project_dir", None)
        path = Path(folder) / REGRESSION_PAIRS_NAME if folder else None
        if path is not None and path.is_file():
            from safetensors import safe_open

            with safe_open(str(path), "pt") as handle:
                stored = handle.metadata() or {}
            if all(stored.get(k) == v for k, v in key.items()):
                return load_file(str(path))
        generator = torch.Generator().manual_seed(1234)
        rows = torch.randint(len(text.prompts), (count,), generator=generator)
        z = torch.randn(self.latent_shape(count), generator=generator)
        outputs = []
        bar = tqdm(total=count, desc="teacher ODE pairs", unit="pair", disable=not self.accelerator.is_main_process)
        for start in range(0, count, 32):
            idx = rows[start : start + 32]
            zz = z[start : start + 32].to(self.accelerator.device)
            x0 = teacher_ode_samples(
                self.scores,
                zz,
                self.training_data.conditioning(idx),
                self.uncond(len(idx)),
                self.config.real_guidance_scale,
                self.config.regression_steps,
                self.teacher.pipeline.scheduler.config,
            )
            outputs.append(x0.cpu())
            bar.update(len(idx))
        bar.close()
        pairs = {"z": z, "rows": rows, "x0": torch.cat(outputs)}
        if path is not None and self.accelerator.is_main_process:
            partial = path.with_suffix(".partial")
            save_file(pairs, str(partial), metadata=key)
            partial.replace(path)
        return pairs

    def regression_loss(self, batch_size: int, reduction: str = "mean") -> Tensor:
        """DMD v1's regression: the student's one-step output from a stored noise vs the teacher's ODE output
        (MSE on latents; `reduction="sum"` sums over each sample's elements and averages over the batch)."""
        pairs = self.pairs
        idx = torch.randint(len(pairs["z"]), (batch_size,))
        device = self.accelerator.device
        cond = self.training_data.conditioning(pairs["rows"][idx])
        x = self.student.x0(pairs["z"][idx].to(device), 0, cond)
        squared = (x.float() - pairs["x0"][idx].to(device).float()) ** 2
        return squared.mean() if reduction == "mean" else squared.flatten(1).sum(1).mean()

    def after_step(self, name: str, step: int) -> None:
        """Generator EMA update after each (synced) generator step."""
        if name == "generator" and self.ema is not None:
            self.ema.update(self.unwrapped("student"))

    def checkpoint_objects(self) -> list[Any]:
        return [] if self.ema is None else [self.ema]

    def generator_weights(self) -> nn.Module:
        """The generator to sample and export: a copy holding the EMA weights, or the online student."""
        model = self.unwrapped("student")
        if self.ema is None:
            return model
        averaged = copy.deepcopy(model)
        self.ema.copy_to(averaged)
        return averaged

    def _adam(self) -> dict[str, Any]:
        c = self.config
        return {"betas": (c.adam_beta1, c.adam_beta2), "weight_decay": c.weight_decay}

    def _generator_adam(self) -> dict[str, Any]:
        """The generator's optimizer settings: `_adam()` plus SiD-LSG's finite gradients (NaN -> 0, inf -> 1e5)."""
        return {**self._adam(), "finite_gradients": True}

    # ------------------------------------------------------------------ per-step helpers

    def noise(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(self.latent_shape(batch_size), generator=generator, device=self.accelerator.device)

    def uncond(self, batch_size: int) -> Conditioning:
        return self.training_data.uncond(batch_size)

    def stash(self, batch: dict[str, Tensor], step: int, x: Tensor) -> None:
        """Keeps this step's generator samples (detached) for the fake-score update of the same micro-batch."""
        self._stash = {(step, id(batch)): x.detach()}

    def stashed(self, batch: dict[str, Tensor], step: int) -> Tensor | None:
        return self._stash.get((step, id(batch)))

    def distribution_matching_loss(self, x: Tensor, cond: Conditioning, uncond: Conditioning) -> dict[str, Tensor]:
        """DMD2's generator loss on samples x: t ~ U[min_t, max_t], x_t = alpha_t sg(x) + sigma_t eps, the real
        (guided) and fake x0 at x_t without gradient, and the injection loss of `dmd_gradient`."""
        c = self.config
        teacher = self.teacher
        t = sample_timesteps(teacher.schedule, x.shape[0], c.min_t, c.max_t, device=x.device)
        with torch.no_grad():
            x_t = teacher.add_noise(x.detach(), torch.randn_like(x), t)
            x0_real = self.scores.real(x_t, t, cond, uncond=uncond, guidance_scale=c.real_guidance_scale).x0
            x0_fake = self.scores.fake(x_t, t, cond).x0
            grad = dmd_gradient(x.detach(), x0_real, x0_fake)
        return {"loss_dm": injection_loss(x, grad), "dm_grad_norm": grad.flatten(1).norm(dim=1).mean()}

    # ------------------------------------------------------------------ sampling and export

    @torch.no_grad()
    def sample(self, cond: Conditioning, uncond: Conditioning, generator: torch.Generator) -> Tensor:
        model = self.generator_weights()
        student = FewStepStudent(self.teacher.with_model(model), self.timesteps)
        was_training = model.training
        model.eval()
        try:
            z = torch.randn(
                self.latent_shape(cond.batch_size), generator=generator, device=generator.device, dtype=torch.float32
            ).to(self.accelerator.device)
            return student.sample(z, cond.to(self.accelerator.device), generator)
        finally:
            model.train(was_training)

    def save_student(self, folder: Path) -> Any:
        from sdtoolkit.pipelines.export import ExportSpec, lcm_single_step_schedule

        from sdtoolkit.core.schedules import FlowSchedule
        from sdtoolkit.distill.method import flow_export_fields

        family = self.teacher.family
        model = self.generator_weights()
        model.save_pretrained(Path(folder) / family.component, safe_serialization=True)
        k = self.config.num_steps
        steps = ",".join(f"{t:.4g}" if isinstance(t, float) else str(t) for t in self.timesteps)
        notes = (
            f"A {k}-step generator on the fixed timesteps {steps} ({type(self).__doc__.splitlines()[0].strip()}). "
            "CFG is distilled in: sample with guidance_scale=1."
        )
        if isinstance(self.teacher.schedule, FlowSchedule):  # the stock FlowMatch Euler k-step grid, re-noised
            fields = flow_export_fields(self, [float(t) for t in self.timesteps], stochastic=k > 1)
            return ExportSpec(
                method=self.name,
                student=family.component,
                num_inference_steps=k,
                guidance_scale=1.0,
                notes=notes,
                **fields,
            )
        if self.config.generator_timestep is None:
            schedule = {"original_inference_steps": k}
        else:
            schedule = lcm_single_step_schedule(self.timesteps[0], self.teacher.pipeline.scheduler.config)
        return ExportSpec(
            method=self.name,
            student=family.component,
            pipeline_class=family.export_pipeline,
            scheduler_class="LCMScheduler",
            num_inference_steps=k,
            guidance_scale=1.0,
            scheduler_config=schedule,
            notes=notes,
        )
