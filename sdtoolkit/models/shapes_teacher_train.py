"""Training of the shapes teacher (`sdtoolkit.models.shapes_teacher`): render a fixed set, train the VAE, then the UNet
and text encoder with accelerate, EMA, a time budget and periodic loadable checkpoints."""

from __future__ import annotations

import json
import math
import multiprocessing
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sdtoolkit.models.shapes_teacher import (
    TeacherConfig,
    assemble_pipeline,
    build_scheduler,
    build_text_encoder,
    build_tokenizer,
    build_unet,
    build_vae,
    count_parameters,
    save_teacher,
    write_sample_grid,
)

__all__ = ["TrainingSet", "render_training_set", "train_teacher", "train_vae", "encode_latents", "train_unet"]


# ---------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class TrainingSet:
    """The fixed training renders: uint8 images and an index into `captions` per image."""

    images: torch.Tensor
    """[N, 3, H, W] uint8 (0..255)."""
    caption_index: torch.Tensor
    """[N] int64 index into `captions` (index 0 is "", the unconditional caption)."""
    captions: list[str]
    """"" followed by the distinct captions of the set, sorted."""


def _chunk_seed(seed: int, chunk: int) -> int:
    return seed * 100_003 + chunk


def _render_chunk(num: int, seed: int, resolution: int, device: str = "cpu") -> tuple[torch.Tensor, list[str]]:
    """One `render_batch` call as uint8 [num, 3, H, W] on the CPU plus its captions."""
    from sdtoolkit.data import render_batch

    batch = render_batch(num, seed=seed, resolution=resolution, device=device)
    pixels = batch["pixel_values"]  # [-1, 1]
    images = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    return images, list(batch["caption"])


def _render_chunk_worker(args: tuple[int, int, int]) -> tuple[torch.Tensor, list[str]]:
    torch.set_num_threads(1)
    return _render_chunk(*args)


def render_training_set(config: TeacherConfig, device: str | torch.device = "cpu") -> TrainingSet:
    """Renders `num_train_images` images in chunks of `render_chunk`, on `device` in this process or, with
    `num_workers > 0`, on the CPU in that many processes. The result depends only on `seed` and the sizes."""
    cache = None
    if config.cache_dir is not None:
        key = f"shapes-s{config.seed}-n{config.num_train_images}-r{config.resolution}-c{config.render_chunk}"
        cache = Path(config.cache_dir) / f"{key}.safetensors"
        if cache.exists():
            return _load_training_set(cache)
    sizes = [
        min(config.render_chunk, config.num_train_images - start)
        for start in range(0, config.num_train_images, config.render_chunk)
    ]
    jobs = [(n, _chunk_seed(config.seed, i), config.resolution) for i, n in enumerate(sizes)]
    images, captions = [], []
    bar = tqdm(total=config.num_train_images, desc="render", unit="img", smoothing=0.1)
    if config.num_workers > 0:
        # spawn, not fork: the parent may already hold CUDA and OpenMP state
        with ProcessPoolExecutor(config.num_workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for chunk_images, chunk_captions in pool.map(_render_chunk_worker, jobs):
                images.append(chunk_images)
                captions += chunk_captions
                bar.update(len(chunk_images))
    else:
        for job in jobs:
            chunk_images, chunk_captions = _render_chunk(*job, device=str(device))
            images.append(chunk_images)
            captions += chunk_captions
            bar.update(len(chunk_images))
    bar.close()
    vocabulary = [""] + sorted(set(captions))
    lookup = {c: i for i, c in enumerate(vocabulary)}
    caption_index = torch.tensor([lookup[c] for c in captions], dtype=torch.long)
    data = TrainingSet(torch.cat(images), caption_index, vocabulary)
    if cache is not None:
        from safetensors.torch import save_file

        cache.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"images": data.images, "caption_index": data.caption_index}
        save_file(tensors, str(cache), metadata={"captions": json.dumps(data.captions)})
    return data


def _load_training_set(path: Path) -> TrainingSet:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        captions = json.loads(f.metadata()["captions"])
    tensors = load_file(str(path))
    print(f"[train-teacher] loaded the rendered set from {path}")
    return TrainingSet(tensors["images"], tensors["caption_index"], captions)


def _to_pixels(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1] (the VAE's input range, as in SD)."""
    return images_uint8.float() / 127.5 - 1.0


# ---------------------------------------------------------------------------------------------------------------
# schedules and budgets
# ---------------------------------------------------------------------------------------------------------------


class Budget:
    """A stage's stopping rule: `max_steps` optimiser steps or `max_seconds` of wall time, whichever comes first.
    `progress()` in [0, 1] drives the learning-rate decay, so a time-limited run still anneals fully."""

    def __init__(self, max_steps: int, max_seconds: float | None):
        self.max_steps = max_steps
        self.max_seconds = max_seconds
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def progress(self, step: int) -> float:
        p = step / max(self.max_steps, 1)
        if self.max_seconds is not None:
            p = max(p, self.elapsed() / max(self.max_seconds, 1e-6))
        return min(p, 1.0)

    def done(self, step: int) -> bool:
        return step >= self.max_steps or (self.max_seconds is not None and self.elapsed() >= self.max_seconds)


def learning_rate(base_lr: float, step: int, progress: float, warmup_steps: int, final_fraction: float = 0.1) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay from `base_lr` to `final_fraction * base_lr` as
    `progress` goes 0 -> 1 (Loshchilov & Hutter 2017, SGDR, Eq. 5, one cycle)."""
    warmup = min(1.0, (step + 1) / max(warmup_steps, 1))
    cosine = final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))
    return base_lr * warmup * cosine


def _set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# ---------------------------------------------------------------------------------------------------------------
# stage 1: VAE
# ---------------------------------------------------------------------------------------------------------------


def train_vae(config: TeacherConfig, accelerator, data: TrainingSet, max_seconds: float | None):
    """Trains the `AutoencoderKL` on the renders: L1 + MSE reconstruction of a posterior sample plus
    `vae_kl_weight` x KL(q(z|x) || N(0, I)) per latent element (Kingma & Welling 2014, Eq. 10; Rombach et al. 2022
    use the same KL term with a small weight). Returns the unwrapped VAE (train mode off) and the loss log."""
    device = accelerator.device
    vae = build_vae(config)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0, fused=device.type == "cuda")
    vae, optimizer = accelerator.prepare(vae, optimizer)
    vae.train()
    images = data.images.to(device)
    generator = torch.Generator(device).manual_seed(config.seed + 1)
    budget = Budget(config.vae_steps, max_seconds)
    log, smoothed, step = [], None, 0
    bar = tqdm(total=config.vae_steps, desc="vae", unit="step", smoothing=0.05)
    while not budget.done(step):
        lr = learning_rate(config.vae_lr, step, budget.progress(step), config.vae_warmup_steps)
        _set_lr(optimizer, lr)
        index = torch.randint(0, len(images), (config.vae_batch_size,), device=device, generator=generator)
        x = _to_pixels(images[index])
        with accelerator.autocast():
            posterior = vae.encode(x).latent_dist
            z = posterior.mean + posterior.std * torch.randn(
                posterior.mean.shape, device=device, dtype=posterior.mean.dtype, generator=generator
            )
            reconstruction = vae.decode(z).sample.float()
        recon_loss = F.l1_loss(reconstruction, x) + F.mse_loss(reconstruction, x)
        kl = 0.5 * (posterior.mean.float() ** 2 + posterior.var.float() - 1.0 - posterior.logvar.float()).mean()
        loss = recon_loss + config.vae_kl_weight * kl
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(vae.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        value = recon_loss.item() if step % 10 == 0 or step == 1 else None
        if value is not None:
            smoothed = value if smoothed is None else 0.9 * smoothed + 0.1 * value
            bar.set_postfix(recon=f"{smoothed:.4f}", kl=f"{kl.item():.2f}", lr=f"{lr:.1e}")
        if step % config.log_every == 0 and smoothed is not None:
            log.append({"step": step, "seconds": round(budget.elapsed(), 1), "recon": round(smoothed, 5)})
        bar.update(1)
    bar.close()
    vae = accelerator.unwrap_model(vae)
    vae.eval().requires_grad_(False)
    return vae, {"steps": step, "seconds": round(budget.elapsed(), 1), "loss": log}


@torch.no_grad()
def encode_latents(
    vae, images: torch.Tensor, device, batch_size: int = 256, max_seconds: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std (unscaled, float32, on `device`) of `images` in order. With `max_seconds`, stops
    after the batch that crosses it and returns the latents of that prefix only (at least one batch)."""
    means, stds = [], []
    start_time = time.perf_counter()
    for start in tqdm(range(0, len(images), batch_size), desc="encode", unit="batch"):
        posterior = vae.encode(_to_pixels(images[start : start + batch_size].to(device))).latent_dist
        means.append(posterior.mean.float())
        stds.append(posterior.std.float())
        if max_seconds is not None and time.perf_counter() - start_time > max_seconds:
            break
    return torch.cat(means), torch.cat(stds)


# ---------------------------------------------------------------------------------------------------------------
# stage 2: UNet + text encoder
# ---------------------------------------------------------------------------------------------------------------


def train_unet(
    config: TeacherConfig,
    accelerator,
    data: TrainingSet,
    latent_mean: torch.Tensor,
    latent_std: torch.Tensor,
    scaling_factor: float,
    tokenizer,
    max_seconds: float | None,
    checkpoint: Callable[..., None] | None = None,
):
    """Trains UNet + text encoder with the epsilon-prediction loss || eps - eps_theta(x_t, t, c) ||^2 (Ho et al.
    2020, Eq. 14) at uniformly drawn t, x_t = alpha_t z0 + sigma_t eps from `sdtoolkit.core.schedules`, and
    `caption_dropout` of captions replaced by "". `checkpoint(unet, text_encoder, step)` is called every
    `checkpoint_minutes` with the EMA weights swapped in. Returns unwrapped (EMA) UNet, text encoder and the log."""
    from sdtoolkit.core.ema import EMA
    from sdtoolkit.core.schedules import schedule_from_config

    device = accelerator.device
    schedule = schedule_from_config(dict(build_scheduler(config).config))
    unet = build_unet(config)
    text_encoder = build_text_encoder(config, len(tokenizer))
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=device.type == "cuda")
    unet, text_encoder, optimizer = accelerator.prepare(unet, text_encoder, optimizer)
    unet.train()
    text_encoder.train()
    raw_unet, raw_text = accelerator.unwrap_model(unet), accelerator.unwrap_model(text_encoder)
    emas = [EMA(m, decay=config.ema_decay, warmup=True) for m in (raw_unet, raw_text)] if config.ema_decay > 0 else []

    token_table = tokenizer(
        data.captions, padding="max_length", max_length=config.max_length, truncation=True, return_tensors="pt"
    ).input_ids.to(device)
    caption_index = data.caption_index.to(device)
    latent_mean, latent_std = latent_mean.to(device), latent_std.to(device)
    generator = torch.Generator(device).manual_seed(config.seed + 2)
    budget = Budget(config.unet_steps, max_seconds)
    last_checkpoint = time.perf_counter()
    log, smoothed, step, batch = [], None, 0, config.batch_size
    bar = tqdm(total=config.unet_steps, desc="unet", unit="step", smoothing=0.05)
    while not budget.done(step):
        lr = learning_rate(config.lr, step, budget.progress(step), config.warmup_steps)
        _set_lr(optimizer, lr)
        index = torch.randint(0, len(latent_mean), (batch,), device=device, generator=generator)
        noise = torch.randn((2, batch, *latent_mean.shape[1:]), device=device, generator=generator)
        z0 = (latent_mean[index] + latent_std[index] * noise[0]) * scaling_factor
        eps = noise[1]
        drop = torch.rand(batch, device=device, generator=generator) < config.caption_dropout
        input_ids = token_table[torch.where(drop, 0, caption_index[index])]
        t = torch.randint(0, config.num_train_timesteps, (batch,), device=device, generator=generator)
        z_t = schedule.add_noise(z0, eps, t)
        with accelerator.autocast():
            encoder_hidden_states = text_encoder(input_ids)[0]
            eps_pred = unet(z_t, t, encoder_hidden_states).sample
        loss = F.mse_loss(eps_pred.float(), eps)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for ema, model in zip(emas, (raw_unet, raw_text)):
            ema.update(model)
        step += 1
        if step % 10 == 0 or step == 1:
            value = loss.item()
            smoothed = value if smoothed is None else 0.95 * smoothed + 0.05 * value
            bar.set_postfix(loss=f"{smoothed:.4f}", lr=f"{lr:.1e}")
        if step % config.log_every == 0 and smoothed is not None:
            log.append({"step": step, "seconds": round(budget.elapsed(), 1), "loss": round(smoothed, 5)})
        bar.update(1)
        if checkpoint is not None and time.perf_counter() - last_checkpoint > 60 * config.checkpoint_minutes:
            _with_ema(emas, (raw_unet, raw_text), checkpoint, raw_unet, raw_text, step)
            last_checkpoint = time.perf_counter()
    bar.close()
    for ema, model in zip(emas, (raw_unet, raw_text)):
        ema.copy_to(model)
    raw_unet.eval().requires_grad_(False)
    raw_text.eval().requires_grad_(False)
    return raw_unet, raw_text, {"steps": step, "seconds": round(budget.elapsed(), 1), "loss": log}


def _with_ema(emas, models, fn, *args) -> None:
    """Calls `fn(*args)` with the EMA weights swapped into `models`."""
    for ema, model in zip(emas, models):
        ema.store(model)
    try:
        fn(*args)
    finally:
        for ema, model in zip(emas, models):
            ema.restore(model)


# ---------------------------------------------------------------------------------------------------------------
# the whole run
# ---------------------------------------------------------------------------------------------------------------


def _cpu_copy(module):
    """A CPU copy of `module` for saving (the trained one may live on the GPU; its weights stay float32)."""
    import copy

    return copy.deepcopy(module).to("cpu")


def train_teacher(config: TeacherConfig, output_dir: str | Path) -> Path:
    """Renders the data, trains the VAE, then UNet + text encoder, and writes the complete SD folder to
    `output_dir` (plus `training_config.json`, `training_log.json`, `samples.png`). With `max_minutes`, the whole
    run (rendering and saving included, interpreter start-up not) is kept inside that wall-clock budget."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    t_start = time.perf_counter()
    output_dir = Path(output_dir)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if config.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but torch.cuda.is_available() is False")
    if config.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        # cudnn.benchmark stays off: its autotuning took ~15 s per stage on an H200 and the small convs gain little
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=config.device == "cpu")
    set_seed(config.seed)
    device = accelerator.device
    timings: dict[str, float] = {}

    def remaining() -> float | None:
        if config.max_minutes is None:
            return None
        return 60 * config.max_minutes - (time.perf_counter() - t_start)

    threads = torch.get_num_threads()
    print(f"[train-teacher] device={device} mixed_precision={config.mixed_precision} threads={threads}")
    tokenizer = build_tokenizer(config)
    t0 = time.perf_counter()
    data = render_training_set(config, device=device)
    timings["render_s"] = round(time.perf_counter() - t0, 1)
    print(
        f"[train-teacher] rendered {len(data.images)} images ({len(data.captions) - 1} captions) "
        f"in {timings['render_s']} s"
    )

    left = remaining()
    reserve = 0.1 * left if left is not None else 0.0  # latents, saving, samples
    vae_seconds = None if left is None else config.vae_time_fraction * (left - reserve)
    torch.manual_seed(config.seed)
    vae, vae_log = train_vae(config, accelerator, data, vae_seconds)
    timings["vae_s"] = vae_log["seconds"]

    t0 = time.perf_counter()
    left = remaining()
    encode_seconds = None if left is None else config.max_encode_fraction * left
    with accelerator.autocast():
        latent_mean, latent_std = encode_latents(vae, data.images, device, max_seconds=encode_seconds)
    if len(latent_mean) < len(data.images):
        print(
            f"[train-teacher] warning: only the first {len(latent_mean)} of {len(data.images)} images were encoded "
            f"within {config.max_encode_fraction:.0%} of the time left; the UNet trains on those"
        )
    sample = latent_mean[:2048] + latent_std[:2048] * torch.randn_like(latent_mean[:2048])
    scaling_factor = float(1.0 / sample.float().std())
    vae.register_to_config(scaling_factor=scaling_factor)
    timings["encode_s"] = round(time.perf_counter() - t0, 1)
    latent_stats = {
        "scaling_factor": scaling_factor,
        "latent_mean": float(latent_mean.mean()),
        "posterior_std_mean": float(latent_std.mean()),
        "num_encoded": len(latent_mean),
    }
    print(
        f"[train-teacher] VAE {vae_log['steps']} steps in {vae_log['seconds']} s; latents encoded in "
        f"{timings['encode_s']} s; scaling_factor={scaling_factor:.4f}"
    )
    vae_cpu = _cpu_copy(vae)
    scheduler = build_scheduler(config)
    stats = {"timings": timings, "latents": latent_stats, "vae": vae_log}

    def checkpoint(unet, text_encoder, step: int) -> None:
        pipe = assemble_pipeline(vae_cpu, _cpu_copy(text_encoder), tokenizer, _cpu_copy(unet), scheduler)
        save_teacher(pipe, output_dir / "checkpoint", config, {**stats, "unet": {"steps": step, "partial": True}})

    left = remaining()
    unet_seconds = None if left is None else max(left - 0.05 * 60 * config.max_minutes, 1.0)
    torch.manual_seed(config.seed + 3)
    unet, text_encoder, unet_log = train_unet(
        config, accelerator, data, latent_mean, latent_std, scaling_factor, tokenizer, unet_seconds, checkpoint
    )
    timings["unet_s"] = unet_log["seconds"]
    stats["unet"] = unet_log
    pipe = assemble_pipeline(vae_cpu, _cpu_copy(text_encoder), tokenizer, _cpu_copy(unet), scheduler)
    stats["parameters"] = {
        "unet": count_parameters(pipe.unet),
        "text_encoder": count_parameters(pipe.text_encoder),
        "vae": count_parameters(pipe.vae),
    }
    stats["hardware"] = _hardware(device)
    timings["total_s"] = round(time.perf_counter() - t_start, 1)
    save_teacher(pipe, output_dir, config, stats)
    shutil.rmtree(output_dir / "checkpoint", ignore_errors=True)  # the final folder supersedes it
    print(
        f"[train-teacher] UNet {unet_log['steps']} steps in {unet_log['seconds']} s; wrote {output_dir} "
        f"after {timings['total_s']} s"
    )
    if config.sample_prompts > 0:
        t0 = time.perf_counter()
        pipe.to(device)
        path = write_sample_grid(pipe, output_dir / "samples.png", config.sample_prompts, seed=config.seed)
        print(f"[train-teacher] wrote {path} in {time.perf_counter() - t0:.1f} s")
    return output_dir


def _hardware(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    import platform

    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {torch.get_num_threads()} threads (torch {torch.__version__})"
