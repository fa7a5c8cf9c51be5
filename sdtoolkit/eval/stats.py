"""95 % intervals for every evaluator figure, and whether two runs differ beyond noise.

Two kinds of figures, two kinds of interval:

- A mean of per-image values (accuracies, sharpness, speckle, precision, ...): percentile bootstrap over images
  (Efron & Tibshirani 1993, ch. 13), resampled within strata (the prompts: the prompt list is fixed by design, the
  noise seeds are the sample), `num_resamples` times.
- A figure of the whole set (FD, recall): the same figure on K disjoint splits of the images, each with its own noise
  seeds, gives its sampling sd at N / K images; these figures' sampling variance falls as 1 / N, so the interval of
  the N-image value is value ± t_{K-1} sd / sqrt(K) (a Student-t interval on the splits).

`compare` says whether two runs' figures differ beyond noise: the 95 % interval of the difference excludes 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

CONFIDENCE = 0.95
"""Coverage of every interval."""
NUM_RESAMPLES = 2000
"""Default bootstrap resamples."""
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131)
"""Student t quantile 0.975 for 1..15 degrees of freedom (beyond: 2.131 down to 1.96; `t_quantile` interpolates)."""


@dataclass
class Interval:
    """One figure with its 95 % interval."""

    value: float
    """The figure on all images."""
    low: float
    """Lower end of the 95 % interval."""
    high: float
    """Upper end of the 95 % interval."""
    n: int
    """How many images (or, for per-prompt figures, prompts) it rests on."""
    method: str
    """"bootstrap" (over images, within prompts), "splits-K" (Student t on K disjoint splits) or "none"."""

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def t_quantile(dof: int) -> float:
    """The 0.975 quantile of Student's t with `dof` degrees of freedom (table to 15, then 1.96 + 2.4 / dof)."""
    if dof < 1:
        raise ValueError(f"need at least 1 degree of freedom, got {dof}")
    return T_975[dof - 1] if dof <= len(T_975) else 1.96 + 2.4 / dof


def strata_indices(strata: list | None, n: int) -> list[Tensor]:
    """Index tensors of the images of each stratum (one stratum of all images when `strata` is None)."""
    if strata is None:
        return [torch.arange(n)]
    if len(strata) != n:
        raise ValueError(f"got {len(strata)} strata for {n} values; need one per value")
    groups: dict = {}
    for i, key in enumerate(strata):
        groups.setdefault(key, []).append(i)
    return [torch.tensor(g) for g in groups.values()]


def bootstrap_means(
    values: Tensor, strata: list | None = None, num_resamples: int = NUM_RESAMPLES, seed: int = 0
) -> Tensor:
    """Means of `num_resamples` bootstrap resamples of `values` (NaN entries dropped first), each stratum
    resampled with replacement to its own size; strata of a single value are pooled into one."""
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    keep = ~values.isnan()
    strata = None if strata is None else [s for s, k in zip(strata, keep.tolist()) if k]
    values = values[keep]
    if values.numel() == 0:
        return torch.full((num_resamples,), math.nan, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros(num_resamples, dtype=torch.float64)
    groups = strata_indices(strata, values.numel())
    # a stratum of one value resamples to itself (no spread: one clip per prompt gave a zero-width interval); the
    # singletons are pooled into one stratum, so that all-singleton strata are the plain bootstrap
    singles = [g for g in groups if g.numel() == 1]
    if len(singles) > 1:
        groups = [g for g in groups if g.numel() > 1] + [torch.cat(singles).sort().values]
    for group in groups:
        picks = group[torch.randint(group.numel(), (num_resamples, group.numel()), generator=generator)]
        total += values[picks].sum(1)
    return total / values.numel()


def bootstrap_interval(
    values: Tensor, strata: list | None = None, num_resamples: int = NUM_RESAMPLES, seed: int = 0
) -> Interval:
    """Mean of `values` (NaN dropped) with its 95 % percentile-bootstrap interval, resampled within strata."""
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    n = int((~values.isnan()).sum())
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "none")
    means = bootstrap_means(values, strata, num_resamples, seed)
    alpha = (1 - CONFIDENCE) / 2
    low, high = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return Interval(float(values.nanmean()), low, high, n, "bootstrap")


def split_interval(
    value: float, splits: list[float], n: int, bounds: tuple[float, float] = (-math.inf, math.inf)
) -> Interval:
    """`value` (the figure on all n images) ± t sd(splits) / sqrt(K), from the figure on K disjoint splits, clipped
    to the figure's range `bounds`."""
    k = len(splits)
    if k < 2:
        return Interval(float(value), math.nan, math.nan, n, "none")
    half = t_quantile(k - 1) * float(torch.tensor(splits, dtype=torch.float64).std()) / math.sqrt(k)
    low, high = max(value - half, bounds[0]), min(value + half, bounds[1])
    return Interval(float(value), low, high, n, f"splits-{k}")


def difference_interval(a: dict, b: dict, num_resamples: int = NUM_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """95 % interval of figure(b) - figure(a) for two independent runs, each given as a dict with either
    "values" (+ optional "strata": bootstrap, resampled independently) or "value" and "splits" (Welch-style t
    interval with the smaller run's K - 1 degrees of freedom)."""
    if "values" in a and "values" in b:
        means_a = bootstrap_means(torch.as_tensor(a["values"]), a.get("strata"), num_resamples, seed)
        means_b = bootstrap_means(torch.as_tensor(b["values"]), b.get("strata"), num_resamples, seed + 1)
        alpha = (1 - CONFIDENCE) / 2
        low, high = torch.quantile(means_b - means_a, torch.tensor([alpha, 1 - alpha], dtype=torch.float64))
        return float(low), float(high)
    k_a, k_b = len(a["splits"]), len(b["splits"])
    if min(k_a, k_b) < 2:
        return math.nan, math.nan
    var_a = float(torch.tensor(a["splits"], dtype=torch.float64).var()) / k_a
    var_b = float(torch.tensor(b["splits"], dtype=torch.float64).var()) / k_b
    half = t_quantile(min(k_a, k_b) - 1) * math.sqrt(var_a + var_b)
    difference = b["value"] - a["value"]
    return difference - half, difference + half


def verdict(low: float, high: float, higher_is_better: bool | None) -> str:
    """What an interval of B - A says: "B higher" / "B lower" (or "B better" / "A better" when the direction of
    better is known), "within noise" when it holds 0, "n/a" when it is undefined."""
    if math.isnan(low) or math.isnan(high):
        return "n/a"
    if low <= 0 <= high:
        return "within noise"
    higher = low > 0
    if higher_is_better is None:
        return "B higher" if higher else "B lower"
    return "B better" if higher == higher_is_better else "A better"
