"""The model card (`README.md`) of an exported student, the teacher reference it names, and the scrubbing of the
training machine's paths from everything written into an exported folder."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

__all__ = ["scrub_machine_paths", "teacher_kind", "teacher_reference", "write_model_card"]

EXAMPLE_PROMPT = "a red cube, front view"
TOKENIZER_FILES = ("vocab.json", "tokenizer.json")
"""Vocabularies: their strings are tokens (`/`, `~`), never paths; not scrubbed."""
_WINDOWS_PATH = re.compile(r"^[A-Za-z]:[\\/]")


def _is_path(value: str) -> bool:
    return value.startswith(("/", "~", "\\\\")) or bool(_WINDOWS_PATH.match(value))


def _is_machine_path(value: str) -> bool:
    """An absolute path with at least two components (`/tmp/run`, `C:\\runs\\x`), or one that exists here; not
    a lone `/` or `~` (tokens)."""
    if not _is_path(value) or "\n" in value:
        return False
    return len(re.findall(r"[\\/]", value.rstrip("/\\"))) >= 2 or (len(value) > 2 and Path(value).exists())


def teacher_reference(teacher: str) -> str:
    """What a model card can name as the teacher: `builtin:NAME`, a Hub id (also recovered from a Hub cache folder
    `.../models--org--name/snapshots/...`), or the name of a local folder (never its absolute path)."""
    teacher = str(teacher or "").strip()
    if not teacher or teacher.startswith("builtin:"):
        return teacher or "unknown"
    parts = Path(teacher).parts
    for part in parts:
        if part.startswith("models--") and len(part) > len("models--"):
            return part[len("models--") :].replace("--", "/")
    if not _is_path(teacher) and not teacher.startswith(".") and not Path(teacher).exists() and len(parts) <= 2:
        return teacher  # a Hub id such as org/name
    return Path(teacher).name or "teacher"


def teacher_kind(teacher: str, reference: str) -> str:
    if reference.startswith("builtin:"):
        return "builtin"
    from_cache = any(part.startswith("models--") for part in Path(teacher).parts)
    if from_cache or not (_is_path(teacher) or Path(teacher).exists() or teacher.startswith(".")):
        return "hub"
    return "local"


def scrub_machine_paths(value: Any, teacher: str = "", reference: str = "") -> Any:
    """A copy of a JSON value in which no string is an absolute path of this machine: the teacher's folder (and
    anything under it) becomes its `teacher_reference`, any other absolute path its last component."""
    if isinstance(value, dict):
        return {k: scrub_machine_paths(v, teacher, reference) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_machine_paths(v, teacher, reference) for v in value]
    if not isinstance(value, str):
        return value
    if teacher and reference and (value == teacher or value.startswith(teacher.rstrip("/\\") + "/")):
        return reference
    if _is_machine_path(value):
        return Path(value).name
    return value


def scrub_json_files(folder: Path, teacher: str, reference: str) -> None:
    """Rewrites every JSON file under `folder` with `scrub_machine_paths` (diffusers and transformers write the
    folders they loaded from into `_name_or_path` / `name_or_path`)."""
    for path in sorted(folder.rglob("*.json")):
        if path.name in TOKENIZER_FILES:
            continue
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        scrubbed = scrub_machine_paths(data, teacher, reference)
        for key in ("_name_or_path", "name_or_path"):  # where it was loaded from: the teacher, by reference
            if isinstance(scrubbed, dict) and isinstance(scrubbed.get(key), str):
                scrubbed[key] = reference
        if scrubbed != data:
            path.write_text(json.dumps(scrubbed, indent=2) + "\n")


def _call(spec: Any, prompt: str = EXAMPLE_PROMPT) -> str:
    arguments = ", ".join(f"{k}={v!r}" for k, v in spec.call_arguments().items())
    return f'pipe("{prompt}", {arguments})' if arguments else f'pipe("{prompt}")'


def _prompt_format(reference: str, training_config: dict[str, Any]) -> str:
    train = training_config.get("train", {})
    if reference in ("builtin:shapes", "builtin:shapes-flow"):
        from sdtoolkit.data import COLOUR_NAMES, SHAPES, VIEWS

        return (
            "The teacher was trained on captions `a <colour> <shape>, <view> view` (e.g. "
            f"`{EXAMPLE_PROMPT}`): shapes {', '.join(SHAPES)}; colours {', '.join(COLOUR_NAMES)}; views "
            f"{', '.join(VIEWS)}. Other text is outside what it knows."
        )
    source = train.get("data") or train.get("prompts")
    distilled = f" The student was distilled on the prompts of `{Path(str(source)).name}`." if source else ""
    return (
        "Prompts in the teacher's own format (for Stable Diffusion models: natural-language captions in English, "
        f"see the teacher's model card).{distilled}"
    )


def _teacher_howto(kind: str, reference: str) -> str:
    if kind == "builtin":
        name = reference.split(":", 1)[1]
        return (
            f"`{reference}` is the small teacher shipped inside sdtoolkit: install sdtoolkit (`pip install -e .` in "
            f'its repository); every sdtoolkit command accepts `{reference}`, and `python -c "from '
            f"sdtoolkit.models.loading import builtin_model_path; print(builtin_model_path('{name}'))\"` prints its "
            "diffusers folder."
        )
    if kind == "hub":
        return f'`{reference}` is a Hugging Face Hub id: `DiffusionPipeline.from_pretrained("{reference}")`.'
    return (
        f"`{reference}` was a local diffusers folder on the training machine (not a Hub id): use your copy of "
        "that teacher wherever a teacher is needed (TEACHER in the code below)."
    )


FLOW_FAMILIES = ("sd3", "sana", "flux")


def _guidance_text(spec: Any, training_config: dict[str, Any]) -> str:
    method_config = training_config.get(spec.method, {})
    if spec.guidance_embedding == "guidance":
        return (
            f"`guidance_scale` is the transformer's distilled guidance input (FLUX.1-dev's `guidance_embeds`), not "
            f"classifier-free guidance: FluxPipeline runs one transformer pass per step (no CFG unless "
            f"`true_cfg_scale > 1` with a negative prompt). The student was trained with "
            f"guidance_scale={spec.guidance_scale:g}; FluxPipeline's own default is 3.5, so pass it."
        )
    if getattr(spec, "family", "sd") in FLOW_FAMILIES:
        return (
            f"Sample with guidance_scale={spec.guidance_scale:g}: CFG is distilled in, and {spec.pipeline_class} runs "
            "classifier-free guidance (a second transformer pass per step) only for guidance_scale > 1."
        )
    if spec.guidance_embedding == "w":
        w_min, w_max = method_config.get("w_min"), method_config.get("w_max")
        trained = (
            f" (trained on w in [{w_min}, {w_max}], guidance_scale {w_min + 1} to {w_max + 1})"
            if (isinstance(w_min, (int, float)) and isinstance(w_max, (int, float)))
            else ""
        )
        return (
            f"`guidance_scale` is fed to the student's guidance embedding as LCM's w = guidance_scale - 1{trained}; "
            "there is no classifier-free guidance pass (one UNet evaluation per step). The samples and metrics of "
            f"training used guidance_scale={spec.guidance_scale:g}; the pipeline's own default differs (8.5 for "
            "LatentConsistencyModelPipeline, 7.5 for StableDiffusionPipeline), so pass it."
        )
    if spec.guidance_embedding == "zero":
        return (
            "`guidance_scale` has no effect: classifier-free guidance is distilled into the student. `unet/` carries "
            "a guidance embedding (`time_cond_proj_dim`) whose weights are zero, only so that stock pipelines skip "
            "CFG (they do when the UNet has one); the UNet's outputs are those of the trained student bit for bit."
        )
    return f"Sample with guidance_scale={spec.guidance_scale:g} (CFG is distilled in)."


def _schedule_note(spec: Any) -> str:
    def shown(key: str, value: Any) -> str:
        if key == "trained_betas":
            return "a step-function noise schedule (`trained_betas`)"
        return f"{key}={value}"

    settings = ", ".join(shown(k, v) for k, v in spec.scheduler_config.items())
    return f"{spec.scheduler_class}({settings})" if settings else spec.scheduler_class


def write_model_card(out_dir: str | Path, spec: Any, training_config: dict[str, Any]) -> Path:
    """README.md: the exact call first, then what the default call does, the teacher, the prompt format, what
    guidance_scale means, the LoRA use, training settings and metrics. No path of the training machine."""
    out_dir = Path(out_dir)
    train = training_config.get("train", {})
    method_config = training_config.get(spec.method, {})
    teacher = str(spec.teacher or train.get("teacher", ""))
    reference = teacher_reference(teacher)
    kind = spec.teacher_source or teacher_kind(teacher, reference)
    video = spec.pipeline_class == "AnimateDiffPipeline"  # its call returns .frames (a list of frames per prompt)
    output, name = (".frames[0]", "frames") if video else (".images[0]", "image")
    timesteps = f"the timesteps {spec.timesteps}" if spec.timesteps else "its scheduler's own timesteps"
    lines = [
        "---",
        "library_name: diffusers",
        f"pipeline_tag: text-to-{'video' if video else 'image'}",
        f"tags: [sdtoolkit, {spec.method}, few-step, distillation]",
        "---",
        "",
        f"# {spec.method.upper()} student of `{reference}`",
        "",
        "```python",
        "import torch",
        "from diffusers import DiffusionPipeline",
        "",
        f'pipe = DiffusionPipeline.from_pretrained("PATH/TO/THIS/FOLDER"{_load_arguments(out_dir, spec)})',
        *_global_seed(spec),
        f"{name} = {_call(spec)[:-1]}, generator=torch.Generator().manual_seed(0)){output}",
        "```",
        "",
        f"This is the trained sampler: {spec.num_inference_steps} step(s) of `{spec.pipeline_class}` + "
        f"`{spec.scheduler_class}` on {timesteps}{_time_unit(spec) if spec.timesteps else ''}. {spec.default_call}",
        "",
        f"Distilled with sdtoolkit (`sdtoolkit distill {spec.method}`) for {spec.trained_steps} steps.",
        "",
    ]
    if spec.notes:
        lines += [spec.notes, ""]
    lines += [
        "## Teacher and prompts",
        "",
        _teacher_howto(kind, reference),
        "",
        _prompt_format(reference, training_config),
        "",
        "## guidance_scale",
        "",
        _guidance_text(spec, training_config),
        "",
        "## Scheduler",
        "",
        _scheduler_text(spec),
        "",
    ]
    if spec.student == "lora":
        teacher_arg = reference if kind != "local" else "TEACHER"
        keep = (
            "keep guidance_scale (FLUX's guidance input)"
            if spec.guidance_embedding == "guidance"
            else "(no guidance embedding there) pass guidance_scale=1 to keep CFG off"
        )
        lines += [
            "### As a LoRA on the teacher",
            "",
            "The folder also holds the LoRA (`pytorch_lora_weights.safetensors`, diffusers format); on the teacher "
            f"{keep}:",
            "",
            "```python",
            f"from diffusers import DiffusionPipeline, {spec.scheduler_class}",
            "",
            f'pipe = DiffusionPipeline.from_pretrained("{teacher_arg}")  # the teacher folder (see above)',
            f'pipe.scheduler = {spec.scheduler_class}.from_pretrained("PATH/TO/THIS/FOLDER", subfolder="scheduler")',
            'pipe.load_lora_weights("PATH/TO/THIS/FOLDER")',
            *_global_seed(spec),
            f"{name} = {_call_on_teacher(spec)}{output}",
            "```",
            "",
        ]
    lines += ["## Training", "", "| setting | value |", "|---|---|"]
    lines += [f"| teacher | `{reference}` |", f"| method | `{spec.method}` |"]
    lines += [f"| steps | {spec.trained_steps} |", f"| student | {spec.student} |"]
    for key in ("batch_size", "gradient_accumulation_steps", "mixed_precision", "seed"):
        if key in train:
            lines.append(f"| {key} | {train[key]} |")
    for key, value in method_config.items():
        value = scrub_machine_paths(value, teacher, reference)
        lines.append(f"| {spec.method}.{key} | {value} |")
    lines += ["", "The full resolved configuration is in `training_config.json`.", ""]
    if spec.metrics:
        lines += ["## Metrics (validation at the end of training)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in spec.metrics.items()]
        lines.append("")
    path = out_dir / "README.md"
    path.write_text("\n".join(lines))
    return path


def _load_arguments(out_dir: Path, spec: Any) -> str:
    """`, text_encoder_3=None, tokenizer_3=None` for components saved as absent that the pipeline class does not
    list as optional (an SD3 teacher without T5): stock `from_pretrained` needs them passed as None."""
    import diffusers

    try:
        index = json.loads((out_dir / "model_index.json").read_text())
    except (OSError, ValueError):
        return ""
    optional = getattr(getattr(diffusers, spec.pipeline_class, None), "_optional_components", [])
    absent = [k for k, v in index.items() if v == [None, None] and k not in optional and not k.startswith("_")]
    return "".join(f", {name}=None" for name in sorted(absent))


def _global_seed(spec: Any) -> list[str]:
    """`torch.manual_seed(0)` where the pipeline draws the re-noising of stochastic steps from torch's global RNG
    (StableDiffusion3Pipeline and FluxPipeline do not pass `generator` to the scheduler)."""
    stochastic = spec.scheduler_config.get("stochastic_sampling") and spec.num_inference_steps > 1
    if stochastic and getattr(spec, "family", "sd") in ("sd3", "flux"):
        return ["torch.manual_seed(0)  # the fresh noise of each step comes from torch's global RNG"]
    return []


def _time_unit(spec: Any) -> str:
    return " (sigma * 1000)" if getattr(spec, "family", "sd") in FLOW_FAMILIES else ""


def _scheduler_text(spec: Any) -> str:
    if getattr(spec, "family", "sd") not in FLOW_FAMILIES:
        return (
            f"`scheduler/` holds {_schedule_note(spec)}, built from the teacher's noise schedule so that the stock "
            "calls above sample the trained timesteps with the teacher's noise levels; no timesteps need to be "
            "passed. For other step counts, use the teacher's own scheduler config with the class above."
        )
    if spec.scheduler_config.get("stochastic_sampling"):
        step = (
            "each step takes x0 = x - sigma v from the velocity v and re-noises it to the next sigma with fresh "
            "noise (the trained multi-step sampler)"
        )
    else:
        step = "each step is an Euler step of the flow ODE; from sigma to 0 it is x0 = x - sigma v"
    passed = " (the call passes `sigmas`)" if "sigmas" in spec.call_kwargs else ""
    return (
        f"`scheduler/` holds {_schedule_note(spec)}, built from the teacher's scheduler config so that the call "
        f"above samples the trained sigmas{passed}: {step}. For other step counts, use the teacher's own scheduler."
    )


def _call_on_teacher(spec: Any) -> str:
    arguments = {**spec.call_arguments(), "guidance_scale": 1.0}
    if spec.guidance_embedding in ("w", "guidance"):
        arguments["guidance_scale"] = spec.guidance_scale
    return f'pipe("{EXAMPLE_PROMPT}", ' + ", ".join(f"{k}={v!r}" for k, v in arguments.items()) + ")"
