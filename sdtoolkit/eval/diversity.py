"""Fidelity and diversity in the evaluator's feature space: improved precision and recall, per-prompt diversity and
the effective number of distinct samples per prompt (a mode-collapse indicator).

Features are `Evaluator.features` (the classifier's penultimate layer, the space of FD_shapes).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor

K_NEAREST = 3
"""k of the k-NN radii of improved precision and recall (Kynkäänniemi et al. 2019 use k = 3)."""


def knn_radii(features: Float[Tensor, "N F"], k: int = K_NEAREST, chunk: int = 1024) -> Float[Tensor, " N"]:
    """Distance from each feature vector to its k-th nearest neighbour among the others (Euclidean)."""
    if features.shape[0] <= k:
        raise ValueError(f"need more than k = {k} feature vectors for k-NN radii, got {features.shape[0]}")
    features = features.double()
    radii = []
    for start in range(0, features.shape[0], chunk):
        distances = torch.cdist(features[start : start + chunk], features)
        radii.append(distances.kthvalue(k + 1, dim=1).values)  # the nearest is the vector itself, at 0
    return torch.cat(radii)


def within_manifold(
    queries: Float[Tensor, "M F"], support: Float[Tensor, "N F"], radii: Float[Tensor, " N"], chunk: int = 1024
) -> Tensor:
    """Per query: whether it lies within the k-NN ball of some support vector, |q - s| <= radius(s)."""
    support, radii = support.double(), radii.double()
    inside = []
    for start in range(0, queries.shape[0], chunk):
        distances = torch.cdist(queries[start : start + chunk].double(), support)
        inside.append((distances <= radii[None]).any(1))
    return torch.cat(inside)


def precision_recall(
    generated: Float[Tensor, "M F"], real: Float[Tensor, "N F"], k: int = K_NEAREST
) -> dict[str, Tensor]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, "Improved precision and recall metric for assessing
    generative models", Eqs. 1-3): each set's manifold is the union of balls around its vectors, each of radius the
    distance to its k-th nearest neighbour in the set; precision is the fraction of generated vectors inside the
    real manifold, recall the fraction of real vectors inside the generated one.

    Returns the per-vector indicators: "precision" [M] (generated inside real) and "recall" [N] (real inside
    generated); their means are the two figures."""
    real_radii, generated_radii = knn_radii(real, k), knn_radii(generated, k)
    return {
        "precision": within_manifold(generated, real, real_radii).double(),
        "recall": within_manifold(real, generated, generated_radii).double(),
    }


def group_by_prompt(prompts: list[str]) -> dict[str, list[int]]:
    """Image indices of each distinct prompt, in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(prompt, []).append(i)
    return groups


def mean_pairwise_distance(features: Float[Tensor, "N F"]) -> float:
    """Mean Euclidean distance over all pairs of distinct vectors (NaN for fewer than 2)."""
    n = features.shape[0]
    if n < 2:
        return math.nan
    distances = torch.cdist(features.double(), features.double())
    return float(distances.sum() / (n * (n - 1)))


def vendi_score(features: Float[Tensor, "N F"], centre: Float[Tensor, " F"] | None = None) -> float:
    """The Vendi score (Friedman & Dieng 2023, "The Vendi Score: a diversity evaluation metric for machine
    learning", Eq. 1): exp of the Shannon entropy of the eigenvalues of K / n, K the cosine-similarity Gram matrix
    of the (optionally centred) features. It is the effective number of distinct samples: 1 when all are the
    same, n when all are orthogonal."""
    x = features.double()
    if centre is not None:
        x = x - centre.double()
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    eigenvalues = torch.linalg.eigvalsh(x @ x.T / x.shape[0]).clamp_min(0)
    eigenvalues = eigenvalues[eigenvalues > 1e-12]
    return float(torch.exp(-(eigenvalues * eigenvalues.log()).sum()))


def per_prompt_diversity(
    features: Float[Tensor, "N F"], prompts: list[str], centre: Float[Tensor, " F"] | None = None
) -> dict[str, Tensor]:
    """Per distinct prompt with at least 2 images: "distance" (mean pairwise feature distance) and "vendi" (the
    effective number of distinct samples, features centred on `centre`, e.g. the real renders' feature mean)."""
    distances, vendi = [], []
    for indices in group_by_prompt(prompts).values():
        if len(indices) < 2:
            continue
        group = features[torch.tensor(indices)]
        distances.append(mean_pairwise_distance(group))
        vendi.append(vendi_score(group, centre))
    as_tensor = lambda values: torch.tensor(values, dtype=torch.float64)  # noqa: E731
    return {"distance": as_tensor(distances), "vendi": as_tensor(vendi)}
