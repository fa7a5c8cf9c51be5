"""Export of a SANA sCM student (`sdtoolkit distill scm` on a SANA teacher) as a stock diffusers `SanaSprintPipeline`
folder with an `SCMScheduler`: `DiffusionPipeline.from_pretrained(folder)` loads it with no sdtoolkit code.

What the stock pipeline does (diffusers 0.42, `pipeline_sana_sprint.py` + `scheduling_scm.py`), and so what the
student must be: latents sigma_d n at s = max_timesteps (1.5708); per step the transformer gets
(x / sigma_d) sqrt(t^2 + (1 - t)^2) with the dense flow time t = sin s / (sin s + cos s) in [0, 1] as `timestep`
(not 1000 t) and `guidance = guidance_scale * guidance_embeds_scale`; its velocity becomes TrigFlow's F
(SANA-Sprint's conversion), x0 = cos(s) x - sin(s) sigma_d F, re-noised to the next time with fresh noise. So the
transformer needs `guidance_embeds=True` and a dense time input (`trainers.scm`, `dense_time`). The stock call's
defaults are 2 steps at (1.5708, 1.3), guidance_scale 4.5 and 1024 px with resolution binning (models with
`sample_size` 32); the trained values, where they differ, are in `ExportSpec.call_kwargs`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

__all__ = [
    "build_sana_sprint_pipeline",
    "check_sana_sprint_student",
    "sana_sprint_pipeline",
]


def check_sana_sprint_student(transformer: Any) -> None:
    """Refuses a transformer that stock SanaSprintPipeline cannot run as trained (no guidance input)."""
    if type(transformer).__name__ != "SanaTransformer2DModel":
        raise ValueError(f"SanaSprintPipeline takes a SanaTransformer2DModel, not {type(transformer).__name__}")
    if not transformer.config.get("guidance_embeds"):
        raise ValueError(
            "this SANA transformer has no guidance embedding (guidance_embeds=False); SanaSprintPipeline always "
            "feeds one: train the student with `sdtoolkit distill scm` (which adds it)"
        )


def build_sana_sprint_pipeline(teacher: Any, transformer: Any, scheduler_config: dict[str, Any] | None = None):
    """A `SanaSprintPipeline` from the teacher pipeline's tokenizer, Gemma text encoder and VAE, the student
    `transformer` and a stock `SCMScheduler` (`scheduler_config` overrides, e.g. `sigma_data`)."""
    from diffusers import SanaSprintPipeline, SCMScheduler

    check_sana_sprint_student(transformer)
    scheduler = SCMScheduler(**{"prediction_type": "trigflow", "sigma_data": 0.5, **(scheduler_config or {})})
    return SanaSprintPipeline(
        tokenizer=teacher.tokenizer,
        text_encoder=teacher.text_encoder,
        vae=teacher.vae,
        transformer=transformer,
        scheduler=scheduler,
    )


def sana_sprint_pipeline(teacher: Any, student_dir: str | Path, spec: Any) -> tuple[Any, Any]:
    """(final spec, SanaSprintPipeline) for the student in `student_dir` (written by `SCM.save_student`:
    `transformer/` and `export.json`): what `sdtoolkit.pipelines.export.export_pipeline` writes for a spec naming
    SanaSprintPipeline + SCMScheduler."""
    from diffusers import SanaTransformer2DModel

    student_dir = Path(student_dir)
    spec = dataclasses.replace(spec)
    if spec.pipeline_class != "SanaSprintPipeline" or spec.scheduler_class != "SCMScheduler":
        raise ValueError(
            f"{student_dir} was saved for {spec.pipeline_class} + {spec.scheduler_class}, not SanaSprintPipeline + "
            "SCMScheduler"
        )
    transformer = SanaTransformer2DModel.from_pretrained(student_dir / spec.student)
    pipeline = build_sana_sprint_pipeline(teacher, transformer, spec.scheduler_config)
    call = ", ".join(f"{k}={v!r}" for k, v in spec.call_arguments().items())
    spec.default_call = f"pipe(prompt, {call})"
    spec.default_exact = not spec.call_kwargs and spec.num_inference_steps == 2 and spec.guidance_scale == 4.5
    spec.guidance_embedding = "guidance"
    spec.family = "sana"
    return spec, pipeline
