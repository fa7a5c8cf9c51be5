"""Scores a text-to-3D asset of the procedural-shapes vocabulary: renders from 8 azimuths classified by the shipped
evaluator (shape and colour against the prompt), and silhouette IoU against the true primitive rendered by
`sdtoolkit.data.render_silhouette` from the same cameras; for layouts, object-centric views of every box."""

from __future__ import annotations

import torch

from sdtoolkit.data import COLOUR_NAMES, SHAPES, parse_caption, render_silhouette, turntable_cameras
from sdtoolkit.nerf import NeRF
from sdtoolkit.text_to_3d.guidance.semantic import SingleBoxPrior

EVAL_VIEWS = 8
"""Azimuths of the evaluation turntable (0, 45, ..., 315 degrees)."""
EVAL_ELEVATION = 15.0
"""Elevation of the evaluation cameras (degrees); distance and fov are the teacher's (2.8, 40)."""


def silhouette_iou(opacity: torch.Tensor, silhouette: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """`[B]` intersection over union of {opacity > threshold} and the true silhouette."""
    predicted, target = opacity > threshold, silhouette > 0.5
    intersection = (predicted & target).flatten(1).sum(1).float()
    union = (predicted | target).flatten(1).sum(1).float()
    return intersection / union.clamp_min(1)


@torch.no_grad()
def evaluate_asset(nerf: NeRF, prompt: str, evaluator, resolution: int = 64) -> dict:
    """Per-view classification and silhouette IoU of a single-object asset whose prompt is 'a <colour> <shape>'."""
    shape, colour, _ = parse_caption(prompt)
    cameras = turntable_cameras(EVAL_VIEWS, elevation_deg=EVAL_ELEVATION)
    out = nerf.render(cameras.to(nerf.device), resolution, stratified=False)
    images, opacity = out["rgb"].cpu(), out["opacity"].cpu()
    predicted = evaluator.classify(images)
    shape_ok = predicted["shape"] == SHAPES.index(shape)
    colour_ok = predicted["colour"] == COLOUR_NAMES.index(colour)
    silhouettes = render_silhouette(torch.full((EVAL_VIEWS,), SHAPES.index(shape)), cameras, resolution)
    iou = silhouette_iou(opacity, silhouettes)
    return {
        "prompt": prompt,
        "view_accuracy": float((shape_ok & colour_ok).float().mean()),
        "shape_accuracy": float(shape_ok.float().mean()),
        "colour_accuracy": float(colour_ok.float().mean()),
        "mean_iou": float(iou.mean()),
        "iou": [round(float(v), 3) for v in iou],
        "predicted": [f"{COLOUR_NAMES[c]} {SHAPES[s]}" for s, c in zip(predicted["shape"], predicted["colour"])],
    }


@torch.no_grad()
def evaluate_layout(nerf: NeRF, layout, evaluator, box_fill: float = 1.0, resolution: int = 64) -> dict:
    """For every layout object: 8 object-centric views of its box region alone (the field's density outside the box
    is masked out, so a neighbour in the background does not count), framed like the training's local views,
    classified against the object's prompt. Each entry also holds its `images` ([8, 3, H, W], CPU)."""
    from sdtoolkit.text_to_3d.trainer import UNIT_OBJECT_SIZE

    results = []
    prior = nerf.field.region_prior
    for k, obj in enumerate(layout.objects):
        shape, colour, _ = parse_caption(obj.prompt)
        cameras = turntable_cameras(EVAL_VIEWS, elevation_deg=EVAL_ELEVATION).to(nerf.device)
        scale = max(obj.size) / UNIT_OBJECT_SIZE * box_fill
        centre = torch.tensor(obj.centre, device=nerf.device).expand(EVAL_VIEWS, 3)
        transform = (centre, torch.full((EVAL_VIEWS,), scale, device=nerf.device))
        nerf.field.region_prior = SingleBoxPrior(prior, k)
        try:
            out = nerf.render(cameras, resolution, stratified=False, ray_transform=transform)
        finally:
            nerf.field.region_prior = prior
        images = out["rgb"].cpu()
        predicted = evaluator.classify(images)
        shape_ok = predicted["shape"] == SHAPES.index(shape)
        colour_ok = predicted["colour"] == COLOUR_NAMES.index(colour)
        results.append(
            {
                "prompt": obj.prompt,
                "view_accuracy": float((shape_ok & colour_ok).float().mean()),
                "shape_accuracy": float(shape_ok.float().mean()),
                "colour_accuracy": float(colour_ok.float().mean()),
                "predicted": [
                    f"{COLOUR_NAMES[c]} {SHAPES[s]}" for s, c in zip(predicted["shape"], predicted["colour"])
                ],
                "images": images,
            }
        )
    return {"objects": results}
