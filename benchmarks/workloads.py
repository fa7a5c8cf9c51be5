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
    gpu_only: tuple[str, ...] = ("compiled",)
    """Variants that `--variants all` runs on a GPU only (torch.compile costs ~100 s per model cold on a CPU)."""
    reference_label: str = "reference"
    """How the table names the reference row."""


# ---------------------------------------------------------------------------------------------- forward


def _toolkit_denoiser(comps: Components, mixed_precision: bool, variant: str, time_cond_proj_dim=None):
    """A frozen teacher Denoiser with sdtoolkit's optimized path switched on per `variant`."""
    from sdtoolkit.core.denoiser import Denoiser
    from sdtoolkit.core.schedules import schedule_from_config

    unet = comps.unet(time_cond_proj_dim=time_cond_proj_dim)
    denoiser = Denoiser(unet, schedule_from_config(comps.scheduler()), "epsilon")
    denoiser.freeze(torch.bfloat16 if mixed_precision else torch.float32)
    # variant "attn-<backend>" forces one attention kernel (`sdtoolkit.core.attention.ATTENTION_BACKENDS`) instead of
    # auto's choice; "no-channels-last" keeps the default memory format: the two ways sdtoolkit's forward differs
    # from the plain call, isolated
    denoiser.set_attention(variant.removeprefix("attn-") if variant.startswith("attn-") else "auto")
    if comps.device.type == "cuda" and variant != "no-channels-last":
        denoiser.to_channels_last()
    if "compiled" in variant:
        denoiser.compile(regional=True)
    return denoiser


def toolkit_forward(comps: Components, mixed_precision: bool, variant: str):
    from sdtoolkit.core.denoiser import Conditioning

    denoiser = _toolkit_denoiser(comps, mixed_precision, variant)
    x, cond = comps.latents(), Conditioning(comps.text())
    t = torch.full((comps.batch_size,), 500.0, device=comps.device)

    @torch.no_grad()
    def run():
        return denoiser.model_output(x, t, cond)

    return run


def forward_numerics(comps: Components, mixed_precision: bool) -> dict:
    """Max abs difference of sdtoolkit's eager forward against the plain forward on the same weights and inputs."""
    from sdtoolkit.core.denoiser import Conditioning

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
        variants=["eager", "compiled", "attn-sdpa", "attn-flash", "attn-efficient", "attn-cudnn", "no-channels-last"],
        gpu_only=("compiled", "attn-flash", "attn-efficient", "attn-cudnn", "no-channels-last"),
        numerics=forward_numerics,
        notes="one UNet forward at batch B (frozen teacher: bf16 weights on GPU)",
    ),
}


# ---------------------------------------------------------------------------------------------- training steps


def synthetic_trainer(
    comps: Components,
    mixed_precision: bool,
    method: str,
    variant: str,
    train_overrides: dict | None = None,
    pipeline=None,
    **method_overrides,
):
    """sdtoolkit's real `Trainer` (the loop every `sdtoolkit distill` run uses) around an in-memory teacher pipeline
    of the benchmark's size, with cached latents and text embeddings; returns a zero-argument step function that
    runs `Trainer.train_step` (every optimizer due, clipping, EMA, no host sync). `train_overrides` sets further
    `TrainConfig` fields (the memory knobs of `benchmarks.memory_knobs`); `pipeline` replaces the in-memory
    StableDiffusionPipeline (the video workloads' AnimateDiffPipeline)."""
    import tempfile

    from diffusers import StableDiffusionPipeline

    from sdtoolkit.distill.data import CachedImageDataset, CachedPromptDataset, TextCache
    from sdtoolkit.distill.loop import TrainConfig, Trainer, get_method
    from sdtoolkit.testing import tiny_text_encoder, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    if pipeline is None:
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
    fields = dict(
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
        fused_optimizer=True,  # the fused AdamW kernel on CUDA, the multi-tensor one on a CPU
        channels_last=cuda,
        compile="compiled" in variant,
    )
    config = TrainConfig(**{**fields, **(train_overrides or {})})
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
    return synthetic_trainer(comps, mixed_precision, "dmd2", variant, **_dm_overrides("dmd2", comps, variant))


def toolkit_sid(comps: Components, mixed_precision: bool, variant: str):
    return synthetic_trainer(comps, mixed_precision, "sid", variant, **_dm_overrides("sid", comps, variant))


def _dm_overrides(method: str, comps: Components, variant: str = "eager") -> dict:
    """The reference's work: one fake-score update per generator update, real-score CFG 1.75, an unguided fake
    score (SiD-LSG's default kappas of 2 would double the fake score's batch) and no generator EMA (DMD2's SD1.5
    code keeps none; sdtoolkit's default 0.99 adds a pass over the generator's weights). The fake score is sdtoolkit's
    default LoRA on the teacher's backbone at the size's rank, or with the `full-fake` variant a trainable full
    copy, exactly the reference's fake score."""
    from sdtoolkit.distill.loop import get_method

    fields = {f.name for f in __import__("dataclasses").fields(get_method(method).config_class)}
    overrides = {}
    same_work = (
        ("fake_updates_per_generator", 1),
        ("fake_score", "full" if "full-fake" in variant else "lora"),
        ("fake_rank", comps.fake_rank),
        ("real_guidance_scale", 1.75),
        ("fake_guidance", 1.0),
        ("fake_train_guidance", 1.0),
        ("ema_decay", 0.0),  # the reference keeps no generator EMA
    )
    for name, value in same_work:
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
    variants=["eager", "full-fake", "compiled"],
    notes="one generator update + one fake-score update of a 1-step DMD2 student; reference: full fake-UNet copy; "
    "eager: sdtoolkit's LoRA fake score on the teacher's backbone; full-fake: a full copy (the reference's work)",
)
WORKLOADS["sid"] = Workload(
    reference=lambda comps, mp: reference.ReferenceDMD2Step(comps, mp, sid=True),
    toolkit=toolkit_sid,
    variants=["eager", "full-fake", "compiled"],
    notes="one SiD generator update + one fake-score update; reference: full fake-UNet copy; eager: sdtoolkit's "
    "LoRA fake score; full-fake: a full copy (the reference's work)",
)
WORKLOADS["dmd2-lora"] = Workload(
    reference=lambda comps, mp: reference.ReferenceDMD2Step(comps, mp, fake_lora_rank=comps.fake_rank),
    toolkit=toolkit_dmd2,
    variants=["eager"],
    notes="dmd2 with the same LoRA work on both sides: the reference's fake score is a separate frozen UNet copy "
    "with a LoRA of sdtoolkit's targets and rank (nothing to switch); sdtoolkit's is the adapter on the teacher's own "
    "backbone, switched on and off around each score",
)
WORKLOADS["sid-lora"] = Workload(
    reference=lambda comps, mp: reference.ReferenceDMD2Step(comps, mp, sid=True, fake_lora_rank=comps.fake_rank),
    toolkit=toolkit_sid,
    variants=["eager"],
    notes="sid with the same LoRA work on both sides (see dmd2-lora)",
)


def toolkit_mcm(comps: Components, mixed_precision: bool, variant: str):
    """sdtoolkit's MCM trainer (`sdtoolkit distill mcm`'s loop) on an AnimateDiffPipeline of the size's UNet and a
    motion adapter: `video_clips` clips of `VIDEO_FRAMES` frames per step, the reference's settings (learned head,
    Huber, mixed trajectory 0.5, the frame critic with R1, EMA 0.95)."""
    from benchmarks.components import VIDEO_FRAMES
    from sdtoolkit.models.shapes_video import video_pipeline

    pipeline = video_pipeline(comps.pipeline(), comps.motion_adapter())
    return synthetic_trainer(
        comps,
        mixed_precision,
        "mcm",
        variant,
        train_overrides={"batch_size": comps.video_clips, "max_grad_norm": 1.0},
        pipeline=pipeline,
        num_frames=VIDEO_FRAMES,
        num_clips=2 * comps.video_clips,
    )


def _video_frames_per_step(batch: int) -> int:
    from benchmarks.components import VIDEO_FRAMES

    return max(1, batch // VIDEO_FRAMES) * VIDEO_FRAMES


WORKLOADS["mcm"] = Workload(
    reference=lambda comps, mp: reference.ReferenceMCMStep(comps, mp),
    toolkit=toolkit_mcm,
    variants=["eager", "compiled"],
    images_per_step=_video_frames_per_step,
    notes="one MCM step (student update: mixed trajectory, online f_theta, teacher CFG, one DDIM step, EMA target, "
    "learned motion head, frame-critic term; then the critic's update with R1) on clips of 16 frames, max(1, B // "
    "16) clips (images = frames); reference: yhZhai/mcm main.py's step with stock UNetMotionModel calls (teacher "
    "cond and uncond as two forwards)",
)


# ---------------------------------------------------------------------------------------------- text-to-3D


def render_resolution(comps: Components) -> int:
    """NeRF render side: the prior's image size when it is small (tiny: 16), else 64 bilinearly upsampled to the
    prior's 512 before the VAE (threestudio's DreamFusion-SD setting)."""
    return min(comps.image_size, 64)


def toolkit_text_to_3d(comps: Components, mixed_precision: bool, variant: str, method: str = "sds"):
    """sdtoolkit's real text-to-3D step: `text_to_3d.trainer.setup(config, denoiser=...)` with a prior Denoiser
    around the benchmark's UNet and VAE, then `training_step` (occupancy update, random camera, NeRF render, encode,
    guidance, regularisers, backward, Adam). The config is the CLI's default for a non-builtin prior (guidance scale
    100 for SDS, the method's VSD defaults), rendered at `render_resolution` and upsampled to the prior's size.

    Variants: `eager`: the prior frozen in the benchmark's weight dtype (bf16 UNet and VAE on a GPU, as the
    reference), auto attention kernel, channels_last on CUDA; `compiled`: plus regional torch.compile of the UNet;
    `fp32-prior`: the prior exactly as `sdtoolkit text-to-3d` loads it today (`load_prior`: fp32, nothing else)."""
    from sdtoolkit.core.denoiser import Denoiser
    from sdtoolkit.text_to_3d import TextTo3DConfig
    from sdtoolkit.text_to_3d.trainer import setup, training_step

    low_precision = mixed_precision and "fp32-prior" not in variant
    dtype = torch.bfloat16 if low_precision else torch.float32
    pipeline = comps.pipeline()
    denoiser = Denoiser.from_pipeline(pipeline).freeze(dtype)
    if "fp32-prior" not in variant:
        pipeline.vae.to(dtype)
        denoiser.set_attention("auto")
        if comps.device.type == "cuda":
            denoiser.to_channels_last()
        if "compiled" in variant:
            denoiser.compile(regional=True)
    render = render_resolution(comps)
    config = TextTo3DConfig(
        prompt="a red cube",
        method=method,
        prior="benchmark",
        steps=10**9,
        resolution=comps.image_size,
        start_resolution=render if render != comps.image_size else None,
        resolution_warmup=1.0,
        preview_every=0,
        checkpoint_every=0,
        threads=None,
        device=str(comps.device),
    )
    run = setup(config, denoiser=denoiser)

    def step():
        return training_step(run)

    step.run = run
    return step


WORKLOADS["sds"] = Workload(
    reference=lambda comps, mp: reference.ReferenceSDSNeRFIteration(comps, mp, render_resolution(comps)),
    toolkit=toolkit_text_to_3d,
    variants=["eager", "compiled", "fp32-prior"],
    gpu_only=("compiled", "fp32-prior"),
    images_per_step=lambda batch: 1,
    notes="one text-to-3D SDS iteration including the NeRF render (one camera), CFG 100; the NeRF is sdtoolkit's on "
    "both sides, the reference's guidance is plain diffusers (threestudio style)",
)


def _sdtoolkit_lora_targets() -> tuple[str, ...]:
    from sdtoolkit.distill.score_distillation import DEFAULT_LORA_TARGETS

    return DEFAULT_LORA_TARGETS


WORKLOADS["vsd-same-lora"] = Workload(
    reference=lambda comps, mp: reference.ReferenceVSDNeRFIteration(
        comps, mp, render_resolution(comps), lora_targets=_sdtoolkit_lora_targets()
    ),
    toolkit=lambda comps, mp, variant: toolkit_text_to_3d(comps, mp, variant, method="vsd"),
    variants=["eager", "compiled", "fp32-prior"],
    gpu_only=("compiled", "fp32-prior"),
    images_per_step=lambda batch: 1,
    notes="vsd with the same LoRA work on both sides: the reference's separate LoRA copy adapts sdtoolkit's "
    "fake-score targets (attention, feed-forward, resnet convs, time projection), not only the attention projections",
)
WORKLOADS["vsd"] = Workload(
    reference=lambda comps, mp: reference.ReferenceVSDNeRFIteration(comps, mp, render_resolution(comps)),
    toolkit=lambda comps, mp, variant: toolkit_text_to_3d(comps, mp, variant, method="vsd"),
    variants=["eager", "compiled", "fp32-prior"],
    gpu_only=("compiled", "fp32-prior"),
    images_per_step=lambda batch: 1,
    notes="one text-to-3D VSD iteration including the NeRF render and the LoRA update; reference: threestudio's "
    "separate LoRA copy of the UNet; sdtoolkit: LoRA adapter on the prior's own backbone",
)


# ---------------------------------------------------------------------------------------------- sampling

SAMPLE_BATCH = 4
"""Images per pipeline call in the `sample` workload (or the size's batch, if smaller)."""
TEACHER_STEPS, TEACHER_GUIDANCE = 50, 7.5


def _sample_batch(batch: int) -> int:
    return min(batch, SAMPLE_BATCH)


def toolkit_sample(comps: Components, mixed_precision: bool, variant: str):
    """A few-step export as its users run it: the stock pipeline with `LCMScheduler`, `guidance_scale=1` (no CFG),
    `num_inference_steps` from the variant name ("2-step")."""
    steps = int(variant.split("-")[0])
    batch = _sample_batch(comps.batch_size)
    return reference.ReferenceSampler(comps, mixed_precision, steps, 1.0, "LCMScheduler", batch_size=batch)


WORKLOADS["sample"] = Workload(
    reference=lambda comps, mp: reference.ReferenceSampler(
        comps, mp, TEACHER_STEPS, TEACHER_GUIDANCE, "DDIMScheduler", batch_size=_sample_batch(comps.batch_size)
    ),
    toolkit=toolkit_sample,
    variants=["1-step", "2-step", "4-step"],
    gpu_only=(),
    images_per_step=_sample_batch,
    reference_label=f"teacher-{TEACHER_STEPS}",
    notes=f"one StableDiffusionPipeline call (text embeddings given, VAE decode, PIL output) at batch "
    f"min(B, {SAMPLE_BATCH}): LCMScheduler at 1/2/4 steps without CFG vs the teacher's DDIM at {TEACHER_STEPS} "
    f"steps with CFG {TEACHER_GUIDANCE}; the weights do not change the time, so random weights stand in for the "
    "student",
)
