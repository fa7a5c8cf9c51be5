"""Evaluation: the shapes classifier (accuracy, FD_shapes), PSNR, and CLIP score / FID via torchmetrics."""

from sdtoolkit.eval.classifier import ShapesClassifier, ShapesClassifierOutput
from sdtoolkit.eval.metrics import (
    EvaluationDependencyError,
    Evaluator,
    FeatureStats,
    clip_score,
    default_evaluator_path,
    fid,
    frechet_distance,
    psnr,
)
from sdtoolkit.eval.pipeline import evaluate_pipeline, generate_images
from sdtoolkit.eval.train import EvaluatorTrainingConfig, train_evaluator

__all__ = [
    "EvaluationDependencyError",
    "Evaluator",
    "EvaluatorTrainingConfig",
    "FeatureStats",
    "ShapesClassifier",
    "ShapesClassifierOutput",
    "clip_score",
    "default_evaluator_path",
    "evaluate_pipeline",
    "fid",
    "frechet_distance",
    "generate_images",
    "psnr",
    "train_evaluator",
]
