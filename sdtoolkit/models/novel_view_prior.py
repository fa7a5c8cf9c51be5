"""The embedded class-specific novel-view prior `builtin:shapes-novel-view`: a Zero123-style diffusion model of the
procedural shapes (Liu et al. 2023, "Zero-1-to-3"), DreamCar's "car-specific prior" for this toolkit's world (Du et al.
2024, Sec. 3.2: Zero123 fine-tuned on car scans).

Given a reference view x_ref of an object and the relative camera T from the reference to a target view
(`sdtoolkit.image_to_3d.novel_view.relative_camera`: delta polar, sin and cos of delta azimuth, delta distance), the
model denoises the target view's latent:

    eps_theta(z_t, t; x_ref, T),  z_t = alpha_t E(x_target) + sigma_t eps,  L = E || eps_theta - eps ||^2

(Zero123, Sec. 3.1-3.2); by default on a zero-terminal-SNR schedule with v-prediction instead (Lin et al. 2024), the
same loss in v. As in Zero123 the reference latent E(x_ref) is concatenated to z_t along the channels
(`Conditioning.concat_latents`); Zero123 also feeds T with the reference's CLIP embedding through cross-attention,
here T goes through the UNet's class-embedding projection instead (added to the time embedding; this world has no
CLIP). For classifier-free guidance both conditionings are zeroed with probability `conditioning_dropout` (Zero123:
5 %), which is the unconditional input `unconditional()` builds.

Parts (a stock diffusers folder: `unet/`, `vae/`, `scheduler/`, loaded by `load_novel_view_prior` into the shared
`Denoiser`):

- `UNet2DConditionModel` with `in_channels = 2 x 4` (noisy target + reference latent), `out_channels = 4`,
  `class_embed_type="projection"` over the 4 numbers of T, self-attention blocks, no cross-attention;
- `builtin:shapes`' frozen `AutoencoderKL` (64x64 RGB <-> 4x16x16) and its DDIM scheduler, rescaled to zero terminal
  SNR with v-prediction (`zero_terminal_snr`).

Data: every shape x colour of the world (5 x 6 objects), each rendered from `views_per_object` random cameras
(azimuth uniform, elevation in `elevation_range`, distance in `distance_range`); a training pair is two views of one
object. The objects sit in a world-fixed frame and world-fixed light, so a pair's relative camera and the reference
image together fix the target view, as in Zero123.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from sdtoolkit.core.conditioning import Conditioning
from sdtoolkit.core.config import AT_LEAST_1, FRACTION, NON_NEGATIVE, POSITIVE, SEED, Bound, Range

__all__ = [
    "NovelViewPriorConfig",
    "TRAIN_COMMAND",
    "build_unet",
    "load_novel_view_prior",
    "novel_view_prior_folder",
    "novel_view_conditioning",
    "render_object_views",
    "sample_novel_views",
    "train_novel_view_prior",
    "unconditional",
]

TRAIN_COMMAND = "sdtoolkit train-novel-view-prior --output OUTPUT"
"""The command that trains a novel-view prior (its defaults are the shipped prior's recipe)."""

META_FILE = "novel_view_prior.json"
"""The folder's description: camera convention, resolution, training config and the measured metrics."""


@dataclass
class NovelViewPriorConfig:
    """Training of the Zero123-style shapes prior (defaults: the CPU recipe)."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "views_per_object": Range(2),  # a pair is two different views of one object
        "batch_size": AT_LEAST_1,
        "steps": AT_LEAST_1,
        "lr": POSITIVE,
        "warmup_steps": NON_NEGATIVE,
        "conditioning_dropout": FRACTION,
        "ema_decay": FRACTION,
        "max_minutes": POSITIVE,
        "eval_pairs": NON_NEGATIVE,
        "eval_steps": AT_LEAST_1,
        "guidance_scale": POSITIVE,
        "threads": AT_LEAST_1,
        "checkpoint_steps": NON_NEGATIVE,
        "stop_after": AT_LEAST_1,
        "fov_deg": Range(1, 179),
        "seed": SEED,
        "layers_per_block": AT_LEAST_1,
        "attention_head_dim": AT_LEAST_1,
        "resolution": Range(8),
    }

    vae_source: str = "builtin:shapes"
    """Where the frozen VAE and the scheduler come from (a shapes teacher folder or builtin:shapes)."""
    resolution: int = 64
    """Render side in pixels (the VAE's sample size)."""
    views_per_object: int = 128
    """Random views rendered of each of the world's shape x colour objects."""
    elevation_range: tuple[float, float] = (-10.0, 60.0)
    """Camera elevations in degrees (the world's training-camera range)."""
    distance_range: tuple[float, float] = (2.4, 3.2)
    """Camera distances (the world's default is 2.8)."""
    fov_deg: float = 40.0
    """Vertical field of view of every camera."""
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    """UNet widths per resolution level (16, 8, 4 latent pixels)."""
    layers_per_block: int = 1
    """Residual blocks per UNet level."""
    attention_head_dim: int = 16
    """Self-attention head width of the attention blocks (the two lower levels and the middle)."""
    batch_size: int = 64
    """Pairs per step."""
    steps: int = 20000
    """Training steps (the time budget may end training first)."""
    lr: float = 5e-4
    """AdamW learning rate (linear warm-up, then cosine to 10 % over the steps or the time budget, whichever ends
    first)."""
    warmup_steps: int = 200
    """Linear learning-rate warm-up steps."""
    conditioning_dropout: float = 0.05
    """Probability of zeroing the reference latent and T together, for classifier-free guidance (Zero123: 5 %)."""
    ema_decay: float = 0.999
    """EMA of the UNet weights; the EMA weights are saved."""
    max_minutes: float | None = None
    """Wall-time budget of the training steps (None: run every step)."""
    eval_pairs: int = 400
    """Held-out pairs (new cameras) sampled and scored after training (0: none)."""
    eval_steps: int = 25
    """DDIM steps of the held-out samples."""
    guidance_scale: float = 3.0
    """CFG scale of the held-out samples (diffusers convention; Zero123 / threestudio's zero123 guidance: 3)."""
    zero_terminal_snr: bool = True
    """Rescale the betas to zero terminal SNR and predict v (Lin et al. 2024, "Common Diffusion Noise Schedules and
    Sample Steps are Flawed", Sec. 3.1-3.2), DDIM on trailing timesteps. With SD's schedule the noisiest training
    input still holds sqrt(alpha_bar_999) = 6.8 % of the target, from which the network learns the colour instead of
    taking it from the reference: measured, samples from pure noise came out green for every object (RESULTS).
    False: the VAE source's scheduler as it is (epsilon)."""
    seed: int = 0
    """Seed of the cameras, the initialisation and the training noise."""
    threads: int | None = None
    """torch CPU threads (None: torch's choice)."""
    checkpoint_steps: int = 500
    """Write the training state to `OUTPUT/checkpoint` every this many steps (0: never); rerunning the same command
    on that folder resumes exactly (same weights, optimiser, EMA and random stream)."""
    stop_after: int | None = None
    """Stop after this many steps of this run, leaving the checkpoint, as a preempted run would (tests)."""


RUN_CONTROL = frozenset({"threads", "checkpoint_steps", "stop_after", "eval_pairs", "eval_steps", "guidance_scale"})
"""Fields a resumed run may change (every other field must match the checkpoint's)."""
CHECKPOINT_DIR = "checkpoint"
"""The training state of an unfinished run, inside the output folder (removed when the prior is written)."""


def check_output(output: str | Path, config: NovelViewPriorConfig) -> dict | None:
    """The resumable state in `output` (None for a new or empty folder); refuses anything else in one line, before
    anything is written: a folder with other files, or a checkpoint of different settings."""
    from sdtoolkit.models.shapes_flow_teacher import _load_state

    output = Path(output)
    if not output.exists() or (output.is_dir() and not any(output.iterdir())):
        return None
    if not output.is_dir() or {p.name for p in output.iterdir()} != {CHECKPOINT_DIR}:
        raise FileExistsError(
            f"{output} exists and is not an empty folder (nor one holding only an unfinished run's {CHECKPOINT_DIR}/);"
            " choose a new folder"
        )
    state = _load_state(output / CHECKPOINT_DIR)
    if state is None:
        raise FileExistsError(f"{output / CHECKPOINT_DIR} holds no training state; remove it or choose a new folder")
    saved = state["config"]
    changed = sorted(k for k, v in asdict(config).items() if k not in RUN_CONTROL and v != saved.get(k))
    if changed:
        raise ValueError(
            f"cannot resume {output}: its checkpoint was trained with other {changed}; use the same settings or a new "
            "--output"
        )
    return state


def build_unet(config: NovelViewPriorConfig, latent_channels: int = 4, sample_size: int = 16):
    """The Zero123-style UNet: reference latent concatenated to the input, T through the class-embedding
    projection (`class_embed_type="projection"`, 4 inputs), self-attention at the lower levels, no
    cross-attention."""
    from diffusers import UNet2DConditionModel

    levels = len(config.block_out_channels)
    down = ("DownBlock2D",) + ("AttnDownBlock2D",) * (levels - 1)
    up = ("AttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=2 * latent_channels,
        out_channels=latent_channels,
        down_block_types=down,
        up_block_types=up,
        mid_block_type="UNetMidBlock2D",
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        attention_head_dim=config.attention_head_dim,
        norm_num_groups=math.gcd(32, *config.block_out_channels),
        class_embed_type="projection",
        projection_class_embeddings_input_dim=4,
    )


def novel_view_conditioning(reference_latents: Tensor, relative: Tensor) -> Conditioning:
    """The conditioning of a batch: reference latents `[B, 4, h, w]` (concatenated to z_t) and T `[B, 4]`."""
    return Conditioning(concat_latents=reference_latents, class_labels=relative.to(reference_latents.dtype))


def unconditional(cond: Conditioning) -> Conditioning:
    """The CFG-unconditional input of `cond`: reference latent and T zeroed (Zero123's dropped conditioning)."""
    return Conditioning(
        concat_latents=torch.zeros_like(cond.concat_latents), class_labels=torch.zeros_like(cond.class_labels)
    )


# ------------------------------------------------------------------------------------------------ loading


def novel_view_prior_folder(path: str | Path) -> Path:
    """The folder of the prior `path` names (`builtin:NAME` or a folder); FileNotFoundError naming the training
    command when it is not one (nothing is loaded)."""
    from sdtoolkit.models.loading import resolve_model_id

    try:
        folder = resolve_model_id(str(path))
    except OSError as error:
        raise FileNotFoundError(f"{error}; train a novel-view prior with `{TRAIN_COMMAND}`") from None
    if not isinstance(folder, Path) or not (folder / META_FILE).is_file():
        raise FileNotFoundError(
            f"{path}: not a novel-view prior folder (expected {META_FILE}, unet/, vae/, scheduler/); train one "
            f"with `{TRAIN_COMMAND}`"
        )
    return folder


def load_novel_view_prior(path: str | Path, device: str | torch.device = "cpu"):
    """The prior in `path` (`builtin:shapes-novel-view` or a folder written by `train_novel_view_prior`) as a
    `Denoiser` (UNet, frozen VAE, the scheduler's VP schedule and prediction type), eval mode, no gradients."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    from sdtoolkit.core.denoiser import Denoiser
    from sdtoolkit.core.schedules import schedule_from_config

    folder = novel_view_prior_folder(path)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet").to(device).eval().requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(folder / "vae").to(device).eval().requires_grad_(False)
    scheduler = DDIMScheduler.from_pretrained(folder / "scheduler")
    return Denoiser(unet, schedule_from_config(scheduler), scheduler.config.prediction_type, vae=vae)


# ------------------------------------------------------------------------------------------------ data


def _objects() -> tuple[Tensor, Tensor]:
    """(shape ids, colour ids) of every shape x colour object of the world."""
    from sdtoolkit.data.shapes import COLOURS, SHAPES

    shapes = torch.arange(len(SHAPES)).repeat_interleave(len(COLOURS))
    colours = torch.arange(len(COLOURS)).repeat(len(SHAPES))
    return shapes, colours


def sample_object_cameras(config: NovelViewPriorConfig, n: int, generator: torch.Generator):
    """`n` cameras: azimuth uniform, elevation and distance uniform in their ranges."""
    from sdtoolkit.data.cameras import Cameras, wrap_azimuth_deg

    u = torch.rand(3, n, generator=generator)
    (e0, e1), (d0, d1) = config.elevation_range, config.distance_range
    return Cameras(
        wrap_azimuth_deg(-180.0 + 360.0 * u[0]),
        e0 + (e1 - e0) * u[1],
        d0 + (d1 - d0) * u[2],
        torch.full((n,), float(config.fov_deg)),
    )


@torch.no_grad()
def render_object_views(
    config: NovelViewPriorConfig, vae, generator: torch.Generator, views: int, chunk: int = 64, progress: bool = True
):
    """Every object rendered from `views` random cameras and encoded: (latents `[O, V, 4, h, w]` (the VAE's mode,
    scaled), cameras as a dict of `[O, V]` tensors, images `[O, V, 3, H, W]` in [0, 1])."""
    from sdtoolkit.data.render import render

    shapes, colours = _objects()
    cams = sample_object_cameras(config, len(shapes) * views, generator)
    shape_ids, colour_ids = shapes.repeat_interleave(views), colours.repeat_interleave(views)
    images, latents = [], []
    for start in tqdm(range(0, len(shape_ids), chunk), desc="rendering views", leave=False, disable=not progress):
        part = slice(start, start + chunk)
        rgb = render(shape_ids[part], colour_ids[part], cams[part], resolution=config.resolution)
        images.append(rgb)
        z = vae.encode(rgb * 2 - 1).latent_dist.mode()
        latents.append((z - (getattr(vae.config, "shift_factor", None) or 0.0)) * vae.config.scaling_factor)
    o = len(shapes)
    fields = ("azimuth_deg", "elevation_deg", "distance", "fov_deg")
    cameras = {name: getattr(cams, name).reshape(o, views) for name in fields}
    return (
        torch.cat(latents).reshape(o, views, *latents[0].shape[1:]),
        cameras,
        torch.cat(images).reshape(o, views, *images[0].shape[1:]),
    )


def _cameras(cameras: dict[str, Tensor], objects: Tensor, views: Tensor):
    from sdtoolkit.data.cameras import Cameras

    return Cameras(
        *(cameras[name][objects, views] for name in ("azimuth_deg", "elevation_deg", "distance", "fov_deg"))
    )


def sample_pairs(latents: Tensor, cameras: dict[str, Tensor], n: int, generator: torch.Generator):
    """`n` training pairs: (target latents, reference latents, T), two distinct random views of a random object."""
    from sdtoolkit.image_to_3d.novel_view import relative_camera

    o, v = latents.shape[:2]
    objects = torch.randint(o, (n,), generator=generator)
    reference = torch.randint(v, (n,), generator=generator)
    target = (reference + torch.randint(1, v, (n,), generator=generator)) % v
    relative = relative_camera(_cameras(cameras, objects, reference), _cameras(cameras, objects, target))
    return latents[objects, target], latents[objects, reference], relative


# ------------------------------------------------------------------------------------------------ sampling


@torch.no_grad()
def sample_novel_views(
    denoiser, reference_latents: Tensor, relative: Tensor, steps: int, guidance_scale: float, generator
) -> Tensor:
    """DDIM (eta 0) target-view latents from the prior with CFG, `steps` evenly spaced timesteps from T - 1 to 0."""
    from sdtoolkit.core.consistency import ddim_jump
    from sdtoolkit.core.sampling import full_time

    cond = novel_view_conditioning(reference_latents, relative)
    uncond = unconditional(cond)
    x = torch.randn(reference_latents.shape, generator=generator)
    times = torch.linspace(denoiser.schedule.t_max, denoiser.schedule.t_min, steps + 1).round().tolist()
    for t, t_next in zip(times[:-1], times[1:]):
        prediction = denoiser.predict(x, full_time(t, x), cond, uncond=uncond, guidance_scale=guidance_scale)
        x = ddim_jump(denoiser, prediction, full_time(t_next, x))
    return x


# ------------------------------------------------------------------------------------------------ training


def train_novel_view_prior(config: NovelViewPriorConfig, output: str | Path, progress: bool = True) -> Path:
    """Renders the views, trains the UNet with the denoising loss on random pairs (EMA kept), scores held-out pairs
    and writes the folder (unet/ = EMA weights, vae/, scheduler/, novel_view_prior.json, README.md)."""
    from diffusers import AutoencoderKL, DDIMScheduler

    from sdtoolkit.core.denoiser import Denoiser
    from sdtoolkit.core.ema import EMA
    from sdtoolkit.core.schedules import schedule_from_config
    from sdtoolkit.models.loading import resolve_model_id
    from sdtoolkit.models.shapes_flow_teacher import _save_state
    from sdtoolkit.models.shapes_teacher_train import Budget, _set_lr, learning_rate

    output = Path(output)
    resumed = check_output(output, config)
    if config.threads:
        torch.set_num_threads(config.threads)
    source = resolve_model_id(config.vae_source)
    vae = AutoencoderKL.from_pretrained(Path(source) / "vae").eval().requires_grad_(False)
    scheduler = DDIMScheduler.from_pretrained(Path(source) / "scheduler")
    if config.zero_terminal_snr:
        scheduler = DDIMScheduler.from_config(
            scheduler.config, rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing"
        )
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    latents, cameras, _ = render_object_views(config, vae, generator, config.views_per_object, progress=progress)
    render_s = time.perf_counter() - start
    unet = build_unet(config, latents.shape[2], latents.shape[-1])
    ema = EMA(unet, decay=config.ema_decay)
    denoiser = Denoiser(unet, schedule_from_config(scheduler), scheduler.config.prediction_type)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=0.0)
    budget = Budget(config.steps, None if config.max_minutes is None else 60 * config.max_minutes)
    T = denoiser.schedule.num_train_timesteps
    log, losses, step = [], [], 0
    if resumed is not None:  # the rendering above drew the same numbers; the state continues from the checkpoint
        unet.load_state_dict(resumed["unet"])
        ema.load_state_dict(resumed["ema"])
        optimizer.load_state_dict(resumed["optimizer"])
        generator.set_state(resumed["generator"])
        log, losses, step = resumed["log"], resumed["losses"], resumed["step"]
        budget.start -= resumed["seconds"]
        print(f"[train-novel-view-prior] resumed {output / CHECKPOINT_DIR} at step {step}")
    run_start = step

    def save_checkpoint() -> None:
        state = {
            "config": asdict(config),
            "step": step,
            "seconds": budget.elapsed(),
            "log": log,
            "losses": losses,
            "generator": generator.get_state(),
            "unet": {k: v.detach().cpu() for k, v in unet.state_dict().items()},
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
        }
        (output / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        _save_state(output / CHECKPOINT_DIR, state)

    bar = tqdm(total=config.steps, initial=step, desc="novel-view prior", disable=not progress, unit="step")
    while not budget.done(step):
        x0, reference, relative = sample_pairs(latents, cameras, config.batch_size, generator)
        drop = torch.rand(config.batch_size, generator=generator) < config.conditioning_dropout
        reference = torch.where(drop[:, None, None, None], torch.zeros_like(reference), reference)
        relative = torch.where(drop[:, None], torch.zeros_like(relative), relative)
        eps = torch.randn(x0.shape, generator=generator)
        t = torch.randint(T, (config.batch_size,), generator=generator)
        x_t = denoiser.add_noise(x0, eps, t)
        prediction = denoiser.predict(x_t, t, novel_view_conditioning(reference, relative))
        target = denoiser.convert(x0, eps, t, denoiser.prediction_type)  # eps, or v = alpha_t eps - sigma_t x0
        loss = F.mse_loss(prediction.raw, target)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):  # stop before anything is written: no NaN prior is ever saved
            raise FloatingPointError(f"the novel-view prior's loss is {losses[-1]} at step {step + 1}; nothing saved")
        _set_lr(optimizer, learning_rate(config.lr, step, budget.progress(step), config.warmup_steps))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        ema.update(unet)
        step += 1
        every = max(1, config.steps // 200)
        if step % every == 0 or step == config.steps:
            log.append({"step": step, "loss": sum(losses[-every:]) / len(losses[-every:])})
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}")
        stopping = config.stop_after is not None and step - run_start >= config.stop_after
        if stopping or (config.checkpoint_steps and step % config.checkpoint_steps == 0):
            save_checkpoint()
        if stopping:
            bar.close()
            print(f"[train-novel-view-prior] stopped after {step} steps; rerun the same command to resume")
            return output
    bar.close()
    train_s = budget.elapsed()
    output.mkdir(parents=True, exist_ok=True)
    ema.copy_to(unet)  # the saved weights are the EMA's
    unet.save_pretrained(output / "unet", safe_serialization=True)
    vae.save_pretrained(output / "vae", safe_serialization=True)
    scheduler.save_pretrained(output / "scheduler")
    meta: dict[str, Any] = {
        "kind": "zero123-style novel-view prior",
        "conditioning": "concat_latents = reference latent; class_labels = T (delta polar, sin, cos delta azimuth, "
        "delta distance; sdtoolkit.image_to_3d.novel_view.relative_camera)",
        "config": {k: v for k, v in asdict(config).items()},
        "training": {"steps": step, "render_s": round(render_s, 1), "train_s": round(train_s, 1), "log": log},
        "command": config_command(config),
    }
    (output / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if config.eval_pairs:
        prior = load_novel_view_prior(output)
        meta["metrics"] = evaluate_prior(prior, config, seed=config.seed + 1, progress=progress)
        (output / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    write_card(output, meta)
    shutil.rmtree(output / CHECKPOINT_DIR, ignore_errors=True)
    return output


def config_command(config: NovelViewPriorConfig) -> str:
    """The `train-novel-view-prior` command line of the settings that differ from the defaults."""
    default = NovelViewPriorConfig()
    flags = [
        f"--{name.replace('_', '-')} {' '.join(map(str, value)) if isinstance(value, tuple) else value}"
        for name, value in asdict(config).items()
        if value != getattr(default, name)
    ]
    return " ".join(["sdtoolkit train-novel-view-prior --output OUTPUT", *flags])


@torch.no_grad()
def evaluate_prior(
    prior, config: NovelViewPriorConfig, seed: int, batch: int = 50, progress: bool = True
) -> dict[str, Any]:
    """Held-out pairs of new cameras (one reference and one target view of every object in turn): PSNR of the
    decoded sample against the true render, and the shapes evaluator's shape / colour / view accuracy of the
    samples against the object and the target camera's view word; also the same scores of the reference view
    itself as the "no novel view" baseline (PSNR of the reference against the target)."""
    from sdtoolkit.data.cameras import view_word
    from sdtoolkit.data.shapes import COLOUR_NAMES, SHAPES
    from sdtoolkit.eval import Evaluator
    from sdtoolkit.image_to_3d.novel_view import relative_camera

    generator = torch.Generator().manual_seed(seed)
    n_objects = len(_objects()[0])
    per_object = max(1, math.ceil(config.eval_pairs / n_objects))
    latents, cameras, images = render_object_views(config, prior.vae, generator, 2 * per_object, progress=progress)
    shapes, colours = _objects()
    objects = torch.arange(n_objects).repeat(per_object)[: config.eval_pairs]  # every object in turn
    reference = 2 * (torch.arange(len(objects)) // n_objects)  # its next unused pair of views
    target = reference + 1

    ref_cams, tgt_cams = _cameras(cameras, objects, reference), _cameras(cameras, objects, target)
    relative = relative_camera(ref_cams, tgt_cams)
    samples = []
    for s in range(0, len(objects), batch):
        part = slice(s, s + batch)
        z = sample_novel_views(
            prior, latents[objects[part], reference[part]], relative[part], config.eval_steps, config.guidance_scale,
            generator,
        )  # fmt: skip
        samples.append(((prior.decode(z) + 1) / 2).clamp(0, 1))
    samples = torch.cat(samples)
    truth, refs = images[objects, target], images[objects, reference]
    evaluator = Evaluator.load()
    words = view_word(tgt_cams.azimuth_deg, tgt_cams.elevation_deg)
    prompts = [f"a {COLOUR_NAMES[colours[o]]} {SHAPES[shapes[o]]}, {w} view" for o, w in zip(objects.tolist(), words)]

    def psnr(a: Tensor, b: Tensor) -> Tensor:
        return -10 * torch.log10(((a - b) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10))

    sample_scores, reference_scores = evaluator.score(samples, prompts), evaluator.score(refs, prompts)
    keys = ("prompt_accuracy", "shape_accuracy", "colour_accuracy", "view_accuracy")
    return {
        "pairs": len(objects),
        "ddim_steps": config.eval_steps,
        "guidance_scale": config.guidance_scale,
        "psnr_median": float(psnr(samples, truth).median()),
        "reference_psnr_median": float(psnr(refs, truth).median()),
        "samples": {k: sample_scores[k] for k in keys},
        "reference_as_target": {k: reference_scores[k] for k in keys},
    }


def write_card(folder: Path, meta: dict[str, Any]) -> Path:
    """README.md of the prior from its novel_view_prior.json."""
    config, training = meta["config"], meta["training"]
    lines = [
        "# builtin:shapes-novel-view: a Zero123-style novel-view prior of the shapes world",
        "",
        "Reference view + relative camera T -> target view (Liu et al. 2023, Zero-1-to-3), trained on the toolkit's "
        "procedural shapes as DreamCar trains its class-specific prior (Du et al. 2024). Used by `sdtoolkit "
        "image-to-3d --novel-view-prior` as an SDS guidance on novel views.",
        "",
        "- Parts: `unet/` (`UNet2DConditionModel`, reference latent concatenated to the input, T through the class "
        "projection), `vae/` (builtin:shapes' frozen VAE), `scheduler/` (DDIM; zero terminal SNR and v-prediction "
        "unless trained with --no-zero-terminal-snr). Load with "
        "`sdtoolkit.models.novel_view_prior.load_novel_view_prior(folder)`.",
        f"- Data: 30 objects (every shape x colour) x {config['views_per_object']} views, elevation "
        f"{config['elevation_range']}, distance "
        f"{config['distance_range']}.",
        f"- Training: {training['steps']} steps of {config['batch_size']} pairs, AdamW lr {config['lr']}, EMA "
        f"{config['ema_decay']}, conditioning dropout {config['conditioning_dropout']}; rendering "
        f"{training['render_s']} s, training {training['train_s']} s.",
        f"- Command: `{meta['command']}`",
        "",
    ]
    metrics = meta.get("metrics")
    if metrics:
        s, r = metrics["samples"], metrics["reference_as_target"]
        lines += [
            f"## Held-out pairs ({metrics['pairs']}, new cameras; DDIM {metrics['ddim_steps']} steps, CFG "
            f"{metrics['guidance_scale']})",
            "",
            "| | PSNR vs the true target (median) | shape | colour | view word |",
            "|---|---|---|---|---|",
            f"| prior's sample | {metrics['psnr_median']:.2f} dB | {s['shape_accuracy']:.3f} | "
            f"{s['colour_accuracy']:.3f} | {s['view_accuracy']:.3f} |",
            f"| the reference view itself | {metrics['reference_psnr_median']:.2f} dB | {r['shape_accuracy']:.3f} | "
            f"{r['colour_accuracy']:.3f} | {r['view_accuracy']:.3f} |",
            "",
        ]
    path = folder / "README.md"
    path.write_text("\n".join(lines))
    return path
