"""The embedded flow-matching teacher `builtin:shapes-flow`: a rectified-flow text-to-image model of the rendered 3D
shapes, in Stable Diffusion 3's exact folder layout (stock `diffusers.StableDiffusion3Pipeline`).

Parts (SD3's, Esser et al. 2024, "Scaling Rectified Flow Transformers for High-Resolution Image Synthesis", only
smaller):

- `AutoencoderKL`: `builtin:shapes`' trained VAE, frozen (64x64 RGB <-> 4x16x16), with SD3's `shift_factor` (mean
  of the latents) and `scaling_factor` (1 / std after the shift) measured on the training set;
- `CLIPTextModelWithProjection` x 2 (SD3's CLIP-L / CLIP-G slots) with word-level `CLIPTokenizer`s; T5 is absent
  (`text_encoder_3=None`: the stock pipeline then feeds zeros in its place, as SD3 does without T5);
- `SD3Transformer2DModel` (MM-DiT, patch 2 on 16x16 latents = 64 image tokens), velocity prediction;
- `FlowMatchEulerDiscreteScheduler` with the family's time `shift`.

Training (`train_flow_teacher`): the VAE frozen, the transformer and both text encoders jointly with the rectified
flow loss || (eps - x0) - v_theta(x_t, t, c) ||^2 at x_t = (1 - t) x0 + t eps (Liu et al. 2022; Esser et al. 2024,
Sec. 2 and 3.1), t from SD3's logit-normal density shifted by `shift`, and 10 % caption dropout to "" for CFG (Ho &
Salimans 2022). EMA, a time budget, periodic loadable checkpoints with an exact resume, then samples and metrics.

Why SD3's layout and not SANA's (issue 18 prefers SANA): stock `SanaPipeline` (diffusers 0.42) with its default
`use_resolution_binning=True` refuses a transformer whose `sample_size` is not 16/32/64/128 latents and snaps the
size to its 512-4096 px aspect-ratio bins (a 64 px model would be sampled at 512 px unless every caller passes
`use_resolution_binning=False`); it prefixes every prompt with its ~300-token chat-style instruction for a Gemma-2
encoder; and its `AutoencoderDC` cannot reuse `builtin:shapes`' trained `AutoencoderKL`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sdtoolkit.core.config import AT_LEAST_1, FRACTION, NON_NEGATIVE, POSITIVE, SEED, Bound, OneOf, Range
from sdtoolkit.core.repeated_tokens import compact_joint_attention, key_log_multiplicity
from sdtoolkit.models.loading import BUILTIN_TRAIN_COMMANDS

__all__ = [
    "FlowTeacherConfig",
    "TRAIN_COMMAND",
    "logit_normal_times",
    "flow_velocity_target",
    "flow_matching_loss",
    "encode_captions",
    "build_text_encoder",
    "build_transformer",
    "build_scheduler",
    "load_frozen_vae",
    "assemble_pipeline",
    "train_flow_teacher",
]

TRAIN_COMMAND = BUILTIN_TRAIN_COMMANDS["shapes-flow"]
"""The command that trained `builtin:shapes-flow` (this CPU recipe, 2 threads, about 70 minutes); quoted by the
missing-asset message."""

RUN_CONTROL = (
    "num_workers",
    "compact_t5_tokens",
    "cache_dir",
    "max_minutes",
    "max_encode_fraction",
    "checkpoint_minutes",
    "checkpoint_steps",
    "stop_after",
    "log_every",
    "sample_prompts",
    "eval_samples",
    "threads",
    "extra",
)
"""Fields a resumed run may change (everything else must match the checkpoint's config)."""


@dataclass
class FlowTeacherConfig:
    """Architecture and training recipe of the flow-matching shapes teacher (`--family sd3`). Defaults are a CPU
    recipe; GPU runs want `--device cuda --mixed-precision bf16`, a large `batch_size`, uncapped
    `transformer_steps` and a `max_minutes` budget (see `TRAIN_COMMAND`)."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "resolution": Range(8),
        "num_train_images": AT_LEAST_1,
        "render_chunk": AT_LEAST_1,
        "num_workers": NON_NEGATIVE,
        "text_hidden_size": AT_LEAST_1,
        "text_layers": AT_LEAST_1,
        "text_heads": AT_LEAST_1,
        "text_intermediate_size": AT_LEAST_1,
        "max_length": Range(9),  # the longest caption: 9 tokens with BOS/EOS
        "max_sequence_length": NON_NEGATIVE,
        "patch_size": AT_LEAST_1,
        "transformer_layers": AT_LEAST_1,
        "attention_heads": AT_LEAST_1,
        "attention_head_dim": AT_LEAST_1,
        "num_train_timesteps": Range(2),
        "shift": POSITIVE,
        "logit_std": POSITIVE,
        "transformer_steps": AT_LEAST_1,
        "batch_size": AT_LEAST_1,
        "lr": POSITIVE,
        "weight_decay": NON_NEGATIVE,
        "warmup_steps": NON_NEGATIVE,
        "caption_dropout": FRACTION,
        "ema_decay": Range(0, 1, high_open=True),
        "grad_clip": NON_NEGATIVE,
        "seed": SEED,
        "device": OneOf("cpu", "cuda"),
        "mixed_precision": OneOf("no", "bf16", "fp16"),
        "max_minutes": POSITIVE,
        "max_encode_fraction": Range(0, 1, low_open=True),
        "checkpoint_minutes": NON_NEGATIVE,
        "checkpoint_steps": NON_NEGATIVE,
        "stop_after": AT_LEAST_1,
        "log_every": AT_LEAST_1,
        "sample_prompts": NON_NEGATIVE,
        "sample_steps": AT_LEAST_1,
        "guidance": POSITIVE,
        "eval_samples": NON_NEGATIVE,
        "threads": AT_LEAST_1,
    }

    # --- data ---------------------------------------------------------------------------------------------------
    resolution: int = 64
    """Image side in pixels (must match the reused VAE: 64 for builtin:shapes')."""
    num_train_images: int = 20_000
    """Size of the fixed training set, rendered once (deterministically from `seed`) and kept as uint8."""
    render_chunk: int = 500
    """Images per `render_batch` call (chunk i is rendered with seed `seed * 100_003 + i`)."""
    num_workers: int = 0
    """Processes that render chunks on the CPU (0: render in this process, on `device`)."""
    cache_dir: str | None = None
    """If set, the rendered set is stored there as safetensors and reused next time."""

    # --- VAE ----------------------------------------------------------------------------------------------------
    vae_source: str = "builtin:shapes"
    """Pipeline folder or builtin:NAME whose `vae` (an AutoencoderKL) is reused, frozen."""

    # --- text encoders (2 x CLIPTextModelWithProjection) ---------------------------------------------------------
    text_hidden_size: int = 64
    """Width of each CLIP text encoder (= its projection); the transformer's joint_attention_dim is twice it."""
    text_layers: int = 3
    """Transformer layers of each text encoder."""
    text_heads: int = 4
    """Attention heads of each text encoder."""
    text_intermediate_size: int = 256
    """MLP width of each text encoder."""
    max_length: int = 16
    """Tokenizer `model_max_length` = `max_position_embeddings` (captions are at most 9 tokens with BOS/EOS)."""
    max_sequence_length: int = 256
    """Zero tokens standing in for T5 after the CLIP tokens: stock StableDiffusion3Pipeline without T5 appends
    `max_sequence_length` (default 256) of them, so training does the same to match stock sampling."""
    compact_t5_tokens: bool = True
    """Train on one copy of those identical zero tokens with log(`max_sequence_length`) added to its attention
    logit (`sdtoolkit.core.repeated_tokens`): the same function of the weights, values and gradients equal to
    rounding, with 81 instead of 336 tokens per call at the defaults. Off: the literal 256-token call."""

    # --- transformer (SD3Transformer2DModel) --------------------------------------------------------------------
    patch_size: int = 2
    """Latent patch side (SD3: 2; 16x16 latents -> 64 image tokens)."""
    transformer_layers: int = 6
    """Joint (MM-DiT) blocks."""
    attention_heads: int = 4
    """Attention heads of every joint block."""
    attention_head_dim: int = 32
    """Width per head (the model width is heads x head_dim)."""

    # --- flow schedule ------------------------------------------------------------------------------------------
    num_train_timesteps: int = 1000
    """The network's timestep is t x this (SD3: 1000)."""
    shift: float = 1.0
    """SD3's time shift (Esser et al. 2024, Eq. 23) of training times and of the sampler (SD3 uses 3.0 at 1024^2
    = 4096 tokens; sqrt(64 / 256) < 1 at this model's 64 tokens, so 1.0, i.e. no shift)."""
    logit_mean: float = 0.0
    """Mean m of SD3's logit-normal training-time density (Esser et al. 2024, Sec. 3.1; SD3: 0)."""
    logit_std: float = 1.0
    """Scale s of the logit-normal training-time density (SD3: 1)."""

    # --- training -----------------------------------------------------------------------------------------------
    transformer_steps: int = 12_000
    """Maximum optimiser steps (the time budget may stop it earlier)."""
    batch_size: int = 32
    """Batch size."""
    lr: float = 5e-4
    """AdamW learning rate of the transformer and the text encoders (after warm-up; cosine-decayed to 10 %)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup_steps: int = 200
    """Linear learning-rate warm-up steps."""
    caption_dropout: float = 0.1
    """Probability of replacing a caption by "" (classifier-free guidance training, Ho & Salimans 2022)."""
    ema_decay: float = 0.999
    """EMA decay of the trained weights (warmed up as min(decay, (1+n)/(10+n))); 0 disables EMA."""
    grad_clip: float = 1.0
    """Gradient-norm clipping."""

    # --- run ----------------------------------------------------------------------------------------------------
    seed: int = 0
    """Seeds the data, the initialisation and the training noise."""
    device: str = "cpu"
    """"cpu" or "cuda"."""
    mixed_precision: str = "no"
    """accelerate's mixed precision: "no", "bf16" or "fp16"."""
    max_minutes: float | None = None
    """Wall-clock budget of rendering, encoding, training and saving (not samples or metrics); None: steps only."""
    max_encode_fraction: float = 0.25
    """With `max_minutes`: encoding the set may use at most this share of the time left."""
    checkpoint_minutes: float = 2.0
    """Write a loadable folder plus the training state to `<output>/checkpoint` this often (0: never by time)."""
    checkpoint_steps: int = 0
    """Also write the checkpoint every this many steps (0: never by steps)."""
    stop_after: int | None = None
    """Stop after this many steps of this run and leave a checkpoint, as a preempted run would (tests)."""
    log_every: int = 50
    """Record the (smoothed) loss every this many steps in `training_log.json`."""
    sample_prompts: int = 10
    """Prompts in the `samples.png` grid written at the end (4 images each); 0: none."""
    sample_steps: int = 28
    """The teacher's default Euler steps (SD3's pipeline default), for samples and metrics."""
    guidance: float = 5.0
    """The teacher's default CFG scale (pass it: the stock SD3 pipeline's own default is 7.0)."""
    eval_samples: int = 0
    """Score this many images at `sample_steps`, 4 and 1 steps with the shapes evaluator into metrics.json and
    write README.md (0: skip; 1200 for the published figures)."""
    threads: int | None = None
    """`torch.set_num_threads` for CPU runs (None: leave torch's default)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes stored in training_config.json."""

    def __post_init__(self) -> None:
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision={self.mixed_precision!r}; choose 'no', 'bf16' or 'fp16'")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device={self.device!r}; choose 'cpu' or 'cuda'")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FlowTeacherConfig:
        """Rebuilds a config from `training_config.json` (unknown keys are rejected by name)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown FlowTeacherConfig fields {unknown}; valid: {sorted(names)}")
        return cls(**data)


# ---------------------------------------------------------------------------------------------------------------
# the flow-matching equations
# ---------------------------------------------------------------------------------------------------------------


def logit_normal_times(
    num: int, mean: float, std: float, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """Training times t = sigmoid(u), u ~ N(mean, std^2): SD3's logit-normal density
    pi_ln(t; m, s) = 1 / (s sqrt(2 pi)) 1 / (t (1 - t)) exp(-(logit(t) - m)^2 / (2 s^2)) (Esser et al. 2024,
    Sec. 3.1, "Logit-Normal Sampling"), which weights the middle of the path more than uniform t."""
    u = torch.randn(num, device=device, generator=generator) * std + mean
    return torch.sigmoid(u)


def flow_velocity_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The velocity dx_t/dt = eps - x0 of the straight path, the network's regression target (Liu et al. 2022,
    Eq. 1; the conditional flow-matching target of Esser et al. 2024, Sec. 2, for the RF path)."""
    return eps - x0


def flow_matching_loss(velocity: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """|| v_theta(x_t, t, c) - (eps - x0) ||^2 averaged over elements (uniform loss weight, as SD3 with
    logit-normal time sampling)."""
    return F.mse_loss(velocity.float(), flow_velocity_target(x0, eps).float())


# ---------------------------------------------------------------------------------------------------------------
# components
# ---------------------------------------------------------------------------------------------------------------


def build_tokenizer(config: FlowTeacherConfig):
    """A `CLIPTokenizer` with one token per caption word (shared by both CLIP slots)."""
    from sdtoolkit.data import VOCABULARY
    from sdtoolkit.models.text import build_word_tokenizer

    return build_word_tokenizer(VOCABULARY, model_max_length=config.max_length)


def build_text_encoder(config: FlowTeacherConfig, vocab_size: int, hidden_act: str = "quick_gelu"):
    """A small `CLIPTextModelWithProjection` (SD3's CLIP slots: the penultimate hidden state is the token
    conditioning, the projected EOS state the pooled one)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=config.text_hidden_size,
            intermediate_size=config.text_intermediate_size,
            num_hidden_layers=config.text_layers,
            num_attention_heads=config.text_heads,
            max_position_embeddings=config.max_length,
            hidden_act=hidden_act,
            projection_dim=config.text_hidden_size,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )


def build_transformer(config: FlowTeacherConfig, latent_channels: int, latent_size: int):
    """SD3's `SD3Transformer2DModel` at `latent_size`: joint attention over 2 x `text_hidden_size`-wide text tokens
    (the two CLIP states concatenated, as the stock pipeline does) and the patchified latents."""
    from diffusers import SD3Transformer2DModel

    width = config.attention_heads * config.attention_head_dim
    return SD3Transformer2DModel(
        sample_size=latent_size,
        patch_size=config.patch_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        num_layers=config.transformer_layers,
        attention_head_dim=config.attention_head_dim,
        num_attention_heads=config.attention_heads,
        joint_attention_dim=2 * config.text_hidden_size,
        caption_projection_dim=width,
        pooled_projection_dim=2 * config.text_hidden_size,
        pos_embed_max_size=max(latent_size // config.patch_size, 1),
    )


def build_scheduler(config: FlowTeacherConfig):
    """SD3's `FlowMatchEulerDiscreteScheduler` with this teacher's `shift`."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=config.num_train_timesteps, shift=config.shift)


def load_frozen_vae(config: FlowTeacherConfig):
    """The `AutoencoderKL` of `vae_source` (its `vae` subfolder), eval mode, no gradients."""
    from diffusers import AutoencoderKL

    from sdtoolkit.models.loading import load_component

    vae = load_component(config.vae_source, AutoencoderKL, subfolder="vae")
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if vae.config.sample_size != config.resolution or config.resolution % factor:
        raise ValueError(
            f"resolution {config.resolution} does not match the VAE of {config.vae_source} "
            f"(sample_size {vae.config.sample_size}, downsampling {factor})"
        )
    return vae.eval().requires_grad_(False)


def assemble_pipeline(vae, text_encoder, text_encoder_2, tokenizer, transformer, scheduler):
    """The stock `StableDiffusion3Pipeline` of the parts, without T5 (`text_encoder_3=None`)."""
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )


def encode_captions(
    text_encoder, text_encoder_2, input_ids: torch.Tensor, joint_attention_dim: int, t5_tokens: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_embeds, pooled_prompt_embeds) exactly as stock `StableDiffusion3Pipeline.encode_prompt` builds them
    without T5, but differentiable: each CLIP's penultimate hidden state, concatenated on channels and zero-padded
    to `joint_attention_dim`, followed by `t5_tokens` zero tokens (T5's place; the pipeline's
    `max_sequence_length`, default 256); pooled = both projections concatenated."""
    out_1 = text_encoder(input_ids, output_hidden_states=True)
    out_2 = text_encoder_2(input_ids, output_hidden_states=True)
    clip = torch.cat([out_1.hidden_states[-2], out_2.hidden_states[-2]], dim=-1)
    clip = F.pad(clip, (0, joint_attention_dim - clip.shape[-1]))
    t5 = torch.zeros(clip.shape[0], t5_tokens, joint_attention_dim, device=clip.device, dtype=clip.dtype)
    return torch.cat([clip, t5], dim=-2), torch.cat([out_1[0], out_2[0]], dim=-1)


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters of `module`."""
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------------------------
# checkpoints (safetensors + JSON, no pickles)
# ---------------------------------------------------------------------------------------------------------------

STATE_NAME = "training_state"
"""`<output>/checkpoint/training_state.safetensors` + `.json` (the JSON is written last)."""


def _save_state(folder: Path, state: dict) -> None:
    from safetensors.torch import save_file

    from sdtoolkit.distill.checkpoint import encode_state

    tensors: dict[str, torch.Tensor] = {}
    encoded = encode_state(state, tensors, "state")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / f"{STATE_NAME}.safetensors"))
    (folder / f"{STATE_NAME}.json").write_text(json.dumps(encoded) + "\n")


def _load_state(folder: Path) -> dict | None:
    from safetensors.torch import load_file

    from sdtoolkit.distill.checkpoint import decode_state

    if not (folder / f"{STATE_NAME}.json").exists():
        return None
    tensors = load_file(str(folder / f"{STATE_NAME}.safetensors"))
    return decode_state(json.loads((folder / f"{STATE_NAME}.json").read_text()), tensors)


def _check_resumable(saved: dict, config: FlowTeacherConfig) -> None:
    current = asdict(config)
    changed = sorted(k for k in current if k not in RUN_CONTROL and saved.get(k) != current[k])
    if changed:
        raise ValueError(
            f"cannot resume the checkpoint: its config differs in {changed}; use the same settings or a new --output"
        )


def _save_folder(pipeline, output_dir: Path, config: FlowTeacherConfig, stats: dict) -> None:
    from sdtoolkit.models.shapes_teacher import save_teacher

    save_teacher(pipeline, output_dir, config, stats)  # SD3 folder + training_config.json + training_log.json


# ---------------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------------


def _latent_statistics(latent_mean: torch.Tensor, latent_std: torch.Tensor, seed: int) -> tuple[float, float]:
    """SD3's VAE `shift_factor` (mean of posterior samples) and `scaling_factor` (1 / their std after the shift),
    from the first 2048 training latents with a seeded draw (so a resumed run gets the same numbers)."""
    generator = torch.Generator("cpu").manual_seed(seed + 5)
    mean, std = latent_mean[:2048].float().cpu(), latent_std[:2048].float().cpu()
    sample = mean + std * torch.randn(mean.shape, generator=generator)
    shift = float(sample.mean())
    return shift, float(1.0 / (sample - shift).std())


def train_flow_teacher(config: FlowTeacherConfig, output_dir: str | Path) -> Path:
    """Renders the data, encodes it with the frozen VAE, trains transformer + text encoders with the flow-matching
    loss and writes the stock SD3 folder to `output_dir` (plus `training_config.json`, `training_log.json`,
    `samples.png`, and with `eval_samples` `metrics.json` and `README.md`). Resumes from `<output>/checkpoint` when
    it holds a training state of the same config. With `stop_after`, stops early leaving that checkpoint."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from sdtoolkit.core.ema import EMA
    from sdtoolkit.core.schedules import FlowSchedule
    from sdtoolkit.models.shapes_teacher_train import (
        Budget,
        _cpu_copy,
        _hardware,
        _set_lr,
        encode_latents,
        learning_rate,
        render_training_set,
    )

    t_start = time.perf_counter()
    output_dir = Path(output_dir)
    checkpoint_dir = output_dir / "checkpoint"
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if config.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but torch.cuda.is_available() is False")
    if config.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=config.device == "cpu")
    set_seed(config.seed)
    device = accelerator.device
    timings: dict[str, float] = {}
    schedule = FlowSchedule(shift=config.shift)
    resumed = _load_state(checkpoint_dir)
    if resumed is not None:
        _check_resumable(resumed["config"], config)

    def remaining() -> float | None:
        return None if config.max_minutes is None else 60 * config.max_minutes - (time.perf_counter() - t_start)

    print(
        f"[train-teacher sd3] device={device} mixed_precision={config.mixed_precision} "
        f"threads={torch.get_num_threads()}"
    )
    tokenizer = build_tokenizer(config)
    t0 = time.perf_counter()
    data = render_training_set(config, device=device)
    timings["render_s"] = round(time.perf_counter() - t0, 1)
    vae = load_frozen_vae(config).to(device)

    t0 = time.perf_counter()
    left = remaining()
    with accelerator.autocast():
        latent_mean, latent_std = encode_latents(
            vae, data.images, device, max_seconds=None if left is None else config.max_encode_fraction * left
        )
    shift_factor, scaling_factor = _latent_statistics(latent_mean, latent_std, config.seed)
    vae.register_to_config(shift_factor=shift_factor, scaling_factor=scaling_factor)
    timings["encode_s"] = round(time.perf_counter() - t0, 1)
    latent_stats = {
        "shift_factor": shift_factor,
        "scaling_factor": scaling_factor,
        "num_encoded": len(latent_mean),
    }
    print(
        f"[train-teacher sd3] {len(latent_mean)} latents; shift_factor={shift_factor:.4f} scale={scaling_factor:.4f}"
    )

    latent_channels, latent_size = latent_mean.shape[1], latent_mean.shape[-1]
    torch.manual_seed(config.seed + 3)
    transformer = build_transformer(config, latent_channels, latent_size)
    text_encoder = build_text_encoder(config, len(tokenizer), "quick_gelu")
    text_encoder_2 = build_text_encoder(config, len(tokenizer), "gelu")
    models = (transformer, text_encoder, text_encoder_2)
    params = [p for m in models for p in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=device.type == "cuda")
    transformer, text_encoder, text_encoder_2, optimizer = accelerator.prepare(*models, optimizer)
    raw = tuple(accelerator.unwrap_model(m) for m in (transformer, text_encoder, text_encoder_2))
    emas = [EMA(m, decay=config.ema_decay, warmup=True) for m in raw] if config.ema_decay > 0 else []
    generator = torch.Generator(device).manual_seed(config.seed + 2)
    step, log, smoothed, elapsed_before = 0, [], None, 0.0
    if resumed is not None:
        for model, weights in zip(raw, resumed["models"]):
            model.load_state_dict(weights)
        for ema, state in zip(emas, resumed["emas"]):
            ema.load_state_dict(state)
        optimizer.load_state_dict(resumed["optimizer"])
        generator.set_state(resumed["generator"])
        step, log, smoothed, elapsed_before = resumed["step"], resumed["log"], resumed["smoothed"], resumed["seconds"]
        print(f"[train-teacher sd3] resumed from {checkpoint_dir} at step {step}")
    for model in raw:
        model.train()

    token_table = tokenizer(
        data.captions, padding="max_length", max_length=config.max_length, truncation=True, return_tensors="pt"
    ).input_ids.to(device)
    caption_index = data.caption_index.to(device)
    latent_mean, latent_std = latent_mean.to(device), latent_std.to(device)
    joint_dim = raw[0].config.joint_attention_dim
    t5_tokens, compaction = config.max_sequence_length, contextlib.nullcontext
    if config.compact_t5_tokens and config.max_sequence_length > 1:
        # the zero tokens once, weighted by their count in attention: exact (sdtoolkit.core.repeated_tokens)
        t5_tokens = 1
        image_tokens = (latent_size // config.patch_size) ** 2
        bias = key_log_multiplicity(image_tokens, config.max_length + 1, config.max_sequence_length, device=device)
        compaction = functools.partial(compact_joint_attention, raw[0], bias)
    vae_cpu = _cpu_copy(vae)
    scheduler = build_scheduler(config)
    stats: dict[str, Any] = {"timings": timings, "latents": latent_stats}

    def save_checkpoint(*_: Any) -> None:
        """A loadable folder (EMA weights) plus the raw training state, in `<output>/checkpoint`."""
        state = {
            "config": asdict(config),
            "step": step,
            "seconds": budget.elapsed(),
            "log": log,
            "smoothed": smoothed,
            "generator": generator.get_state(),
            "models": [{k: v.detach().cpu() for k, v in m.state_dict().items()} for m in raw],
            "emas": [ema.state_dict() for ema in emas],
            "optimizer": optimizer.state_dict(),
        }
        parts = [_cpu_copy(m) for m in raw]
        for ema, part in zip(emas, parts):
            ema.copy_to(part)
        pipe = assemble_pipeline(vae_cpu, parts[1], parts[2], tokenizer, parts[0], scheduler)
        _save_folder(pipe, checkpoint_dir, config, {**stats, "transformer": {"steps": step, "partial": True}})
        _save_state(checkpoint_dir, state)

    left = remaining()
    train_seconds = None if left is None else max(left - 0.05 * 60 * config.max_minutes, 1.0)
    budget = Budget(config.transformer_steps, None if train_seconds is None else train_seconds + elapsed_before)
    budget.start -= elapsed_before
    run_start, last_checkpoint = step, time.perf_counter()
    batch = config.batch_size
    bar = tqdm(total=config.transformer_steps, initial=step, desc="transformer", unit="step", smoothing=0.05)
    while not budget.done(step):
        lr = learning_rate(config.lr, step, budget.progress(step), config.warmup_steps)
        _set_lr(optimizer, lr)
        index = torch.randint(0, len(latent_mean), (batch,), device=device, generator=generator)
        noise = torch.randn((2, batch, *latent_mean.shape[1:]), device=device, generator=generator)
        x0 = (latent_mean[index] + latent_std[index] * noise[0] - shift_factor) * scaling_factor
        eps = noise[1]
        drop = torch.rand(batch, device=device, generator=generator) < config.caption_dropout
        input_ids = token_table[torch.where(drop, 0, caption_index[index])]
        # the schedule owns time: SD3's shift (Esser et al. 2024, Eq. 23) and the path x_t = (1 - t) x0 + t eps
        t = schedule.shift_time(logit_normal_times(batch, config.logit_mean, config.logit_std, generator, device))
        x_t = schedule.add_noise(x0, eps, t)
        with accelerator.autocast(), compaction():
            prompt_embeds, pooled = encode_captions(text_encoder, text_encoder_2, input_ids, joint_dim, t5_tokens)
            velocity = transformer(
                hidden_states=x_t,
                timestep=t * config.num_train_timesteps,
                encoder_hidden_states=prompt_embeds,
                pooled_projections=pooled,
            ).sample
        loss = flow_matching_loss(velocity, x0, eps)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for ema, model in zip(emas, raw):
            ema.update(model)
        step += 1
        if step % 10 == 0 or step == 1:
            value = loss.item()
            smoothed = value if smoothed is None else 0.95 * smoothed + 0.05 * value
            bar.set_postfix(loss=f"{smoothed:.4f}", lr=f"{lr:.1e}")
        if step % config.log_every == 0 and smoothed is not None:
            log.append({"step": step, "seconds": round(budget.elapsed(), 1), "loss": round(smoothed, 5)})
        bar.update(1)
        stopping = config.stop_after is not None and step - run_start >= config.stop_after
        by_time = (
            config.checkpoint_minutes > 0 and time.perf_counter() - last_checkpoint > 60 * config.checkpoint_minutes
        )
        if stopping or by_time or (config.checkpoint_steps and step % config.checkpoint_steps == 0):
            save_checkpoint()
            last_checkpoint = time.perf_counter()
        if stopping:
            bar.close()
            print(f"[train-teacher sd3] stopped after {step} steps; rerun the same command to resume")
            return checkpoint_dir
    bar.close()
    for ema, model in zip(emas, raw):
        ema.copy_to(model)
    parts = [_cpu_copy(m.eval().requires_grad_(False)) for m in raw]
    pipe = assemble_pipeline(vae_cpu, parts[1], parts[2], tokenizer, parts[0], scheduler)
    timings["transformer_s"] = round(budget.elapsed(), 1)
    stats["transformer"] = {"steps": step, "seconds": timings["transformer_s"], "loss": log}
    stats["parameters"] = {
        "transformer": count_parameters(pipe.transformer),
        "text_encoder": count_parameters(pipe.text_encoder),
        "text_encoder_2": count_parameters(pipe.text_encoder_2),
        "vae": count_parameters(pipe.vae),
    }
    stats["hardware"] = _hardware(device)
    timings["total_s"] = round(time.perf_counter() - t_start, 1)
    _save_folder(pipe, output_dir, config, stats)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    print(f"[train-teacher sd3] {step} steps in {timings['transformer_s']} s; wrote {output_dir}")
    _samples_and_metrics(pipe, output_dir, config, device)
    return output_dir


def _samples_and_metrics(pipe, output_dir: Path, config: FlowTeacherConfig, device) -> None:
    """samples.png at the default steps and CFG; with `eval_samples`, metrics.json and the model card."""
    from sdtoolkit.models.shapes_teacher import write_sample_grid

    if config.sample_prompts > 0:
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        path = write_sample_grid(
            pipe, output_dir / "samples.png", config.sample_prompts, steps=config.sample_steps,
            guidance=config.guidance, seed=config.seed,
        )  # fmt: skip
        print(f"[train-teacher sd3] wrote {path}")
    if config.eval_samples > 0:
        from sdtoolkit.models.shapes_teacher_flow_card import evaluate_flow_teacher, write_flow_model_card

        steps = tuple(dict.fromkeys((config.sample_steps, 4, 1)))
        metrics = evaluate_flow_teacher(output_dir, config.eval_samples, steps, config.guidance, device=str(device))
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"[train-teacher sd3] wrote {write_flow_model_card(output_dir)}")
