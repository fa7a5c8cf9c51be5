"""Export of video students (`sdtoolkit distill mcm`): a stock `AnimateDiffPipeline` folder of the teacher's VAE,
text encoder and tokenizer, the student `UNetMotionModel`, and the spec's scheduler (`LCMScheduler` with the trained
`timestep_scaling` and `original_inference_steps`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def animatediff_pipeline(teacher: Any, student_dir: Path, spec: Any) -> tuple[Any, Any]:
    """(spec, pipeline) for `export_pipeline`; everything in fp32 on the CPU."""
    import dataclasses

    import diffusers
    from diffusers import AnimateDiffPipeline, UNetMotionModel

    if spec.student != "unet":
        raise ValueError(f"AnimateDiffPipeline export takes a full student UNetMotionModel, not {spec.student!r}")
    unet = UNetMotionModel.from_pretrained(student_dir / "unet")
    config = {**dict(teacher.scheduler.config), **spec.scheduler_config}
    scheduler = getattr(diffusers, spec.scheduler_class).from_config(config)
    pipeline = AnimateDiffPipeline(
        vae=teacher.vae,
        text_encoder=teacher.text_encoder,
        tokenizer=teacher.tokenizer,
        unet=unet,
        motion_adapter=None,
        scheduler=scheduler,
    )
    pipeline.to("cpu")
    for module in (pipeline.unet, pipeline.vae, pipeline.text_encoder):
        module.float()
    spec = dataclasses.replace(
        spec, family="animatediff", default_call=f"{spec.num_inference_steps} steps only when passed explicitly"
    )
    return spec, pipeline
