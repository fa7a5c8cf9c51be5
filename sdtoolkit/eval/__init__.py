"""Evaluation: the shapes classifier (per-attribute accuracy, FD_shapes, precision/recall), image quality,
per-prompt diversity, 95 % intervals on every figure (`Evaluator.report`, `compare_reports`), PSNR, and CLIP score /
FID via torchmetrics."""

from sdtoolkit.eval.classifier import ShapesClassifier, ShapesClassifierOutput
from sdtoolkit.eval.diversity import precision_recall, vendi_score
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
from sdtoolkit.eval.quality import DEGRADATIONS, degrade, image_quality
from sdtoolkit.eval.report import build_report, compare_reports, format_comparison, format_report
from sdtoolkit.eval.stats import Interval, bootstrap_interval, split_interval
from sdtoolkit.eval.train import EvaluatorTrainingConfig, train_evaluator
from sdtoolkit.eval.views import derive_view_classes, view_classes

__all__ = [
    "DEGRADATIONS",
    "EvaluationDependencyError",
    "Evaluator",
    "EvaluatorTrainingConfig",
    "FeatureStats",
    "Interval",
    "ShapesClassifier",
    "ShapesClassifierOutput",
    "bootstrap_interval",
    "build_report",
    "clip_score",
    "compare_reports",
    "degrade",
    "derive_view_classes",
    "default_evaluator_path",
    "evaluate_pipeline",
    "fid",
    "format_comparison",
    "format_report",
    "frechet_distance",
    "generate_images",
    "precision_recall",
    "psnr",
    "image_quality",
    "split_interval",
    "train_evaluator",
    "vendi_score",
    "view_classes",
]
