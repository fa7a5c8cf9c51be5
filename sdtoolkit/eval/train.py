"""Training of the shapes evaluator on fresh renders, with light augmentation so it also reads generated images."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from sdtoolkit.core.config import AT_LEAST_1, FRACTION, NON_NEGATIVE, POSITIVE, SEED, Bound, Range
from sdtoolkit.data.dataset import render_batch
from sdtoolkit.data.shapes import COLOUR_NAMES, SHAPES, VIEWS
from sdtoolkit.eval.classifier import ShapesClassifier

HEADS = ("shape", "colour", "view")


@dataclass
class EvaluatorTrainingConfig:
    """How `train_evaluator` trains the shapes classifier."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "num_train": AT_LEAST_1,
        "num_test": Range(2),
        "steps": AT_LEAST_1,
        "batch_size": AT_LEAST_1,
        "learning_rate": POSITIVE,
        "weight_decay": NON_NEGATIVE,
        "seed": SEED,
        "resolution": Range(8, 512),  # the world renders every image on the CPU
        "max_shift": FRACTION,
        "max_scale": FRACTION,
        "max_jitter": FRACTION,
        "max_blur_sigma": NON_NEGATIVE,
        "max_noise_sigma": NON_NEGATIVE,
    }

    num_train: int = 16384
    """Rendered training images (drawn once from `seed`, then augmented afresh every step)."""
    num_test: int = 2048
    """Held-out images, rendered from seed `seed + 1` and never augmented."""
    steps: int = 3000
    """Optimizer steps."""
    batch_size: int = 64
    """Images per step."""
    learning_rate: float = 2e-3
    """Peak AdamW learning rate (linear warm-up over 5% of the steps, then cosine decay to 0)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    seed: int = 0
    """Seeds the training renders, the initialization, batch order and augmentation."""
    resolution: int = 64
    """Render resolution (and the classifier's input size)."""
    augment: bool = True
    """Apply `augment` (shift/scale, colour jitter, blur, noise) to training batches."""
    max_shift: float = 0.08
    """Largest random translation, as a fraction of the image size."""
    max_scale: float = 0.1
    """Largest relative random zoom in or out."""
    max_jitter: float = 0.1
    """Largest relative brightness / contrast change (per-channel gains vary by a third of it)."""
    max_blur_sigma: float = 1.2
    """Largest Gaussian blur sigma in pixels (half of the images are blurred)."""
    max_noise_sigma: float = 0.06
    """Largest standard deviation of additive Gaussian noise (images in [0, 1])."""
    save_float16: bool = True
    """Store the weights as float16 (half the size; `from_pretrained` loads them back as float32). The held-out
    accuracy is measured with the rounded weights, i.e. of the model as saved."""


def gaussian_blur(images: Tensor, sigma: Tensor, radius: int = 3) -> Tensor:
    """Separable Gaussian blur with a per-image sigma (pixels); sigma 0 leaves an image unchanged."""
    b, c, h, w = images.shape
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (offsets[None] / sigma.clamp_min(1e-3)[:, None]) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    kernel = kernel.repeat_interleave(c, dim=0)  # [b * c, k]
    x = F.pad(images.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel[:, None, None, :], groups=b * c)
    x = F.conv2d(x, kernel[:, None, :, None], groups=b * c)
    return x.reshape(b, c, h, w)


def augment(images: Tensor, config: EvaluatorTrainingConfig, generator: torch.Generator) -> Tensor:
    """Random shift and zoom (border pixels fill in), brightness / contrast / channel jitter, blur, and noise."""
    b = images.shape[0]

    def uniform(*shape: int, low: float = -1.0, high: float = 1.0) -> Tensor:
        return low + (high - low) * torch.rand(*shape, generator=generator)

    scale = 1 + config.max_scale * uniform(b)
    shift = 2 * config.max_shift * uniform(b, 2)  # grid coordinates span [-1, 1]
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = 1 / scale, 1 / scale, shift
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)

    brightness = 1 + config.max_jitter * uniform(b, 1, 1, 1)
    contrast = 1 + config.max_jitter * uniform(b, 1, 1, 1)
    gains = 1 + config.max_jitter / 3 * uniform(b, 3, 1, 1)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = ((images - mean) * contrast + mean) * brightness * gains

    sigma = config.max_blur_sigma * uniform(b, low=0.0) * (torch.rand(b, generator=generator) < 0.5)
    images = gaussian_blur(images, sigma)
    noise_sigma = config.max_noise_sigma * uniform(b, 1, 1, 1, low=0.0)
    images = images + noise_sigma * torch.randn(images.shape, generator=generator)
    return images.clamp(0, 1)


@torch.no_grad()
def accuracy(model: ShapesClassifier, images: Tensor, labels: dict[str, Tensor], batch_size: int = 256) -> dict:
    """Per-head accuracy, and `prompt` (shape and colour both right), of `model` on [0, 1] images."""
    model.eval()
    predictions = {head: [] for head in HEADS}
    for start in range(0, images.shape[0], batch_size):
        out = model(images[start : start + batch_size])
        for head, logits in zip(HEADS, (out.shape_logits, out.colour_logits, out.view_logits)):
            predictions[head].append(logits.argmax(-1))
    right = {head: torch.cat(predictions[head]) == labels[head] for head in HEADS}
    result = {head: right[head].double().mean().item() for head in HEADS}
    result["prompt"] = (right["shape"] & right["colour"]).double().mean().item()
    return result


def _learning_rate(step: int, config: EvaluatorTrainingConfig) -> float:
    warmup = max(1, int(0.05 * config.steps))
    if step < warmup:
        return config.learning_rate * (step + 1) / warmup
    progress = (step - warmup) / max(1, config.steps - warmup)
    return config.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))


def _hardware() -> str:
    return f"{platform.machine()} CPU ({os.cpu_count()} cores visible, torch threads {torch.get_num_threads()})"


def train_evaluator(
    output_dir: str | os.PathLike,
    num_train: int = EvaluatorTrainingConfig.num_train,
    steps: int = EvaluatorTrainingConfig.steps,
    seed: int = 0,
    config: EvaluatorTrainingConfig | None = None,
    progress: bool = True,
) -> dict:
    """Trains the shapes classifier on CPU and saves it to `output_dir` (diffusers folder) with its training config,
    `metrics.json` (held-out accuracy per head) and a `README.md` model card. Returns the metrics."""
    if config is None:
        config = EvaluatorTrainingConfig(num_train=num_train, steps=steps, seed=seed)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    # 1. Data: a pool of training renders (augmented afresh every step) and held-out renders from another seed.
    train = render_batch(config.num_train, seed=config.seed, resolution=config.resolution, progress=progress)
    test = render_batch(config.num_test, seed=config.seed + 1, resolution=config.resolution, progress=progress)
    train_images, test_images = (train["pixel_values"] + 1) / 2, (test["pixel_values"] + 1) / 2
    render_seconds = time.perf_counter() - started

    # 2. Model and optimizer.
    torch.manual_seed(config.seed)
    model = ShapesClassifier(
        sample_size=config.resolution, num_shapes=len(SHAPES), num_colours=len(COLOUR_NAMES), num_views=len(VIEWS)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)

    # 3. Training loop: summed cross-entropy of the three heads.
    model.train()
    bar = tqdm(range(config.steps), desc="training evaluator", unit="step", disable=not progress)
    for step in bar:
        index = torch.randint(config.num_train, (config.batch_size,), generator=generator)
        images = train_images[index]
        if config.augment:
            images = augment(images, config, generator)
        out = model(images)
        loss = (
            F.cross_entropy(out.shape_logits, train["shape"][index])
            + F.cross_entropy(out.colour_logits, train["colour"][index])
            + F.cross_entropy(out.view_logits, train["view"][index])
        )
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 25 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    train_seconds = time.perf_counter() - started - render_seconds

    # 4. Held-out accuracy of the model as saved, then save it, its training config, metrics and model card.
    if config.save_float16:
        for parameter in model.parameters():
            parameter.data = parameter.data.to(torch.float16).to(torch.float32)
    held_out = accuracy(model, test_images, {head: test[head] for head in HEADS})
    metrics = {
        "held_out_accuracy": held_out,
        "num_train": config.num_train,
        "num_test": config.num_test,
        "test_seed": config.seed + 1,
        "steps": config.steps,
        "render_seconds": round(render_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "hardware": _hardware(),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "feature_dim": model.config.feature_dim,
        "torch_version": torch.__version__,
    }
    if config.save_float16:  # nn.Module.to: ModelMixin.to warns about casting a model without fp32-only modules
        torch.nn.Module.to(model, torch.float16)
    model.save_pretrained(output_dir)
    (output_dir / "training_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (output_dir / "README.md").write_text(model_card(config, metrics))
    return metrics


def model_card(config: EvaluatorTrainingConfig, metrics: dict) -> str:
    """The README.md written beside a trained evaluator."""
    acc = metrics["held_out_accuracy"]
    return f"""# Shapes evaluator

A small CNN (`sdtoolkit.eval.ShapesClassifier`, {metrics["num_parameters"]} parameters) that reads the
shape ({", ".join(SHAPES)}), colour ({", ".join(COLOUR_NAMES)}) and DreamFusion view
word ({", ".join(VIEWS)}) off {config.resolution}x{config.resolution} renders of the procedural shapes
(`sdtoolkit.data`), and gives {metrics["feature_dim"]}-d features for `Evaluator.fd_shapes`.

- Data: {config.num_train} renders from `render_batch(seed={config.seed})`, augmented every step (shift/zoom,
  brightness/contrast/channel jitter, blur, noise; see `training_config.json`); held-out: {config.num_test}
  renders from seed {metrics["test_seed"]}, not augmented.
- Training: {config.steps} AdamW steps, batch {config.batch_size}, peak learning rate {config.learning_rate}.
  Rendering took {metrics["render_seconds"]} s, training {metrics["train_seconds"]} s on {metrics["hardware"]},
  torch {metrics["torch_version"]}.
- Weights: {"float16 (loaded as float32)" if config.save_float16 else "float32"}; the accuracies below are of
  the weights as saved.
- Held-out accuracy: shape {acc["shape"]:.4f}, colour {acc["colour"]:.4f}, view {acc["view"]:.4f},
  prompt (shape and colour) {acc["prompt"]:.4f}.

View accuracy is lower by nature: the view word flips at fixed azimuths (45 and 135 degrees), and for shapes
symmetric about z only the world-fixed light tells views apart, so cameras near a boundary are ambiguous.

Reproduce (same numbers on the same hardware and thread count):
`sdtoolkit train-evaluator --output DIR --steps {config.steps} --seed {config.seed} --num-train {config.num_train}
--num-test {config.num_test} --batch-size {config.batch_size} --learning-rate {config.learning_rate}
--num-threads {torch.get_num_threads()}`.
"""
