"""Export of a trained few-step student to a complete, stock diffusers pipeline folder with its scheduler baked in.

Any method's student plugs in through an `ExportSpec` (written as `export.json` beside the student weights):
a full UNet (`student/unet/`, diffusers format) or LoRA weights (`student/pytorch_lora_weights.safetensors`,
diffusers/peft format), the pipeline class, the scheduler class and the overrides of the teacher's scheduler
config, and the exact call (steps, guidance, extra arguments). `export_pipeline` writes:

- the pipeline (`model_index.json`, `unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`) that
  `DiffusionPipeline.from_pretrained(folder)` loads with stock diffusers — no custom code, no hand-typed timesteps;
  a LoRA student is fused into `unet/` there;
- for LoRA students, also `pytorch_lora_weights.safetensors` at the top, which `pipe.load_lora_weights(folder)`
  accepts on the teacher pipeline;
- `training_config.json` (the resolved training configuration), `export.json` (the spec) and a model card
  `README.md` (teacher, method, steps, metrics, the exact call).

Which stock pipeline and scheduler (diffusers 0.42):

- LCM with a w-embedding (`time_cond_proj_dim`): `LatentConsistencyModelPipeline` (defaults to 4 steps) +
  `LCMScheduler`; call with `num_inference_steps` and `guidance_scale = w + 1` (fed to the embedding, no CFG);
- LCM(-LoRA) without w-embedding: `StableDiffusionPipeline` + `LCMScheduler`; `guidance_scale=1.0` (CFG off);
- phased (PCM), N phases: `StableDiffusionPipeline` + `TCDScheduler` (`eta=0`, deterministic: the pipeline's
  default); `num_inference_steps=N`, `guidance_scale=1.0`;
- fixed timesteps (DMD2's 999, 749, 499, 249): `StableDiffusionPipeline` + `LCMScheduler` with
  `original_inference_steps=4` (`lcm_schedule_for`); `num_inference_steps=4`, `guidance_scale=1.0`;
- a 1-step generator on a lower timestep t (DMD2's SDXL 399, SiD-LSG's 625): the same with the scheduler truncated
  to its first t + 1 betas (`lcm_single_step_schedule`), so its 1-step default is [t].

LatentConsistencyModelPipeline needs a UNet with `time_cond_proj_dim` and passes `eta=None` to the scheduler, so
students without w-embedding and TCD go through StableDiffusionPipeline (whose `eta` defaults to 0.0).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPEC_NAME = "export.json"
"""The ExportSpec file, beside the student weights and in every exported folder."""
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
"""diffusers' default LoRA file name (what `load_lora_weights(folder)` looks for)."""

__all__ = ["ExportSpec", "export_pipeline", "lcm_schedule_for", "lcm_single_step_schedule", "write_model_card"]


@dataclass
class ExportSpec:
    """How a trained student becomes a stock diffusers pipeline."""

    method: str
    """The distillation method (e.g. `lcm`)."""
    student: str
    """`unet` (a full UNet in `unet/`) or `lora` (`pytorch_lora_weights.safetensors`)."""
    pipeline_class: str
    """A diffusers pipeline class name, e.g. `LatentConsistencyModelPipeline` or `StableDiffusionPipeline`."""
    scheduler_class: str
    """A diffusers scheduler class name, e.g. `LCMScheduler` or `TCDScheduler`."""
    num_inference_steps: int
    """The step count the student was trained for (documented in the card; pass it in the call)."""
    guidance_scale: float = 1.0
    """The `guidance_scale` of the call (diffusers convention; for w-embedded students w + 1)."""
    scheduler_config: dict[str, Any] = field(default_factory=dict)
    """Overrides applied on top of the teacher's scheduler config (e.g. `original_inference_steps`)."""
    call_kwargs: dict[str, Any] = field(default_factory=dict)
    """Further call arguments (e.g. `eta`)."""
    teacher: str = ""
    """The teacher it was distilled from (builtin:shapes, a folder, a Hub id)."""
    trained_steps: int = 0
    """Optimizer steps trained."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Last validation metrics, for the model card."""
    notes: str = ""
    """Free text for the model card (method details)."""

    def save(self, folder: str | Path) -> None:
        Path(folder, SPEC_NAME).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> ExportSpec:
        path = Path(folder, SPEC_NAME)
        if not path.is_file():
            raise FileNotFoundError(f"{str(folder)!r} has no {SPEC_NAME}: it is not a saved student")
        values = json.loads(path.read_text())
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def call_arguments(self) -> dict[str, Any]:
        steps, guidance = self.num_inference_steps, self.guidance_scale
        return {"num_inference_steps": steps, "guidance_scale": guidance, **self.call_kwargs}


def lcm_schedule_for(timesteps: list[int], num_train_timesteps: int = 1000) -> dict[str, Any]:
    """LCMScheduler settings whose default schedule is exactly `timesteps` (descending): for evenly spaced
    trailing timesteps t_i = T - 1 - i T/n (e.g. DMD2's 999, 749, 499, 249) that is `original_inference_steps = n`.

    Returns `{"original_inference_steps": n}`; raises ValueError naming the closest valid schedule otherwise."""
    n = len(timesteps)
    k = num_train_timesteps // n
    expected = [num_train_timesteps - 1 - i * k for i in range(n)]
    if list(timesteps) != expected:
        raise ValueError(
            f"timesteps {list(timesteps)} are not a stock LCMScheduler schedule; the {n}-step one is {expected} "
            "(export other schedules with TCDScheduler(original_inference_steps=...) or a custom scheduler)"
        )
    return {"original_inference_steps": n}


def lcm_single_step_schedule(timestep: int, teacher_scheduler_config: Any) -> dict[str, Any]:
    """LCMScheduler overrides whose 1-step default schedule is `[timestep]` for any 0 < timestep < T, with the
    teacher's noise schedule unchanged: a generator conditioned on a lower timestep than T - 1 (DMD2's SDXL 1-step
    model uses 399, SiD-LSG 625) exports to a stock scheduler without hand-typed timesteps.

    A stock LCMScheduler with `original_inference_steps = 1` samples t = num_train_timesteps - 1, so the schedule is
    truncated to its first `timestep + 1` betas (`trained_betas`; alpha_bar_t = prod_{s <= t} (1 - beta_s) is
    unchanged for every t <= timestep). Zero-SNR rescaling, if the teacher uses it, is already in those betas."""
    from diffusers import LCMScheduler

    full = LCMScheduler.from_config(dict(teacher_scheduler_config or {}))
    T = full.config.num_train_timesteps
    if not 0 < timestep < T:
        raise ValueError(f"generator timestep {timestep} must be in [1, {T - 1}]")
    return {
        "num_train_timesteps": timestep + 1,
        "trained_betas": [float(b) for b in full.betas[: timestep + 1]],
        "rescale_betas_zero_snr": False,
        "original_inference_steps": 1,
    }


def _pipeline_class(name: str):
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None:
        raise ValueError(f"diffusers has no pipeline class {name!r}")
    return cls


def _scheduler(name: str, teacher_config: Any, overrides: dict[str, Any]):
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None:
        raise ValueError(f"diffusers has no scheduler class {name!r}")
    return cls.from_config(teacher_config, **overrides)


def export_pipeline(
    out_dir: str | Path,
    teacher: Any,
    student_dir: str | Path,
    spec: ExportSpec | None = None,
    training_config: dict[str, Any] | None = None,
) -> Path:
    """Writes a complete diffusers pipeline folder for the student saved in `student_dir`.

    Args:
        out_dir: the folder to write (replaced if it exists).
        teacher: the teacher pipeline, or its spec (`builtin:shapes`, folder, Hub id) to load it fresh; its VAE,
            text encoder, tokenizer and scheduler config are reused. Pass a spec when the loaded pipeline's UNet
            carries training adapters.
        student_dir: a folder written by `DistillationMethod.save_student` (with `export.json`).
        spec: the ExportSpec (default: `student_dir/export.json`).
        training_config: the resolved training configuration, saved as `training_config.json`.
    """
    from diffusers import UNet2DConditionModel

    student_dir, out_dir = Path(student_dir), Path(out_dir)
    spec = spec or ExportSpec.load(student_dir)
    if isinstance(teacher, str):
        from sdtoolkit.models.loading import load_teacher_pipeline

        teacher = load_teacher_pipeline(teacher)
    components = {
        "vae": teacher.vae,
        "text_encoder": teacher.text_encoder,
        "tokenizer": teacher.tokenizer,
        "scheduler": _scheduler(spec.scheduler_class, teacher.scheduler.config, spec.scheduler_config),
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }
    if spec.student == "unet":
        unet = UNet2DConditionModel.from_pretrained(student_dir / "unet")
    elif spec.student == "lora":
        unet = UNet2DConditionModel.from_config(teacher.unet.config)
        unet.load_state_dict(_base_unet_state_dict(teacher.unet))
    else:
        raise ValueError(f"ExportSpec.student={spec.student!r}; expected 'unet' or 'lora'")
    pipeline = _pipeline_class(spec.pipeline_class)(unet=unet, **components)
    pipeline.to("cpu")
    for module in (pipeline.unet, pipeline.vae, pipeline.text_encoder):
        module.float()  # (`.to(dtype)` on diffusers models warns spuriously)
    if spec.student == "lora":
        # load through the public API (proves the file loads), fuse into the UNet, drop the adapter modules
        pipeline.load_lora_weights(str(student_dir), weight_name=LORA_WEIGHT_NAME)
        pipeline.fuse_lora()
        pipeline.unload_lora_weights()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    pipeline.save_pretrained(out_dir, safe_serialization=True)
    if spec.student == "lora":
        shutil.copy2(student_dir / LORA_WEIGHT_NAME, out_dir / LORA_WEIGHT_NAME)
    spec.save(out_dir)
    if training_config is not None:
        (out_dir / "training_config.json").write_text(json.dumps(training_config, indent=2) + "\n")
    write_model_card(out_dir, spec, training_config or {})
    return out_dir


def _base_unet_state_dict(unet: Any) -> dict[str, Any]:
    """The teacher UNet's own weights, without peft adapter layers (`base_layer.` prefixes removed) and in fp32."""
    state = {}
    for key, value in unet.state_dict().items():
        if "lora_" in key:
            continue
        state[key.replace(".base_layer.", ".")] = value.detach().to("cpu", dtype=value.dtype).float()
    return state


def write_model_card(out_dir: str | Path, spec: ExportSpec, training_config: dict[str, Any]) -> Path:
    """A README.md model card: front matter, method, teacher, training, metrics and the exact call."""
    out_dir = Path(out_dir)
    train = training_config.get("train", {})
    method_config = training_config.get(spec.method, {})
    call = ", ".join(f"{k}={v!r}" for k, v in spec.call_arguments().items())
    lines = [
        "---",
        "library_name: diffusers",
        f"pipeline_tag: text-to-image\ntags: [sdtoolkit, {spec.method}, few-step, distillation]",
        "---",
        "",
        f"# {spec.method.upper()} student of `{spec.teacher or train.get('teacher', 'unknown teacher')}`",
        "",
        f"Distilled with sdtoolkit (`sdtoolkit distill {spec.method}`) for {spec.trained_steps} steps. "
        f"Sample it in **{spec.num_inference_steps} steps** with `{spec.pipeline_class}` + `{spec.scheduler_class}`.",
        "",
    ]
    if spec.notes:
        lines += [spec.notes, ""]
    lines += [
        "## Usage",
        "",
        "```python",
        "import torch",
        "from diffusers import DiffusionPipeline",
        "",
        'pipe = DiffusionPipeline.from_pretrained("PATH/TO/THIS/FOLDER")',
        "generator = torch.Generator().manual_seed(0)",
        f'image = pipe("a red cube", {call}, generator=generator).images[0]',
        "```",
        "",
        f"The scheduler config in `scheduler/` already holds the training schedule ({_schedule_note(spec)}); "
        "no timesteps need to be passed.",
        "",
    ]
    if spec.student == "lora":
        lines += [
            "### As a LoRA on the teacher",
            "",
            "The folder also holds the LoRA (`pytorch_lora_weights.safetensors`, diffusers format):",
            "",
            "```python",
            f"from diffusers import DiffusionPipeline, {spec.scheduler_class}",
            "",
            f'pipe = DiffusionPipeline.from_pretrained("{_teacher_path_hint(spec, train)}")',
            f'pipe.scheduler = {spec.scheduler_class}.from_pretrained("PATH/TO/THIS/FOLDER", subfolder="scheduler")',
            'pipe.load_lora_weights("PATH/TO/THIS/FOLDER")',
            f'image = pipe("a red cube", {call}).images[0]',
            "```",
            "",
        ]
    lines += ["## Training", "", "| setting | value |", "|---|---|"]
    lines += [f"| teacher | `{spec.teacher or train.get('teacher', '')}` |", f"| method | `{spec.method}` |"]
    lines += [f"| steps | {spec.trained_steps} |", f"| student | {spec.student} |"]
    for key in ("batch_size", "gradient_accumulation_steps", "mixed_precision", "seed"):
        if key in train:
            lines.append(f"| {key} | {train[key]} |")
    for key, value in method_config.items():
        lines.append(f"| {spec.method}.{key} | {value} |")
    lines += ["", "The full resolved configuration is in `training_config.json`.", ""]
    if spec.metrics:
        lines += ["## Metrics (validation at the end of training)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in spec.metrics.items()]
        lines.append("")
    path = out_dir / "README.md"
    path.write_text("\n".join(lines))
    return path


def _schedule_note(spec: ExportSpec) -> str:
    def shown(key: str, value: Any) -> str:
        if key == "trained_betas":
            return f"the teacher's first {len(value)} betas"
        return f"{key}={value}"

    settings = ", ".join(shown(k, v) for k, v in spec.scheduler_config.items())
    return f"{spec.scheduler_class}({settings})" if settings else spec.scheduler_class


def _teacher_path_hint(spec: ExportSpec, train: dict[str, Any]) -> str:
    teacher = spec.teacher or train.get("teacher", "TEACHER")
    if teacher == "builtin:shapes":
        return "<sdtoolkit>/assets/shapes-teacher"
    return teacher
