"""The distinguishable view classes are derived from renders and match hand-checked cases; view accuracy is scored
only between them."""

import math

import torch

from sdtoolkit.data.shapes import SHAPES, VIEWS
from sdtoolkit.eval.report import attribute_correctness
from sdtoolkit.eval.views import (
    cross_neighbour_rate,
    derive_view_classes,
    shading_maps,
    view_cameras,
    view_classes,
)

GEOMETRY_BY_HAND = {
    "sphere": [("front", "side", "back", "overhead")],  # a disc from every direction
    "cube": [("front", "side", "back"), ("overhead",)],  # 4-fold symmetric about z
    "cylinder": [("front", "side", "back"), ("overhead",)],
    "cone": [("front", "side", "back"), ("overhead",)],
    "torus": [("front", "side", "back"), ("overhead",)],
}
"""What a viewer can tell apart for each shape (pose relative to the camera only), checked by hand."""


def test_geometry_classes_derived_from_renders_match_the_hand_checked_cases():
    derived = derive_view_classes("geometry", num=16, resolution=32, seed=3)
    assert {shape: derived[shape]["classes"] for shape in SHAPES} == GEOMETRY_BY_HAND
    # the premise, by hand: a sphere's front and side renders are the same picture under a camera light ...
    generator = torch.Generator().manual_seed(0)
    front, side = (shading_maps("sphere", view_cameras(v, 2, generator), 32, "geometry") for v in ("front", "side"))
    assert torch.allclose(front, side, atol=1e-4)
    # ... but not under the renderer's world-fixed light, which is what separates them in the lit cue
    front, side = (shading_maps("sphere", view_cameras(v, 8, generator), 32, "lit") for v in ("front", "back"))
    assert cross_neighbour_rate(front, side) < 0.1


def test_the_default_classes_are_the_derived_ones():
    assert view_classes("geometry") == tuple(tuple(GEOMETRY_BY_HAND[s]) for s in SHAPES)


def test_cross_neighbour_rate_of_identical_and_disjoint_sets():
    a = torch.rand(6, 10, generator=torch.Generator().manual_seed(0))
    assert cross_neighbour_rate(a, a.clone()) == 1.0  # every nearest neighbour is a tie with the other set
    assert cross_neighbour_rate(a, a + 100.0) == 0.0


def test_view_scored_only_between_distinguishable_classes():
    prompts = [
        "a red sphere, side view",  # one class: not scored
        "a red cube, front view",  # predicted back: same class -> right
        "a red cube, overhead view",  # predicted side: other class -> wrong
        "a red torus, overhead view",  # predicted overhead -> right
        "a red cone",  # no view named
    ]
    predicted = {
        "shape": torch.tensor([SHAPES.index(s) for s in ("sphere", "cube", "cube", "torus", "cone")]),
        "colour": torch.zeros(5, dtype=torch.long),  # red
        "view": torch.tensor([VIEWS.index(v) for v in ("front", "back", "side", "overhead", "front")]),
    }
    right = attribute_correctness(predicted, prompts)
    view = right["view_accuracy"].tolist()
    assert math.isnan(view[0]) and view[1:4] == [1.0, 0.0, 1.0] and math.isnan(view[4])
    assert right["all_attributes_accuracy"].tolist() == [1.0, 1.0, 0.0, 1.0, 1.0]
    assert right["view_accuracy_4way"].tolist()[:4] == [0.0, 0.0, 0.0, 1.0]
