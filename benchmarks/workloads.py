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


# ---------------------------------------------------------------------------------------------- training steps


def synthetic_trainer(comps: Components, mixed_precision: bool, method: str, variant: str, **method_overrides):
    """sdtoolkit's real `Trainer` (the loop every `sdtoolkit distill` run uses) around an in-memory teacher pipeline
    of the benchmark's size, with cached latents and text embeddings; returns a zero-argument step function that
    runs `Trainer.train_step` (every optimizer due, clipping, EMA, no host sync)."""
    import tempfile

    from diffusers import StableDiffusionPipeline

    from sdtoolkit.testing import tiny_text_encoder, tiny_tokenizer
    from sdtoolkit.training import TrainConfig, Trainer, get_method
    from sdtoolkit.training_data import CachedImageDataset, CachedPromptDataset, TextCache

    tokenizer = tiny_tokenizer()
    pipeline = StableDiffusionPipeline(
        vae=comps.vae(),
        text_encoder=tiny_text_encoder(len(tokenizer), hidden_size=comps.text_dim),
        tokenizer=tokenizer,
        unet=comps.unet(),
        scheduler=comps.scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    num = 4 * comps.batch_size
    generator = torch.Generator().manual_seed(0)
    text = TextCache(
        prompts=[f"prompt {i}" for i in range(num)],
        cond={"encoder_hidden_states": torch.randn(num, comps.text_len, comps.text_dim, generator=generator)},
        uncond={"encoder_hidden_states": torch.randn(1, comps.text_len, comps.text_dim, generator=generator)},
    )
    method_class = get_method(method)

    def prepare_data(teacher, pipe, config, method_cls):
        if method_cls.data == "images":
            shape = (num, 4, comps.latent_size, comps.latent_size)
            latents = {"mean": torch.randn(shape, generator=generator), "std": torch.full(shape, 0.01)}
            return CachedImageDataset(text, latents, text.prompts), text, text.prompts
        return CachedPromptDataset(text, text.prompts), text, text.prompts

    cuda = comps.device.type == "cuda"
    config = TrainConfig(
        teacher="in-memory",
        output=tempfile.mkdtemp(prefix=f"bench-{method}-"),
        batch_size=comps.batch_size,
        max_steps=10**9,
        mixed_precision="bf16" if mixed_precision else "no",
        sample_every=0,
        validate_every=0,
        checkpoint_every=10**9,
        log_with="none",
        export=False,
        log_every=10**9,
        fused_optimizer=cuda,
        channels_last=cuda,
        compile="compiled" in variant,
    )
    method_config = method_class.config_class(**method_overrides)
    trainer = Trainer(method_class, method_config, config, {}, prepare_data, pipeline=pipeline)
    progress, dataloader, models = trainer.setup()
    batches = trainer._batches(dataloader, 0)
    state = {"step": 0}

    def run():
        logs = trainer.train_step(state["step"], batches, models)
        state["step"] += 1
        return logs

    run.trainer = trainer
    return run


def toolkit_lcm(comps: Components, mixed_precision: bool, variant: str):
    return synthetic_trainer(comps, mixed_precision, "lcm", variant, time_cond_proj_dim=comps.time_cond_proj_dim)


def toolkit_dmd2(comps: Components, mixed_precision: bool, variant: str):
    # one generator update and one fake-score update per measured step (DMD2's TTUR ratio 1 here, so that the step
    # is the same work as the reference's)
    return synthetic_trainer(comps, mixed_precision, "dmd2", variant, **_dm_overrides("dmd2"))


def toolkit_sid(comps: Components, mixed_precision: bool, variant: str):
    return synthetic_trainer(comps, mixed_precision, "sid", variant, **_dm_overrides("sid"))


def _dm_overrides(method: str) -> dict:
    from sdtoolkit.training import get_method

    fields = {f.name for f in __import__("dataclasses").fields(get_method(method).config_class)}
    overrides = {}
    for name, value in (("fake_updates_per_generator", 1), ("fake_score", "lora")):
        if name in fields:
            overrides[name] = value
    return overrides


WORKLOADS["lcm"] = Workload(
    reference=lambda comps, mp: reference.ReferenceLCMStep(comps, mp),
    toolkit=toolkit_lcm,
    variants=["eager", "compiled"],
    notes="one LCM distillation step (full student with w-embedding, EMA target, teacher CFG), batch B",
)
WORKLOADS["dmd2"] = Workload(
    reference=lambda comps, mp: reference.ReferenceDMD2Step(comps, mp),
    toolkit=toolkit_dmd2,
    variants=["eager", "compiled"],
    notes="one generator update + one fake-score update of a 1-step DMD2 student; reference: full fake-UNet copy",
)
WORKLOADS["sid"] = Workload(
    reference=lambda comps, mp: reference.ReferenceDMD2Step(comps, mp, sid=True),
    toolkit=toolkit_sid,
    variants=["eager", "compiled"],
    notes="one SiD generator update + one fake-score update; reference: full fake-UNet copy",
)
