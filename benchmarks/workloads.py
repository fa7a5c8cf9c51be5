"""The benchmark workloads: for each, a plain-diffusers reference and sdtoolkit's path of the same work."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from benchmarks import reference
from benchmarks.components import Components


@dataclass
class Workload:
    reference: Callable[[Components, bool], Callable[[], object]]
    toolkit: Callable[[Components, bool, str], Callable[[], object]]
    variants: list[str]
    images_per_step: Callable[[int], int] = lambda batch: batch
    check: Callable | None = None
    numerics: Callable[[Components, bool], dict] | None = None
    notes: str = ""
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- forward


def _toolkit_denoiser(comps: Components, mixed_precision: bool, variant: str, time_cond_proj_dim=None):
    """A frozen teacher Denoiser with sdtoolkit's optimized path switched on per `variant`."""
    from sdtoolkit.denoiser import Denoiser
    from sdtoolkit.schedules import schedule_from_config

    unet = comps.unet(time_cond_proj_dim=time_cond_proj_dim)
    denoiser = Denoiser(unet, schedule_from_config(comps.scheduler()), "epsilon")
    denoiser.freeze(torch.bfloat16 if mixed_precision else torch.float32)
    denoiser.set_attention("auto")
    if comps.device.type == "cuda":
        denoiser.to_channels_last()
    if "compiled" in variant:
        denoiser.compile(regional=True)
    return denoiser


def toolkit_forward(comps: Components, mixed_precision: bool, variant: str):
    from sdtoolkit.denoiser import Conditioning

    denoiser = _toolkit_denoiser(comps, mixed_precision, variant)
    x, cond = comps.latents(), Conditioning(comps.text())
    t = torch.full((comps.batch_size,), 500.0, device=comps.device)

    @torch.no_grad()
    def run():
        return denoiser.model_output(x, t, cond)

    return run


def forward_numerics(comps: Components, mixed_precision: bool) -> dict:
    """Max abs difference of sdtoolkit's eager forward against the plain forward on the same weights and inputs."""
    from sdtoolkit.denoiser import Conditioning

    denoiser = _toolkit_denoiser(comps, mixed_precision, "eager")
    unet = denoiser.base_model
    x, text = comps.latents(), comps.text()
    t = torch.full((comps.batch_size,), 500.0, device=comps.device)
    with torch.no_grad():
        ours = denoiser.model_output(x, t, Conditioning(text)).float()
        theirs = unet(x.to(unet.dtype), t, encoder_hidden_states=text.to(unet.dtype)).sample.float()
    return {"max_abs_diff": (ours - theirs).abs().max().item(), "ref_abs_mean": theirs.abs().mean().item()}


WORKLOADS: dict[str, Workload] = {
    "forward": Workload(
        reference=reference.reference_forward,
        toolkit=toolkit_forward,
        variants=["eager", "compiled"],
        numerics=forward_numerics,
        notes="one UNet forward at batch B (frozen teacher: bf16 weights on GPU)",
    ),
}
