"""Which stock diffusers pipeline class and scheduler config make an exported student's *default* call,
`DiffusionPipeline.from_pretrained(folder)(prompt)`, give the trained result.

Stock defaults (diffusers 0.42): `StableDiffusionPipeline` runs 50 steps with classifier-free guidance 7.5 unless
the UNet has a guidance embedding (`time_cond_proj_dim`), in which case it skips CFG and feeds `guidance_scale - 1`
to the embedding; `LatentConsistencyModelPipeline` runs 4 steps, never runs CFG, and needs that embedding. Few-step
students have CFG distilled in, so:

- **no CFG by default**: a student without a w-embedding gets one whose projection weights are zero
  (`with_zero_guidance_embedding`): `timestep_cond` adds exactly 0 to the time embedding, so outputs are unchanged
  bit for bit, `guidance_scale` has no effect, and both stock pipelines skip CFG. Students with a trained
  w-embedding (LCM, PCM) keep it: `guidance_scale` stays LCM's w + 1.
- **deterministic samplers** (a 1-step generator: DMD2, SiD, Flash-DMD with one step; phased PCM, TCD with
  eta = 0) go through `StableDiffusionPipeline` + `TCDScheduler` (eta = 0, the pipeline's default) with a
  step-function noise schedule (`tcd_padded_schedule`): its default 50-step call runs the trained steps, and
  every other step goes from x_t to x0 and back to the same t with the same eps, leaving the latents unchanged
  (up to float rounding). The trained step count (the model card's call) runs without the padding.
- **stochastic multi-step samplers** (LCM's consistency sampling, DMD2/Flash-DMD with k >= 2 steps: re-noise
  with fresh noise between steps) go through `LatentConsistencyModelPipeline` + `LCMScheduler`, whose 4-step
  default is the trained schedule when the student has 4 steps; other step counts keep their schedule at
  `num_inference_steps=k` (the model card's call) and sample 4 steps of the same grid by default.

SDXL students take the same plans with `StableDiffusionXLPipeline` for both (`SDXL_PIPELINES`: 50 steps by default,
CFG skipped for UNets with a guidance embedding, as StableDiffusionPipeline): a stochastic student's default call
then runs 50 LCMScheduler steps of a grid that holds its schedule, not the trained sampler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_STEPS = 50
"""`StableDiffusionPipeline.__call__`'s default num_inference_steps."""
LCM_PIPELINE_STEPS = 4
"""`LatentConsistencyModelPipeline.__call__`'s default num_inference_steps."""
SD_PIPELINE_GUIDANCE = 7.5
LCM_PIPELINE_GUIDANCE = 8.5
ZERO_EMBEDDING_DIM = 256
"""Width of the zero guidance embedding given to students without one (LCM's width)."""

__all__ = [
    "SDXL_PIPELINES",
    "SD_PIPELINES",
    "StockPipelines",
    "lcm_default_original_steps",
    "stock_plan",
    "tcd_padded_schedule",
    "trained_timesteps",
    "with_zero_guidance_embedding",
]


@dataclass(frozen=True)
class StockPipelines:
    """The stock pipelines a VP family's students export to, with their `__call__` defaults."""

    deterministic: str = "StableDiffusionPipeline"
    """For deterministic samplers (with `TCDScheduler`)."""
    deterministic_steps: int = DEFAULT_STEPS
    deterministic_guidance: float = SD_PIPELINE_GUIDANCE
    stochastic: str = "LatentConsistencyModelPipeline"
    """For stochastic multi-step samplers (with `LCMScheduler`)."""
    stochastic_steps: int = LCM_PIPELINE_STEPS
    stochastic_guidance: float = LCM_PIPELINE_GUIDANCE


SD_PIPELINES = StockPipelines()
"""SD 1.x/2.x."""
SDXL_PIPELINES = StockPipelines("StableDiffusionXLPipeline", 50, 5.0, "StableDiffusionXLPipeline", 50, 5.0)
"""SDXL: diffusers has no SDXL LatentConsistencyModelPipeline; StableDiffusionXLPipeline (50 steps, guidance 5.0,
CFG skipped for UNets with `time_cond_proj_dim`) takes both schedulers."""


def _teacher_betas(teacher_scheduler_config: Any):
    """The teacher's betas (float32, as diffusers' schedulers compute them; zero-SNR rescaling included)."""
    from diffusers import LCMScheduler

    scheduler = LCMScheduler.from_config(dict(teacher_scheduler_config or {}))
    return scheduler.betas.clone(), int(scheduler.config.num_train_timesteps)


def trained_timesteps(scheduler_class: str, teacher_scheduler_config: Any, overrides: dict[str, Any], steps: int):
    """The timesteps a stock `scheduler_class` built from the teacher's config with `overrides` samples in `steps`
    steps (what the student's ExportSpec from its trainer runs)."""
    import diffusers

    scheduler = getattr(diffusers, scheduler_class).from_config(dict(teacher_scheduler_config or {}), **overrides)
    scheduler.set_timesteps(steps)
    return [int(t) for t in scheduler.timesteps]


def tcd_padded_schedule(
    timesteps: list[int],
    teacher_scheduler_config: Any,
    original_steps: int,
    final_alpha: float | None = None,
    default_steps: int = DEFAULT_STEPS,
) -> tuple[dict[str, Any], bool] | None:
    """`TCDScheduler` overrides whose stock `default_steps`-step call runs the deterministic (eta = 0, DDIM) sampler
    on `timesteps` (descending) exactly, and whose `len(timesteps)`-step call is that schedule without padding.

    TCDScheduler samples `num_inference_steps` points of its `original_inference_steps` grid and steps from each to
    the next one with the DDIM map x_s = sqrt(a_s) x0 + sqrt(1 - a_s) eps (eta = 0, the pipeline's default). The
    noise schedule here is a step function: alphas_cumprod'(t) = alphas_cumprod(t_k) for the largest trained
    t_k <= t, and `final_alpha` below the last trained step (1: clean, a 1-step generator's x0; None: the
    teacher's alphas_cumprod(0), where the trained phased sampler ends). Every grid point that is not a trained
    timestep shares its alphas_cumprod with the point it steps to, so its step is x0 and back with the same eps:
    the latents stay unchanged (up to float rounding); the UNet sees each trained timestep once with the teacher's
    noise level at it. A 1-step student gets T' = t + 1 train steps and a grid of every step, so any step count
    gives its 1-step image. Returns (overrides, whether the N-step call must pass `timesteps=`: when no
    `original_inference_steps` >= 50 yields them as its N-step subset but one contains them), or None.
    """
    from diffusers import TCDScheduler

    needs_timesteps = False
    ts = [int(t) for t in timesteps]
    if not ts or any(a <= b for a, b in zip(ts, ts[1:])) or ts[-1] < 0:
        raise ValueError(f"timesteps must be distinct, descending and >= 0, got {timesteps}")
    config = dict(teacher_scheduler_config or {})
    teacher = TCDScheduler.from_config(config)
    T = int(teacher.config.num_train_timesteps)
    if ts[0] >= T:
        raise ValueError(f"timestep {ts[0]} is outside the teacher's {T} train steps")
    alphas_cumprod = teacher.alphas_cumprod.double()
    floor = float(alphas_cumprod[0]) if final_alpha is None else float(final_alpha)
    if len(ts) == 1:
        total = original = ts[0] + 1
        if original < default_steps:
            return None
    else:
        total, original, covering = T, None, None
        for candidate in [original_steps, *range(default_steps, T + 1)]:
            if candidate < default_steps or candidate > T:
                continue
            probe = TCDScheduler.from_config(config, original_inference_steps=candidate)
            probe.set_timesteps(len(ts))
            if [int(t) for t in probe.timesteps] == ts:
                original = candidate
                break
            if covering is None:
                probe.set_timesteps(default_steps)
                covering = candidate if set(ts) <= {int(t) for t in probe.timesteps} else None
        if original is None and covering is None:
            return None
        if original is None:  # the default visits every trained timestep; N steps need `timesteps=` in the call
            original, needs_timesteps = covering, True
    target = [floor] * total
    edges = sorted(ts)
    for i, t_k in enumerate(edges):
        end = edges[i + 1] if i + 1 < len(edges) else total
        target[t_k:end] = [float(alphas_cumprod[t_k])] * (end - t_k)
    betas = [1.0 - target[0]] + [1.0 - target[t] / target[t - 1] for t in range(1, total)]
    return {
        "num_train_timesteps": total,
        "original_inference_steps": original,
        "trained_betas": betas,
        "rescale_betas_zero_snr": False,
        "steps_offset": 1,
        "clip_sample": False,
        "thresholding": False,
        "set_alpha_to_one": True,
    }, needs_timesteps


def lcm_default_original_steps(
    timesteps: list[int], teacher_scheduler_config: Any, original_steps: int, default_steps: int = LCM_PIPELINE_STEPS
) -> int | None:
    """An `original_inference_steps` for LCMScheduler that keeps `len(timesteps)`-step sampling on `timesteps` and
    lets the stock `default_steps`-step call run (LCMScheduler refuses more steps than `original_inference_steps`):
    `original_steps` itself when it is >= default_steps, else the smallest larger grid that contains the schedule
    (a 2-step student on 999, 499: 4, whose 4-step default is 999, 749, 499, 249). None if there is none."""
    from diffusers import LCMScheduler

    if original_steps >= default_steps:
        return original_steps
    config = dict(teacher_scheduler_config or {})
    total = int(config.get("num_train_timesteps", 1000))
    for original in range(default_steps, total + 1):
        scheduler = LCMScheduler.from_config(config, original_inference_steps=original)
        scheduler.set_timesteps(len(timesteps))
        if [int(t) for t in scheduler.timesteps] == list(timesteps):
            return original
    return None


def with_zero_guidance_embedding(unet: Any, dim: int = ZERO_EMBEDDING_DIM) -> Any:
    """A copy of `unet` (a UNet2DConditionModel without `time_cond_proj_dim`) with a guidance embedding whose
    projection is zero: the same outputs for every `timestep_cond`, and stock pipelines skip CFG for it."""
    from torch import nn

    cls = type(unet)
    config = dict(unet.config)
    config["time_cond_proj_dim"] = dim
    new = cls.from_config(config)
    missing, unexpected = new.load_state_dict(unet.state_dict(), strict=False)
    if unexpected or any("cond_proj" not in name for name in missing):
        raise RuntimeError(f"adding a guidance embedding changed other weights: {missing} / {unexpected}")
    nn.init.zeros_(new.time_embedding.cond_proj.weight)
    return new.to(dtype=next(unet.parameters()).dtype)


def stock_plan(
    spec: Any, teacher_scheduler_config: Any, w_embedded: bool, stock: StockPipelines = SD_PIPELINES
) -> dict[str, Any]:
    """The export plan for a trainer's ExportSpec: pipeline/scheduler class and config, the card's call, and what
    the stock default call does. Keys: pipeline_class, scheduler_class, scheduler_config, num_inference_steps,
    guidance_scale, call_kwargs, timesteps, zero_embedding, default_call, default_exact. `stock`: the family's
    pipelines (SD's by default, `SDXL_PIPELINES`)."""
    steps = int(spec.num_inference_steps)
    overrides = dict(spec.scheduler_config)
    timesteps = trained_timesteps(spec.scheduler_class, teacher_scheduler_config, overrides, steps)
    consistency = spec.method in ("lcm", "pcm") and spec.scheduler_class == "LCMScheduler"
    phased = spec.scheduler_class == "TCDScheduler"
    plan: dict[str, Any] = {
        "num_inference_steps": steps,
        "guidance_scale": float(spec.guidance_scale),
        "call_kwargs": dict(spec.call_kwargs),
        "timesteps": timesteps,
        "zero_embedding": not w_embedded,
    }
    note = _guidance_note(w_embedded, spec.guidance_scale, stock.deterministic_guidance)
    if phased or (steps == 1 and not consistency):
        original = int(overrides.get("original_inference_steps", 50))
        final = None if phased else 1.0
        padded = tcd_padded_schedule(timesteps, teacher_scheduler_config, original, final, stock.deterministic_steps)
        if padded is not None:
            tcd, needs_timesteps = padded
            plan.update(pipeline_class=stock.deterministic, scheduler_class="TCDScheduler", scheduler_config=tcd)
            plan["call_kwargs"] = {"eta": 0.0, "timesteps": timesteps} if needs_timesteps else {"eta": 0.0}
            if steps == 1:
                what = (
                    f"every step count gives the 1-step image on t = {timesteps[0]} (the steps after it see a clean "
                    "sample and leave it unchanged)"
                )
            else:
                padding = stock.deterministic_steps - steps
                what = (
                    f"the {steps} trained steps on {timesteps} plus {padding} steps that leave the latents unchanged "
                    "(up to float rounding)"
                )
            plan["default_call"] = (
                f"`pipe(prompt)` runs {stock.deterministic}'s default {stock.deterministic_steps} TCDScheduler steps "
                f"with eta=0: {what}, so it gives the image of the call above at {stock.deterministic_steps}x the "
                f"UNet evaluations{note}."
            )
            plan["default_exact"] = not w_embedded
            return plan
    if spec.scheduler_class == "LCMScheduler":  # stochastic multi-step (or no TCD grid fits)
        lcm = dict(overrides)
        original = int(lcm.get("original_inference_steps", 50))
        if "trained_betas" not in lcm:
            chosen = lcm_default_original_steps(timesteps, teacher_scheduler_config, original, stock.stochastic_steps)
            if chosen is not None:
                lcm["original_inference_steps"] = original = chosen
        plan.update(pipeline_class=stock.stochastic, scheduler_class="LCMScheduler", scheduler_config=lcm)
        plan["call_kwargs"] = {}
        note = _guidance_note(w_embedded, spec.guidance_scale, stock.stochastic_guidance)
        default_steps = stock.stochastic_steps
        if original >= default_steps and steps == default_steps:
            plan["default_call"] = (
                f"`pipe(prompt)` runs {stock.stochastic}'s default {default_steps} LCMScheduler "
                f"steps, the trained schedule {timesteps}: the image of the call above{note}."
            )
            plan["default_exact"] = not w_embedded
        elif original >= default_steps:
            default = trained_timesteps("LCMScheduler", teacher_scheduler_config, lcm, default_steps)
            shown = default if len(default) <= 8 else f"[{default[0]}, {default[1]}, ..., {default[-1]}]"
            plan["default_call"] = (
                f"`pipe(prompt)` runs {stock.stochastic}'s default {default_steps} LCMScheduler "
                f"steps on {shown} instead of the trained {steps} on {timesteps}: a close image, not the same "
                f"one{note}. Pass the call above for the trained result."
            )
            plan["default_exact"] = False
        else:
            plan["default_call"] = (
                f"No stock default fits this schedule: pass the call above (`pipe(prompt)` asks LCMScheduler for "
                f"{default_steps} steps of a {original}-step grid and raises)."
            )
            plan["default_exact"] = False
        return plan
    plan.update(  # a schedule no stock default fits: keep the trainer's choice, the call is required
        pipeline_class=spec.pipeline_class,
        scheduler_class=spec.scheduler_class,
        scheduler_config=overrides,
        default_call="No stock default fits this schedule: pass the call above.",
        default_exact=False,
    )
    return plan


def _guidance_note(w_embedded: bool, guidance_scale: float, pipeline_default: float) -> str:
    if not w_embedded:
        return ""
    return (
        f", except for w: without guidance_scale the pipeline feeds its default {pipeline_default:g} "
        f"(w = {pipeline_default - 1:g}) to the student's guidance embedding instead of the trained "
        f"{guidance_scale:g} (w = {guidance_scale - 1:g})"
    )
