"""Scores for images of the procedural shapes: classifier accuracy against prompts, Fréchet distance of classifier
features (FD_shapes), PSNR between teacher and student, and CLIP score / FID for real teachers via torchmetrics.

All images are float tensors in [0, 1], NCHW, RGB (uint8 tensors are divided by 255); the classifier resizes them
to its input size (64x64).
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from sdtoolkit.data.dataset import parse_caption, render_batch
from sdtoolkit.data.shapes import COLOUR_NAMES, SHAPES, VIEWS
from sdtoolkit.eval.classifier import ShapesClassifier, ShapesClassifierOutput
from sdtoolkit.eval.frechet import (  # noqa: F401  (re-exported: their public home was this module)
    REFERENCE_NUM,
    REFERENCE_SEED,
    FeatureStats,
    frechet_distance,
    sqrtm_psd,
)

DEFAULT_EVALUATOR_ASSET = "evaluator"
"""Folder of the shipped evaluator inside the `sdtoolkit.assets` package."""
CLIP_MODEL = "openai/clip-vit-large-patch14"
"""Default CLIP model of `clip_score` (the one torchmetrics defaults to)."""


class EvaluationDependencyError(RuntimeError):
    """A metric needs a package or weights that are not available; the message says what to install or download."""


def as_unit_images(images: Tensor) -> Float[Tensor, "B 3 H W"]:
    """Checks an image batch and returns it as float in [0, 1] (uint8 is divided by 255, floats are clamped)."""
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"expected RGB images as a [B, 3, H, W] tensor in [0, 1], got {shape}")
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    return images.float().clamp(0, 1)


# ----------------------------------------------------------------------------------------------------------------
# Fréchet distance and PSNR
# ----------------------------------------------------------------------------------------------------------------


def psnr(a: Tensor, b: Tensor, max_value: float = 1.0, reduction: str = "mean") -> float | Tensor:
    """Peak signal-to-noise ratio 10 log10(max_value^2 / MSE) per image, in dB, of two [B, C, H, W] batches in [0, 1].

    `reduction="mean"` returns the mean over images as a float, `"none"` the per-image tensor. Identical images give
    `inf` (no cap), and a mean that includes one is `inf` too.
    """
    if a.shape != b.shape:
        raise ValueError(f"psnr needs two batches of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    mse = (a.double() - b.double()).square().flatten(1).mean(1)
    values = 10 * torch.log10(max_value**2 / mse)  # mse 0 -> inf
    return float(values.mean()) if reduction == "mean" else values


# ----------------------------------------------------------------------------------------------------------------
# The shapes evaluator
# ----------------------------------------------------------------------------------------------------------------


def default_evaluator_path() -> Path:
    """The shipped evaluator folder, `assets/evaluator` of the installed package."""
    return Path(str(importlib.resources.files("sdtoolkit.assets") / DEFAULT_EVALUATOR_ASSET))


class Evaluator:
    """Classifies renders of the procedural shapes and scores image batches against their prompts."""

    def __init__(self, model: ShapesClassifier, batch_size: int = 256):
        self.model = model.eval()
        self.batch_size = batch_size
        self._reference_cache: dict[tuple[int, int, int], FeatureStats] = {}
        self._reference_features: dict[tuple[int, int, int], Tensor] = {}
        self._prompt_cache: dict[tuple[tuple[str, ...], int, int], Tensor] = {}

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Evaluator:
        """Loads a saved classifier (default: the shipped `assets/evaluator`)."""
        path = default_evaluator_path() if path is None else Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"no evaluator at {path} (expected config.json and diffusion_pytorch_model.safetensors); "
                "train one with `sdtoolkit train-evaluator --output DIR`"
            )
        return cls(ShapesClassifier.from_pretrained(path).to(device))

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.no_grad()
    def outputs(self, images: Tensor) -> ShapesClassifierOutput:
        """The classifier's logits and features for a batch, computed `batch_size` images at a time."""
        images = as_unit_images(images)
        parts = [
            self.model(images[start : start + self.batch_size].to(self.device))
            for start in range(0, images.shape[0], self.batch_size)
        ]
        return ShapesClassifierOutput(*(torch.cat([p[i] for p in parts]).cpu() for i in range(4)))

    def classify(self, images: Tensor) -> dict[str, Tensor]:
        """Predicted ids: {"shape": [B], "colour": [B], "view": [B]}, indices into SHAPES, COLOUR_NAMES, VIEWS."""
        out = self.outputs(images)
        return {
            "shape": out.shape_logits.argmax(-1),
            "colour": out.colour_logits.argmax(-1),
            "view": out.view_logits.argmax(-1),
        }

    def features(self, images: Tensor) -> Float[Tensor, "B F"]:
        """Penultimate-layer features, the space of `fd_shapes`."""
        return self.outputs(images).features

    def score(self, images: Tensor, prompts: list[str]) -> dict:
        """Accuracy of the images against their prompts (one prompt per image).

        Returns `prompt_accuracy` (shape and colour both right), `shape_accuracy`, `colour_accuracy`,
        `view_accuracy` (only over prompts that name a view; None when none does), `num_images`, `num_with_view`.
        """
        if len(prompts) != images.shape[0]:
            raise ValueError(f"got {images.shape[0]} images but {len(prompts)} prompts; need one prompt per image")
        parsed = [parse_caption(p) for p in prompts]
        predicted = self.classify(images)
        shape_right = predicted["shape"] == torch.tensor([SHAPES.index(s) for s, _, _ in parsed])
        colour_right = predicted["colour"] == torch.tensor([COLOUR_NAMES.index(c) for _, c, _ in parsed])
        with_view = [i for i, (_, _, v) in enumerate(parsed) if v is not None]
        view_targets = torch.tensor([VIEWS.index(parsed[i][2]) for i in with_view], dtype=torch.long)
        view_right = predicted["view"][with_view] == view_targets
        return {
            "prompt_accuracy": (shape_right & colour_right).double().mean().item(),
            "shape_accuracy": shape_right.double().mean().item(),
            "colour_accuracy": colour_right.double().mean().item(),
            "view_accuracy": view_right.double().mean().item() if with_view else None,
            "num_images": len(prompts),
            "num_with_view": len(with_view),
        }

    def feature_stats(self, images: Tensor) -> FeatureStats:
        """Mean and covariance of the classifier features of `images`."""
        return FeatureStats.from_features(self.features(images))

    def reference_features(
        self, n: int = REFERENCE_NUM, seed: int = REFERENCE_SEED, resolution: int = 64
    ) -> Float[Tensor, "N F"]:
        """Classifier features of `n` real renders of dataset seed `seed`, computed once per evaluator and cached."""
        key = (n, seed, resolution)
        if key not in self._reference_features:
            real = (render_batch(n, seed=seed, resolution=resolution)["pixel_values"] + 1) / 2
            self._reference_features[key] = self.features(real)
        return self._reference_features[key]

    def reference_stats(
        self, n: int = REFERENCE_NUM, seed: int = REFERENCE_SEED, resolution: int = 64
    ) -> FeatureStats:
        """Feature statistics of `n` real renders of dataset seed `seed`, computed once per evaluator and cached."""
        key = (n, seed, resolution)
        if key not in self._reference_cache:
            self._reference_cache[key] = FeatureStats.from_features(self.reference_features(n, seed, resolution))
        return self._reference_cache[key]

    def prompt_render_features(self, prompts: list[str], num: int, seed: int) -> Float[Tensor, "N F"]:
        """Classifier features of `num` real renders of each prompt, prompt-major (`report.prompt_renders`), cached."""
        from sdtoolkit.eval.report import prompt_renders

        key = (tuple(prompts), num, seed)
        if key not in self._prompt_cache:
            self._prompt_cache[key] = self.features(prompt_renders(list(prompts), num, seed))
        return self._prompt_cache[key]

    def report(self, images: Tensor, prompts: list[str], **kwargs) -> dict:
        """Every figure with its 95 % interval and image count: per-attribute accuracy (the headline
        `all_attributes_accuracy`), image quality, FD_shapes, precision/recall and per-prompt diversity. See
        `sdtoolkit.eval.report.build_report` for the figures and keyword arguments."""
        from sdtoolkit.eval.report import build_report

        return build_report(self, as_unit_images(images), prompts, **kwargs)

    def fd_shapes(self, images: Tensor, reference_images: Tensor | FeatureStats | None = None) -> float:
        """Fréchet distance between classifier features of `images` and of `reference_images` (images, or their
        precomputed `FeatureStats`; None means `reference_stats()`). Lower is better; it is biased upwards for small
        batches (compare numbers computed with the same number of images)."""
        if reference_images is None:
            reference = self.reference_stats()
        elif isinstance(reference_images, FeatureStats):
            reference = reference_images
        else:
            reference = self.feature_stats(reference_images)
        return frechet_distance(self.feature_stats(images), reference)


# ----------------------------------------------------------------------------------------------------------------
# Metrics for real teachers (torchmetrics; weights are downloaded by torchmetrics / transformers)
# ----------------------------------------------------------------------------------------------------------------

_INSTALL_HINT = "install the eval extra: pip install 'sdtoolkit[eval]' (torchmetrics>=1.9)"


def clip_score(images: Tensor, prompts: list[str], model_name_or_path: str = CLIP_MODEL) -> float:
    """CLIP score (Hessel et al., 2021: 100 * max(cos(E_image, E_text), 0), averaged) through torchmetrics.

    Needs torchmetrics and the CLIP weights (downloaded from the Hugging Face Hub on first use, or a local folder).
    Raises `EvaluationDependencyError` saying what to install or download when either is missing.
    """
    try:
        from torchmetrics.multimodal.clip_score import CLIPScore
    except ImportError as error:
        raise EvaluationDependencyError(f"clip_score needs torchmetrics: {_INSTALL_HINT}") from error
    try:
        metric = CLIPScore(model_name_or_path=model_name_or_path)
    except (OSError, ValueError) as error:
        raise EvaluationDependencyError(
            f"clip_score could not load the CLIP weights {model_name_or_path!r}: download them once with network "
            f"access (`hf download {model_name_or_path}`, HF_HUB_OFFLINE unset) or pass a local folder ({error})"
        ) from error
    metric.update((as_unit_images(images) * 255).round().to(torch.uint8), list(prompts))
    return float(metric.compute())


def fid(images: Tensor, reference_images: Tensor, feature: int = 2048) -> float:
    """FID (Heusel et al., 2017) with torchmetrics' Inception-v3 features, between two image batches in [0, 1].

    Needs torchmetrics with torch-fidelity and the Inception weights (downloaded on first use). Raises
    `EvaluationDependencyError` saying what to install or download when any is missing. Meaningful only for
    thousands of images; for the procedural shapes use `Evaluator.fd_shapes`.
    """
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError as error:
        raise EvaluationDependencyError(f"fid needs torchmetrics: {_INSTALL_HINT}") from error
    try:
        metric = FrechetInceptionDistance(feature=feature, normalize=True)
    except (ModuleNotFoundError, ImportError) as error:
        raise EvaluationDependencyError(
            f"fid needs torch-fidelity for the Inception network: pip install 'torchmetrics[image]' ({error})"
        ) from error
    except (OSError, RuntimeError) as error:
        raise EvaluationDependencyError(
            f"fid could not load the Inception weights; run it once with network access to download them ({error})"
        ) from error
    metric.update(as_unit_images(reference_images), real=True)
    metric.update(as_unit_images(images), real=False)
    return float(metric.compute())
