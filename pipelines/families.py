"""What the export needs to know about each model family: the stock pipeline a student is written as, the name of
its network component, how that pipeline is built from the teacher's components and the student network, and, for
the flow-matching families, which `FlowMatchEulerDiscreteScheduler` config (and call) samples the trained times.

| family | network (`student/<name>/`) | stock pipeline | scheduler of the export |
|---|---|---|---|
| `sd` | `unet` | `StableDiffusionPipeline` / `LatentConsistencyModelPipeline` | TCD / LCM (`stock_defaults`) |
| `sdxl` | `unet` | `StableDiffusionXLPipeline` | TCD / LCM (`stock_defaults`, SDXL's defaults) |
| `sd3` | `transformer` | `StableDiffusion3Pipeline` | `FlowMatchEulerDiscreteScheduler` |
| `sana` | `transformer` | `SanaPipeline` | `FlowMatchEulerDiscreteScheduler` (DPM-Solver's `flow_shift` -> `shift`) |
| `flux` | `transformer` | `FluxPipeline` | `FlowMatchEulerDiscreteScheduler` (dynamic shifting kept when exact) |

Flow students (Esser et al. 2024 rectified-flow parameterisation x_t = (1 - sigma) x0 + sigma eps, network output
v = eps - x0) are sampled by `FlowMatchEulerDiscreteScheduler`: deterministic students (a 1-step generator from
sigma = 1, phased students) by its Euler step x_next = x + (sigma_next - sigma) v, which from sigma to 0 is x0 =
x - sigma v; multi-step consistency-style students by `stochastic_sampling=True`: x0 = x - sigma v, then
x_next = (1 - sigma_next) x0 + sigma_next eps with fresh eps, the toolkit's `multistep_sample(renoise="fresh")`.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "EXPORT_FAMILIES",
    "FamilyExport",
    "build_pipeline",
    "check_family",
    "flow_plan",
    "flow_scheduler",
    "flow_scheduler_config",
    "load_student_network",
]

FLOW_SCHEDULER = "FlowMatchEulerDiscreteScheduler"
TIME_TOLERANCE = 1e-5
"""Largest difference in sigma between the trained times and the stock scheduler's (float32 rounding)."""


@dataclass(frozen=True)
class FamilyExport:
    """One family as the export sees it."""

    name: str
    """`ModelFamily.name` (`sdtoolkit.core.families`)."""
    pipeline_class: str
    """The stock diffusers text-to-image pipeline of the family."""
    network: str
    """The pipeline's network component (`unet` or `transformer`), also the folder of a full student."""
    network_class: str
    """The diffusers class of that network."""
    flow: bool
    """Whether students sample with `FlowMatchEulerDiscreteScheduler` (else the VP schedulers of `stock_defaults`)."""

    @property
    def lora_argument(self) -> str:
        """The `save_lora_weights` argument that holds the network's LoRA layers."""
        return f"{self.network}_lora_layers"


EXPORT_FAMILIES: dict[str, FamilyExport] = {
    "sd": FamilyExport("sd", "StableDiffusionPipeline", "unet", "UNet2DConditionModel", False),
    "sdxl": FamilyExport("sdxl", "StableDiffusionXLPipeline", "unet", "UNet2DConditionModel", False),
    "sd3": FamilyExport("sd3", "StableDiffusion3Pipeline", "transformer", "SD3Transformer2DModel", True),
    "sana": FamilyExport("sana", "SanaPipeline", "transformer", "SanaTransformer2DModel", True),
    "flux": FamilyExport("flux", "FluxPipeline", "transformer", "FluxTransformer2DModel", True),
}
"""Every family a student can be exported from, by `ExportSpec.family`."""


def check_family(spec: Any, teacher: Any = None) -> FamilyExport:
    """The family of `spec` (`ExportSpec.family`, `sd` when absent), checked against `spec.student` and, if given,
    the teacher pipeline's network. Raises a one-line ValueError naming the valid choices."""
    name = getattr(spec, "family", None) or "sd"
    family = EXPORT_FAMILIES.get(name)
    if family is None:
        raise ValueError(f"ExportSpec.family={name!r} is not exportable; valid families: {', '.join(EXPORT_FAMILIES)}")
    if spec.student not in (family.network, "lora"):
        raise ValueError(
            f"ExportSpec.student={spec.student!r} for family {name!r}; expected {family.network!r} (a full network "
            f"in student/{family.network}/) or 'lora'"
        )
    if teacher is not None:
        from sdtoolkit.core.families import family_for

        network = getattr(teacher, family.network, None)
        found = family_for(network).name if network is not None else type(teacher).__name__
        if found != name:
            raise ValueError(f"ExportSpec.family={name!r} but the teacher's network is of family {found!r}")
        if name == "sana" and network.config.get("guidance_embeds"):
            raise ValueError("SANA transformers with guidance_embeds (SANA-Sprint) need SanaSprintPipeline: not yet")
    return family


def _network_class(family: FamilyExport):
    import diffusers

    return getattr(diffusers, family.network_class)


def base_state_dict(network: Any) -> dict[str, Any]:
    """The teacher network's own weights, without peft adapter layers (`base_layer.` prefixes removed), in fp32."""
    state = {}
    for key, value in network.state_dict().items():
        if "lora_" in key:
            continue
        state[key.replace(".base_layer.", ".")] = value.detach().to("cpu").float()
    return state


def load_student_network(family: FamilyExport, teacher: Any, student_dir: Any, spec: Any, lora_file: str) -> Any:
    """The student network: `student_dir/<network>/` (full), or the teacher's network with the LoRA of
    `student_dir/lora_file` loaded through the family's stock `load_lora_weights`, fused, and its adapter modules
    dropped (fused in fp32, then in the teacher network's dtype)."""
    from pathlib import Path

    cls = _network_class(family)
    if spec.student == family.network:
        return cls.from_pretrained(Path(student_dir) / family.network)
    base = getattr(teacher, family.network)
    dtype = next(base.parameters()).dtype
    network = cls.from_config(base.config)
    network.load_state_dict(base_state_dict(base))
    fuser = build_pipeline(family, teacher, network.float(), teacher.scheduler)
    fuser.load_lora_weights(str(student_dir), weight_name=lora_file)
    fuser.fuse_lora(components=[family.network])
    fuser.unload_lora_weights()
    return getattr(fuser, family.network).to(dtype=dtype)


def build_pipeline(family: FamilyExport, teacher: Any, network: Any, scheduler: Any) -> Any:
    """The family's stock pipeline from the teacher's components (text encoders, tokenizers, VAE, optional image
    encoders) and config values (e.g. SDXL's `force_zeros_for_empty_prompt`), with `network` and `scheduler`."""
    import diffusers

    cls = getattr(diffusers, family.pipeline_class)
    modules, options = cls._get_signature_keys(cls)
    components = dict(teacher.components)
    kwargs: dict[str, Any] = {}
    for name in modules:
        if name == family.network:
            kwargs[name] = network
        elif name == "scheduler":
            kwargs[name] = scheduler
        elif name in components:
            kwargs[name] = components[name]
        elif name in cls._optional_components:
            kwargs[name] = None
        else:
            raise ValueError(f"the teacher pipeline {type(teacher).__name__} has no {name!r} for {cls.__name__}")
    for name in options:
        if name in teacher.config and not name.startswith("_") and name not in components:
            kwargs[name] = teacher.config[name]
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------------------------------
# flow families: the FlowMatchEulerDiscreteScheduler that samples the trained times
# ---------------------------------------------------------------------------------------------------------------


def flow_scheduler_config(teacher_scheduler_config: Any) -> dict[str, Any]:
    """The teacher's scheduler config as a `FlowMatchEulerDiscreteScheduler` config: its own keys when it is one;
    SANA's stock `DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=s)` becomes `shift=s` (the same
    static time shift sigma' = s sigma / (1 + (s - 1) sigma)); FLUX's dynamic shifting keys are kept."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = dict(teacher_scheduler_config or {})
    keys = set(inspect.signature(FlowMatchEulerDiscreteScheduler.__init__).parameters) - {"self"}
    flow = {k: v for k, v in config.items() if k in keys}
    if config.get("_class_name") != FLOW_SCHEDULER and "flow_shift" in config:
        flow["shift"] = float(config["flow_shift"])
    return flow


def flow_scheduler(teacher_scheduler_config: Any, overrides: dict[str, Any]) -> Any:
    """The export's `FlowMatchEulerDiscreteScheduler`: the teacher's flow config with the spec's overrides."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = {**flow_scheduler_config(teacher_scheduler_config), **overrides}
    return FlowMatchEulerDiscreteScheduler.from_config(config)


def stock_sigmas(family: FamilyExport, scheduler: Any, steps: int, sigmas: list[float] | None, mu: float | None):
    """The sigmas (without the final 0) the family's stock pipeline samples in `steps` steps: `FluxPipeline` passes
    `sigmas = linspace(1, 1 / steps, steps)` unless given (and unless the config has `use_flow_sigmas`), the others
    use the scheduler's own grid; then the scheduler shifts them (static `shift`, or `mu` with dynamic shifting)."""
    import numpy as np

    if sigmas is None and family.name == "flux" and not scheduler.config.get("use_flow_sigmas"):
        sigmas = list(np.linspace(1.0, 1 / steps, steps))
    if scheduler.config.get("use_dynamic_shifting"):
        scheduler.set_timesteps(None if sigmas is not None else steps, sigmas=sigmas, mu=mu)
    else:
        scheduler.set_timesteps(None if sigmas is not None else steps, sigmas=sigmas)
    return [float(s) for s in scheduler.sigmas[:-1]]


def _mus(config: Any) -> list[float | None]:
    """Two resolution shifts of a dynamic-shifting config (its smallest and largest images), else [None]."""
    if not config.get("use_dynamic_shifting"):
        return [None]
    return [float(config.get("base_shift", 0.5)), float(config.get("max_shift", 1.15))]


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= TIME_TOLERANCE for x, y in zip(a, b))


def trained_sigmas(spec: Any, teacher_scheduler: Any) -> list[float]:
    """The student's trained times as sigmas in [0, 1], noisiest first: the trainer's `spec.timesteps` (sigmas, or
    the scheduler's sigma * T) when it wrote them, else the toolkit's k-step student times on the teacher's schedule
    (`NoiseSchedule.student_timesteps`, what the distribution-matching trainers use; 1 step: sigma = 1)."""
    from sdtoolkit.core.schedules import schedule_from_config

    schedule = schedule_from_config(teacher_scheduler)
    if spec.timesteps:
        times = [float(t) for t in spec.timesteps]
        total = getattr(schedule, "num_train_timesteps", 1000)
        return times if max(times) <= 1.0 + 1e-6 else [t / total for t in times]
    steps = int(spec.num_inference_steps)
    try:
        return [float(t) for t in schedule.student_timesteps(steps)]
    except ValueError:  # a resolution-dependent shift (FLUX) needs the training resolution: only 1 step is known
        if steps == 1:
            return [1.0]
        raise ValueError(
            "the teacher's flow schedule shifts time by resolution (use_dynamic_shifting): the trainer must write "
            "the trained sigmas to ExportSpec.timesteps"
        ) from None


def flow_plan(family: FamilyExport, spec: Any, teacher: Any) -> dict[str, Any]:
    """The export plan of a flow student: `FlowMatchEulerDiscreteScheduler` overrides (and, if needed, `sigmas` in
    the call) under which the family's stock pipeline samples exactly the trained sigmas, the card's call, and what
    the stock default call does. Tried in order, the first that reproduces the trained times at every resolution:

    1. the teacher's scheduler config with the trainer's overrides (its shift; FLUX's dynamic shifting);
    2. a static shift equal to the one the toolkit trained with (`FlowSchedule.shift`), dynamic shifting off;
    3. 2. plus `sigmas=` in the call (the trained sigmas before that shift): FluxPipeline's own k-step grid
       linspace(1, 1/k, k) differs from the scheduler's, which the toolkit's flow grid follows.

    Raises ValueError naming the trained and the stock times when none does."""
    from sdtoolkit.core.schedules import FlowSchedule, schedule_from_config

    config = teacher.scheduler.config
    steps = int(spec.num_inference_steps)
    trained = trained_sigmas(spec, teacher.scheduler)
    if len(trained) != steps:
        raise ValueError(f"ExportSpec.timesteps {spec.timesteps} do not hold num_inference_steps={steps} times")
    overrides = dict(spec.scheduler_config)
    if "flow_shift" in dict(config) and "shift" not in overrides:
        overrides["shift"] = float(dict(config)["flow_shift"])
    call_kwargs = dict(spec.call_kwargs)
    candidates = [(overrides, None)]
    schedule = schedule_from_config(teacher.scheduler)
    shift = schedule.shift if isinstance(schedule, FlowSchedule) else 1.0
    static = {**overrides, "shift": float(shift), "use_dynamic_shifting": False}
    candidates += [(static, None), (static, [s / (shift - (shift - 1) * s) for s in trained])]
    tried = []
    for candidate, sigmas in candidates:
        scheduler = flow_scheduler(config, candidate)
        got = [stock_sigmas(family, scheduler, steps, sigmas, mu) for mu in _mus(scheduler.config)]
        tried.append(got[0])
        if all(_close(g, trained) for g in got):
            break
    else:
        raise ValueError(
            f"no FlowMatchEulerDiscreteScheduler config makes {family.pipeline_class} sample the trained sigmas "
            f"{[round(s, 6) for s in trained]} in {steps} steps (the stock grids: {tried})"
        )
    if sigmas is not None:
        call_kwargs["sigmas"] = [round(s, 8) for s in sigmas]
    notes = []
    teacher_shift = flow_scheduler(config, overrides).config
    same_shift = not teacher_shift.get("use_dynamic_shifting") and float(teacher_shift.get("shift", 1.0)) == shift
    if candidate is not overrides and not same_shift:  # say so only where the static shift differs from the teacher's
        was = (
            "dynamic (resolution-dependent) shifting"
            if teacher_shift.get("use_dynamic_shifting")
            else f"shift={teacher_shift.get('shift')}"
        )
        notes.append(
            f"The scheduler has a static shift={shift:g} instead of the teacher's {was}: the student was trained on "
            f"sdtoolkit's flow grid with shift={shift:g}, which the stock call then samples at every resolution."
        )
    if sigmas is not None:
        notes.append(
            f"The call passes `sigmas` because {family.pipeline_class}'s own {steps}-step grid is not the trained one."
        )
    plan = {
        "pipeline_class": family.pipeline_class,
        "scheduler_class": FLOW_SCHEDULER,
        "scheduler_config": candidate,
        "call_kwargs": call_kwargs,
        "timesteps": [round(float(t), 4) for t in scheduler.timesteps],
        "guidance_embedding": _flow_guidance(family, getattr(teacher, family.network)),
        "notes": " ".join([spec.notes, *notes]).strip(),
    }
    plan.update(_flow_default_call(family, spec, trained, sigmas is None and not call_kwargs))
    return plan


def _flow_guidance(family: FamilyExport, network: Any) -> str:
    """`guidance` when `guidance_scale` is the network's distilled guidance input (FLUX.1-dev's guidance_embeds),
    else empty (the stock pipeline's classifier-free guidance, skipped at guidance_scale <= 1)."""
    return "guidance" if family.name == "flux" and network.config.get("guidance_embeds") else ""


def _flow_default_call(family: FamilyExport, spec: Any, trained: list[float], plain: bool) -> dict[str, Any]:
    """What `pipe(prompt)` of the export does: the pipeline's default steps and guidance_scale."""
    import diffusers

    defaults = inspect.signature(getattr(diffusers, family.pipeline_class).__call__).parameters
    steps, guidance = defaults["num_inference_steps"].default, defaults["guidance_scale"].default
    if family.name == "flux":
        what = f"guidance_scale={guidance:g} (FLUX's guidance input; no classifier-free guidance)"
        same_guidance = math.isclose(guidance, spec.guidance_scale)
    else:
        what = f"guidance_scale={guidance:g} (classifier-free guidance: two transformer passes per step)"
        same_guidance = guidance <= 1 and spec.guidance_scale <= 1
    exact = plain and steps == spec.num_inference_steps and same_guidance
    text = f"`pipe(prompt)` runs {family.pipeline_class}'s default {steps} steps with {what}"
    text += ": the call above." if exact else ": not the trained sampler; pass the call above."
    if spec.scheduler_config.get("stochastic_sampling") and family.name in ("sd3", "flux"):
        text += (
            f" {family.pipeline_class} does not pass `generator` to the scheduler, so the fresh noise of each step "
            "comes from torch's global RNG: call `torch.manual_seed` before the call to repeat an image."
        )
    return {"default_call": text, "default_exact": exact}
