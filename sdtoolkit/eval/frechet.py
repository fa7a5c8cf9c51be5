"""Fréchet distance of classifier features (FD_shapes; Heusel et al. 2017, "GANs Trained by a Two Time-Scale
Update Rule...", Eq. 6) and the real-render references it is measured against. Its own module so that the
evaluator (`metrics`) and the report (`report`) share it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

REFERENCE_SEED = 10_000
"""Dataset seed of the real renders behind `Evaluator.reference_stats` (the evaluator trained on seeds 0 and 1)."""
REFERENCE_NUM = 2048
"""Default number of real renders behind `Evaluator.reference_stats`."""


@dataclass
class FeatureStats:
    """Mean and covariance of a feature set (float64), what a Fréchet distance compares."""

    mu: Float[Tensor, " F"]
    """Feature mean."""
    sigma: Float[Tensor, "F F"]
    """Feature covariance (unbiased)."""
    num: int
    """How many feature vectors these come from."""

    @classmethod
    def from_features(cls, features: Float[Tensor, "N F"]) -> FeatureStats:
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"need at least 2 feature vectors [N, F] for a covariance, got {tuple(features.shape)}")
        features = features.double()
        return cls(mu=features.mean(0), sigma=torch.cov(features.T), num=features.shape[0])


def sqrtm_psd(matrix: Float[Tensor, "F F"]) -> Float[Tensor, "F F"]:
    """Square root of a symmetric positive semi-definite matrix by eigen-decomposition (negative round-off
    eigenvalues are clipped to 0)."""
    matrix = (matrix + matrix.T) / 2
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return (eigenvectors * eigenvalues.clamp_min(0).sqrt()) @ eigenvectors.T


def frechet_distance(stats_1: FeatureStats, stats_2: FeatureStats) -> float:
    """Fréchet distance between two Gaussians (Heusel et al., 2017, "GANs trained by a two time-scale update rule",
    Eq. 6): |mu_1 - mu_2|^2 + tr(Sigma_1 + Sigma_2 - 2 (Sigma_1 Sigma_2)^(1/2)).

    tr((Sigma_1 Sigma_2)^(1/2)) is computed as the sum of square roots of the eigenvalues of the symmetric PSD matrix
    Sigma_1^(1/2) Sigma_2 Sigma_1^(1/2), which has the same eigenvalues, all in float64.
    """
    mu_1, mu_2 = stats_1.mu.double(), stats_2.mu.double()
    sigma_1, sigma_2 = stats_1.sigma.double(), stats_2.sigma.double()
    root_1 = sqrtm_psd(sigma_1)
    middle = root_1 @ sigma_2 @ root_1
    trace_covmean = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    distance = (mu_1 - mu_2).square().sum() + sigma_1.trace() + sigma_2.trace() - 2 * trace_covmean
    return max(float(distance), 0.0)
