"""The embedded default teacher: a small text-to-image latent diffusion model of rendered 3D shapes, in Stable
Diffusion's exact folder layout (`builtin:shapes`).

Stock `diffusers.StableDiffusionPipeline.from_pretrained(folder)` loads what
`sdtoolkit.models.shapes_teacher_train.train_teacher` writes. The parts are
SD 1.x's (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models"), only smaller:

- `AutoencoderKL`: 64x64 RGB <-> 4x16x16 latents (two downsamplings), `scaling_factor` = 1 / std of the trained
  latents (Rombach et al. 2022, Sec. 4.3.2 / Appendix G; SD's 0.18215 was found the same way);
- `CLIPTextModel` + a word-level `CLIPTokenizer` (`sdtoolkit.models.text.build_word_tokenizer`), SD's conditioning
  is the final-layer-normed last hidden state, the unconditional embedding is the encoding of "";
- `UNet2DConditionModel` with cross-attention only at 8x8 and 4x4 (and the 4x4 mid block), epsilon prediction;
- `DDIMScheduler` in SD 1.5's convention (scaled_linear betas 0.00085 -> 0.012, 1000 steps, "leading" spacing,
  steps_offset=1, set_alpha_to_one=False, clip_sample=False).

Training (`train_teacher`) has two stages: the VAE on renders (L1 + MSE reconstruction + a small KL term), then
with the VAE frozen the UNet and the text encoder jointly with the epsilon-prediction loss of DDPM (Ho et al.
2020, Eq. 14) and 10 % caption dropout to "" for classifier-free guidance (Ho & Salimans 2022).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import torch

from sdtoolkit.core.config import AT_LEAST_1, FRACTION, NON_NEGATIVE, POSITIVE, SEED, Bound, OneOf, Range

__all__ = [
    "TeacherConfig",
    "build_tokenizer",
    "build_vae",
    "build_text_encoder",
    "build_unet",
    "build_scheduler",
    "assemble_pipeline",
    "save_teacher",
    "count_parameters",
    "image_grid",
    "sample_prompts",
    "write_sample_grid",
]


@dataclass
class TeacherConfig:
    """Architecture and training recipe of the shapes teacher. Defaults are the CPU recipe: on two otherwise idle
    cores about 18 min of VAE (~1.1 s per batch of 32) and 40 min of UNet (~0.2 s per batch of 32), estimated from
    step timings, not from a full run. GPU runs (`--device cuda`) want a large `batch_size` (4096 on an H200 costs
    no more per step than 1024: the step is launch-bound), uncapped steps and a `max_minutes` budget."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "resolution": Range(8),
        "num_train_images": AT_LEAST_1,
        "render_chunk": AT_LEAST_1,
        "num_workers": NON_NEGATIVE,
        "vae_channels": AT_LEAST_1,
        "vae_layers_per_block": AT_LEAST_1,
        "latent_channels": AT_LEAST_1,
        "text_hidden_size": AT_LEAST_1,
        "text_layers": AT_LEAST_1,
        "text_heads": AT_LEAST_1,
        "text_intermediate_size": AT_LEAST_1,
        "max_length": Range(9),  # the longest caption: 9 tokens with BOS/EOS
        "unet_channels": AT_LEAST_1,
        "unet_layers_per_block": AT_LEAST_1,
        "unet_attention_heads": AT_LEAST_1,
        "norm_num_groups": AT_LEAST_1,
        "num_train_timesteps": Range(2),
        "beta_start": Range(0, 1, low_open=True, high_open=True),
        "beta_end": Range(0, 1, low_open=True, high_open=True),
        "vae_steps": AT_LEAST_1,
        "vae_batch_size": AT_LEAST_1,
        "vae_lr": POSITIVE,
        "vae_kl_weight": NON_NEGATIVE,
        "vae_warmup_steps": NON_NEGATIVE,
        "vae_time_fraction": Range(0, 1, low_open=True, high_open=True),
        "unet_steps": AT_LEAST_1,
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
        "log_every": AT_LEAST_1,
        "sample_prompts": NON_NEGATIVE,
        "threads": AT_LEAST_1,
    }

    # --- data ---------------------------------------------------------------------------------------------------
    resolution: int = 64
    """Image side in pixels (the VAE maps it to resolution / 4 latents)."""
    num_train_images: int = 20_000
    """Size of the fixed training set, rendered once (deterministically from `seed`) and kept as uint8."""
    render_chunk: int = 500
    """Images per `render_batch` call; chunk i is rendered with seed `seed * 100_003 + i`, so the set does not
    depend on `num_workers`."""
    num_workers: int = 0
    """Processes that render chunks on the CPU (0: render in this process, on `device`)."""
    cache_dir: str | None = None
    """If set, the rendered set is stored there as safetensors (keyed by seed and sizes) and reused next time."""

    # --- VAE (AutoencoderKL) ------------------------------------------------------------------------------------
    vae_channels: tuple[int, ...] = (32, 64, 64)
    """`block_out_channels` of the VAE; len - 1 downsamplings (3 blocks: 64 -> 16)."""
    vae_layers_per_block: int = 1
    """ResNet blocks per VAE encoder block (the decoder has one more, as in diffusers)."""
    vae_mid_attention: bool = False
    """Self-attention in the VAE's 16x16 mid block (SD has it; it costs ~8x the VAE step on CPU, unneeded here)."""
    latent_channels: int = 4
    """Latent channels (SD: 4)."""

    # --- text encoder (CLIPTextModel) ---------------------------------------------------------------------------
    text_hidden_size: int = 64
    """Width of the text transformer = the UNet's `cross_attention_dim`."""
    text_layers: int = 3
    """Transformer layers of the text encoder."""
    text_heads: int = 4
    """Attention heads of the text encoder."""
    text_intermediate_size: int = 256
    """MLP width of the text encoder."""
    max_length: int = 16
    """Tokenizer `model_max_length` = `max_position_embeddings` (captions are at most 9 tokens with BOS/EOS)."""

    # --- UNet (UNet2DConditionModel) ----------------------------------------------------------------------------
    unet_channels: tuple[int, ...] = (32, 64, 96)
    """`block_out_channels` at 16x16, 8x8, 4x4. Cross-attention only at 8x8 and 4x4 (16x16 attention costs 4-8x)."""
    unet_layers_per_block: int = 1
    """ResNet (+ transformer) layers per UNet down block (up blocks have one more, as in diffusers)."""
    unet_attention_heads: int = 4
    """Heads of every UNet attention (diffusers' `attention_head_dim`, which SD configs use as the head count)."""
    norm_num_groups: int = 8
    """GroupNorm groups of the UNet and the VAE."""

    # --- noise schedule (SD 1.5) --------------------------------------------------------------------------------
    num_train_timesteps: int = 1000
    """Diffusion steps T (SD: 1000)."""
    beta_start: float = 0.00085
    """First beta of SD's scaled_linear schedule."""
    beta_end: float = 0.012
    """Last beta of SD's scaled_linear schedule."""

    # --- stage 1: VAE training ----------------------------------------------------------------------------------
    vae_steps: int = 1000
    """Maximum VAE optimiser steps (the time budget may stop it earlier)."""
    vae_batch_size: int = 32
    """VAE batch size."""
    vae_lr: float = 1e-3
    """VAE AdamW learning rate (after warm-up; cosine-decayed to 10 % over the stage)."""
    vae_kl_weight: float = 1e-6
    """Weight of the KL term (per latent element) against the per-pixel L1 + MSE reconstruction loss."""
    vae_warmup_steps: int = 100
    """Linear learning-rate warm-up steps of the VAE."""
    vae_time_fraction: float = 0.3
    """Share of `max_minutes` (after rendering) that the VAE stage may use."""

    # --- stage 2: UNet + text encoder ---------------------------------------------------------------------------
    unet_steps: int = 12_000
    """Maximum UNet optimiser steps (the time budget may stop it earlier)."""
    batch_size: int = 32
    """UNet batch size."""
    lr: float = 1e-3
    """AdamW learning rate of the UNet and the text encoder (after warm-up; cosine-decayed to 10 %)."""
    weight_decay: float = 0.01
    """AdamW weight decay (SD: 1e-2)."""
    warmup_steps: int = 200
    """Linear learning-rate warm-up steps of the UNet stage."""
    caption_dropout: float = 0.1
    """Probability of replacing a caption by "" (classifier-free guidance training, Ho & Salimans 2022)."""
    ema_decay: float = 0.999
    """EMA decay of the UNet and text-encoder weights (warmed up as min(decay, (1+n)/(10+n))); 0 disables EMA."""
    grad_clip: float = 1.0
    """Gradient-norm clipping of both stages."""

    # --- run ----------------------------------------------------------------------------------------------------
    seed: int = 0
    """Seeds the data, the initialisation and the training noise."""
    device: str = "cpu"
    """"cpu" or "cuda"."""
    mixed_precision: str = "no"
    """accelerate's mixed precision: "no", "bf16" or "fp16"."""
    max_minutes: float | None = None
    """Wall-clock budget of the whole run (rendering, both stages, saving; not the samples.png written after it);
    None: step counts only."""
    max_encode_fraction: float = 0.25
    """With `max_minutes`: encoding the set into latents may use at most this share of the time left; the UNet
    then trains on the images encoded by then (a prefix of the set)."""
    checkpoint_minutes: float = 2.0
    """Write a complete loadable SD folder to `<output>/checkpoint` this often during UNet training."""
    log_every: int = 50
    """Record the (smoothed) loss every this many steps in `training_log.json`."""
    sample_prompts: int = 10
    """Prompts in the `samples.png` grid written at the end (50 DDIM steps, CFG 5, 4 images each); 0: none."""
    threads: int | None = None
    """`torch.set_num_threads` for CPU runs (None: leave torch's default)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes stored in training_config.json."""

    def __post_init__(self) -> None:
        self.vae_channels = tuple(self.vae_channels)
        self.unet_channels = tuple(self.unet_channels)
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision={self.mixed_precision!r}; choose 'no', 'bf16' or 'fp16'")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device={self.device!r}; choose 'cpu' or 'cuda'")
        if len(self.unet_channels) != 3:
            raise ValueError(f"unet_channels={self.unet_channels} must have 3 entries (16x16, 8x8, 4x4)")
        factor = 2 ** (len(self.vae_channels) - 1)
        if self.resolution % factor:
            low, high = self.resolution // factor * factor, -(-self.resolution // factor) * factor
            raise ValueError(
                f"resolution {self.resolution} must be a multiple of the VAE's downsampling factor {factor} "
                f"(e.g. {low or high} or {high})"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TeacherConfig:
        """Rebuilds a config from `training_config.json` (unknown keys are rejected by name)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown TeacherConfig fields {unknown}; valid: {sorted(names)}")
        return cls(**data)


# ---------------------------------------------------------------------------------------------------------------
# components
# ---------------------------------------------------------------------------------------------------------------


def build_tokenizer(config: TeacherConfig):
    """A `CLIPTokenizer` with one token per caption word (every word of `sdtoolkit.data.VOCABULARY`)."""
    from sdtoolkit.data import VOCABULARY
    from sdtoolkit.models.text import build_word_tokenizer

    return build_word_tokenizer(VOCABULARY, model_max_length=config.max_length)


def build_vae(config: TeacherConfig, scaling_factor: float = 1.0):
    """SD's `AutoencoderKL`, narrower: `resolution` RGB <-> `latent_channels` x resolution/4 latents."""
    from diffusers import AutoencoderKL

    n = len(config.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=config.vae_channels,
        layers_per_block=config.vae_layers_per_block,
        latent_channels=config.latent_channels,
        norm_num_groups=config.norm_num_groups,
        sample_size=config.resolution,
        scaling_factor=scaling_factor,
        mid_block_add_attention=config.vae_mid_attention,
    )


def build_text_encoder(config: TeacherConfig, vocab_size: int):
    """A small `CLIPTextModel` (SD 1.x's text tower, with quick_gelu) for the word-level tokenizer."""
    from transformers import CLIPTextConfig, CLIPTextModel

    text_config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=config.text_hidden_size,
        intermediate_size=config.text_intermediate_size,
        num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads,
        max_position_embeddings=config.max_length,
        hidden_act="quick_gelu",
        projection_dim=config.text_hidden_size,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(text_config)


def build_unet(config: TeacherConfig):
    """SD's `UNet2DConditionModel` at `resolution / 4`: no attention at full latent resolution, cross-attention
    at the two lower resolutions and in the mid block, epsilon prediction."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=config.resolution // 2 ** (len(config.vae_channels) - 1),
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=config.unet_channels,
        layers_per_block=config.unet_layers_per_block,
        cross_attention_dim=config.text_hidden_size,
        attention_head_dim=config.unet_attention_heads,
        norm_num_groups=config.norm_num_groups,
    )


def build_scheduler(config: TeacherConfig):
    """`DDIMScheduler` configured as Stable Diffusion 1.5's (epsilon prediction, leading spacing)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
        timestep_spacing="leading",
    )


def assemble_pipeline(vae, text_encoder, tokenizer, unet, scheduler):
    """The stock `StableDiffusionPipeline` of the five parts (no safety checker, no feature extractor)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters of `module`."""
    return sum(p.numel() for p in module.parameters())


def save_teacher(pipeline, output_dir: str | Path, config: TeacherConfig, stats: dict | None = None) -> Path:
    """Writes the SD folder (safetensors, fp32) plus `training_config.json` (and `training_log.json` from
    `stats`). Writes into a temporary sibling first and swaps it in, so an interrupted save leaves the last
    complete folder in place; files already in `output_dir` that the save does not write are kept."""
    output_dir = Path(output_dir)
    tmp = output_dir.with_name(output_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipeline.save_pretrained(tmp, safe_serialization=True)
    (tmp / "training_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    if stats is not None:
        (tmp / "training_log.json").write_text(json.dumps(stats, indent=2) + "\n")
    output_dir.mkdir(parents=True, exist_ok=True)
    for item in tmp.iterdir():
        target = output_dir / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    tmp.rmdir()
    return output_dir


# ---------------------------------------------------------------------------------------------------------------
# samples
# ---------------------------------------------------------------------------------------------------------------


def sample_prompts(num: int) -> list[str]:
    """`num` captions that walk shapes, colours and views together, so 20 prompts cover every shape, colour and
    view at least three times (prompt i: shape i mod 5, colour i mod 6, view i mod 4)."""
    from sdtoolkit.data import COLOURS, SHAPES, VIEWS, caption

    colours = list(COLOURS)
    return [caption(SHAPES[i % len(SHAPES)], colours[i % len(colours)], VIEWS[i % len(VIEWS)]) for i in range(num)]


def image_grid(images: torch.Tensor, num_columns: int):
    """A PIL image of `images` ([N, 3, H, W] in [0, 1]) laid out row-major, `num_columns` per row."""
    from PIL import Image

    n, _, h, w = images.shape
    rows = -(-n // num_columns)
    canvas = torch.ones(3, rows * h, num_columns * w)
    for i, image in enumerate(images.float().clamp(0, 1).cpu()):
        r, c = divmod(i, num_columns)
        canvas[:, r * h : (r + 1) * h, c * w : (c + 1) * w] = image
    array = (canvas.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    return Image.fromarray(array)


@torch.no_grad()
def generate_images(
    pipeline, prompts: list[str], num_images: int, steps: int, guidance: float, seed: int
) -> torch.Tensor:
    """`num_images` samples per prompt from a `StableDiffusionPipeline`, prompt-major, as [N, 3, H, W] in [0, 1]."""
    device = pipeline._execution_device
    generator = torch.Generator(device).manual_seed(seed)
    out = pipeline(
        prompts,
        num_images_per_prompt=num_images,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=generator,
        output_type="pt",
    )
    return out.images.float().cpu()


def write_sample_grid(
    pipeline,
    path: str | Path,
    num_prompts: int = 10,
    num_images: int = 4,
    steps: int = 50,
    guidance: float = 5.0,
    seed: int = 0,
) -> Path:
    """Samples `num_images` images for each of `sample_prompts(num_prompts)` and writes a grid PNG (rows = prompts)
    and the prompts as `<path>.json`."""
    prompts = sample_prompts(num_prompts)
    images = generate_images(pipeline, prompts, num_images, steps, guidance, seed)
    path = Path(path)
    image_grid(images, num_images).save(path)
    settings = {"prompts": prompts, "num_images": num_images, "steps": steps, "guidance": guidance, "seed": seed}
    path.with_suffix(".json").write_text(json.dumps(settings, indent=2) + "\n")
    return path
