"""Image-quality metrics of the evaluator: real renders score at the top, and each metric moves monotonically along
the degradation curve it is meant to see (blur, noise, speckle, colour shift)."""

import math

import pytest
import torch

from sdtoolkit.data import render_batch
from sdtoolkit.eval.quality import (
    DEGRADATIONS,
    connected_components,
    degrade,
    image_quality,
    propagate_labels,
    speckle_fraction,
)

CURVES = {
    "blur": ("sharpness", [0.0, 0.75, 1.0, 2.0, 4.0], "down"),
    "noise": ("noise_sigma", [0.0, 0.01, 0.03, 0.1, 0.2], "up"),
    "speckle": ("speckle_fraction", [0, 2, 4, 8, 16], "up"),
    "colour_shift": ("colour_error_deg", [0.0, 5.0, 10.0, 20.0, 30.0], "up"),
}
"""Degradation -> (the metric that must see it, levels, direction of that metric as the level grows)."""
HIGHER_IS_BETTER = {"sharpness": True, "noise_sigma": False, "speckle_fraction": False, "floater": False}
HIGHER_IS_BETTER["colour_error_deg"] = False


@pytest.fixture(scope="module")
def real():
    """24 renders of a seed the evaluator never saw, 8-bit like an image file."""
    return (render_batch(24, seed=4242)["pixel_values"] + 1) / 2


def means(images: torch.Tensor) -> dict[str, float]:
    return {name: float(values.nanmean()) for name, values in image_quality(images).items()}


def test_real_renders_score_perfect(real):
    scores = image_quality(real)
    assert torch.all(scores["sharpness"] == 1.0)
    assert torch.all(scores["speckle_fraction"] == 0.0) and torch.all(scores["floater"] == 0.0)
    assert scores["noise_sigma"].max() < 0.5  # 8-bit levels
    assert scores["colour_error_deg"].max() < 1.5  # rounding of dark pixels only


@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_each_metric_moves_monotonically_with_its_degradation(real, kind):
    metric, levels, direction = CURVES[kind]
    curve = [means(degrade(real, kind, level, seed=1))[metric] for level in levels]
    steps = [b - a for a, b in zip(curve, curve[1:])]
    assert all(step < 0 for step in steps) if direction == "down" else all(step > 0 for step in steps), curve


def test_real_renders_are_at_the_top_of_every_metric(real):
    top = means(real)
    for kind, (_, levels, _) in CURVES.items():
        for level in levels[1:]:
            degraded = means(degrade(real, kind, level, seed=2))
            for metric, higher in HIGHER_IS_BETTER.items():
                better = degraded[metric] > top[metric] if higher else degraded[metric] < top[metric]
                assert not better, (kind, level, metric, degraded[metric], top[metric])


def test_speckle_counts_what_lies_outside_the_main_blob():
    images = torch.ones(2, 3, 16, 16)
    images[:, :, 4:10, 4:10] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]  # a 36-pixel red square
    images[1, :, 13:15, 13:15] = torch.tensor([0.1, 0.1, 0.9])[:, None, None]  # + a 4-pixel blue speck
    assert speckle_fraction(images).tolist() == pytest.approx([0.0, 4 / 40])
    mask = torch.zeros(1, 5, 5, dtype=torch.bool)
    mask[0, 0, 0] = mask[0, 1, 1] = mask[0, 4, 4] = True  # diagonal neighbours join (8-connectivity)
    for labels in (connected_components(mask), propagate_labels(mask)):
        assert labels[0, 0, 0] == labels[0, 1, 1] != labels[0, 4, 4] and labels[0, 2, 2] == 0


def test_torch_labels_give_the_same_components_as_scipy():
    pytest.importorskip("scipy")
    mask = torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(0)) < 0.45
    a, b = connected_components(mask), propagate_labels(mask)
    for image in range(3):  # the same partition: a bijection between the labels of the two
        pairs = set(zip(a[image][mask[image]].tolist(), b[image][mask[image]].tolist()))
        assert len(pairs) == len({x for x, _ in pairs}) == len({y for _, y in pairs})


def test_quality_of_an_empty_image_is_defined():
    blank = torch.ones(1, 3, 16, 16)
    scores = image_quality(blank)
    assert scores["sharpness"].item() == 0.0 and scores["speckle_fraction"].item() == 0.0
    assert math.isnan(scores["colour_error_deg"].item())
    with pytest.raises(ValueError, match="unknown degradation"):
        degrade(blank, "jpeg", 1.0)
