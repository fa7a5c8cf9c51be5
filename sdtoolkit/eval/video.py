"""Video evaluation of shapes clips: per-frame prompt accuracy (the shapes evaluator on every frame), motion accuracy
(an analytic motion check justified by the renderer's exact motion), temporal consistency, and FVD_shapes.

Motion accuracy (`classify_motion`), analytic rather than a learned clip classifier: the clips of
`sdtoolkit.data.clips` move rigidly and their light turns with the object, so brightness is constant along the
motion and the optical-flow constraint I_x u + I_y v + I_t = 0 holds on the object. The rigid rotation by omega
about +z moves a surface point p with image velocity (Sec. "turning" of `sdtoolkit.data.clips`)

    u = omega (p . n_a)        (horizontal; n_a the horizontal direction towards the camera: > 0 on the near side)
    v_up = omega sin(e) x      (vertical, proportional to the image column x; e the camera elevation)

so the near side of the object moves right for omega > 0: the least-squares global horizontal flow u_0 over the
object's interior (eroded, so that the static silhouette contours do not count) gives the turning score s = u_0 / R
(R the object's radius in pixels): s > 0 counter-clockwise, s < 0 clockwise. (The vertical term, largest for
overhead views, is left out: fitted jointly it absorbed the aperture-limited shading gradients and flipped signs.)
Bobbing moves the silhouette: the vertical centroid follows one sine period per clip, so a clip bobs when the
first Fourier harmonic of its centroid track holds most of its variance and its amplitude is at least
`BOB_MIN_AMPLITUDE` of the frame.
A clip is "turning <dir>" when it does not bob and at least `TURN_AGREEMENT` of its frame pairs agree on the sign
of s (a time-shuffled clip's pairs disagree; a frozen clip has s = 0 and no bob: "static").

FVD_shapes: each clip's feature is the concatenation of the mean over frames of the evaluator's per-frame
features, their standard deviation over frames, and their mean temporal difference (phi_F - phi_1) / (F - 1), so
appearance, its variation and the direction of its change all count; the Fréchet distance between the Gaussian
fits of real and generated clip features (`sdtoolkit.eval.frechet`) is FVD_shapes. Lower is better.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from sdtoolkit.data.clips import MOTIONS, ClipConfig, image_prompt, parse_clip_caption, render_clips
from sdtoolkit.eval.frechet import FeatureStats, frechet_distance

BACKGROUND_LEVEL = 0.96
"""A pixel belongs to the object when its mean RGB is below this (the renderer's background is white)."""
BOB_MIN_AMPLITUDE = 0.02
"""Smallest bobbing amplitude of the vertical centroid, as a fraction of the frame height."""
BOB_HARMONIC_FRACTION = 0.6
"""Smallest fraction of the centroid track's variance in its first Fourier harmonic for a bobbing clip."""
TURN_AGREEMENT = 0.75
"""Fraction of frame pairs whose turning score must share the clip's sign."""
TURN_MIN_SCORE = 1e-3
"""Turning scores below this in magnitude count as no motion."""

__all__ = [
    "MotionStatistics",
    "classify_motion",
    "clip_features",
    "fvd_shapes",
    "motion_statistics",
    "score_clips",
    "shuffle_frames",
    "freeze_frames",
]


@dataclass
class MotionStatistics:
    """Per-clip motion measurements (each `[N]`, pair scores `[N, F - 1]`)."""

    turn_scores: Tensor
    """Turning score s of each consecutive frame pair (> 0 counter-clockwise)."""
    bob_amplitude: Tensor
    """Amplitude of the centroid track's first harmonic, as a fraction of the frame height."""
    bob_fraction: Tensor
    """Fraction of the centroid track's variance in its first harmonic."""


def _object_mask(frames: Tensor) -> Tensor:
    """`[..., H, W]` bool: pixels darker than the white background."""
    return frames.mean(-3) < BACKGROUND_LEVEL


def _pair_turn_score(a: Tensor, b: Tensor) -> Tensor:
    """Turning score s of frames a -> b `[N, 3, H, W]`: the global horizontal flow u_0 over the object's interior
    (least squares of I_x u_0 + I_t = 0), divided by the object's radius R in pixels."""
    lum_a, lum_b = a.mean(1), b.mean(1)
    mask = _object_mask(a) & _object_mask(b)
    # eroded by two pixels: silhouette contours stay put while the shading beside them changes
    inner = -F.max_pool2d(-mask[:, None].float(), 5, 1, 2)[:, 0] > 0.5
    mean = (lum_a + lum_b) / 2
    ix = torch.zeros_like(mean)
    ix[:, :, 1:-1] = (mean[:, :, 2:] - mean[:, :, :-2]) / 2
    it = lum_b - lum_a
    weight = inner.float()
    radius = (mask.float().sum((-2, -1)) / torch.pi).sqrt().clamp_min(1.0)
    u0 = -(weight * ix * it).sum((-2, -1)) / (weight * ix * ix).sum((-2, -1)).clamp_min(1e-8)
    return u0 / radius


def motion_statistics(frames: Tensor) -> MotionStatistics:
    """`frames` `[N, F, 3, H, W]` in [0, 1] -> per-clip motion measurements."""
    n, num_frames, _, h, _ = frames.shape
    frames = frames.float()
    turn = torch.stack([_pair_turn_score(frames[:, f], frames[:, f + 1]) for f in range(num_frames - 1)], dim=1)
    mask = _object_mask(frames).float()  # [N, F, H, W]
    rows = torch.arange(h, dtype=torch.float32)[:, None]
    area = mask.sum((-2, -1)).clamp_min(1.0)
    centroid = -(mask * rows).sum((-2, -1)) / area / h  # upwards, in frame heights
    centroid = centroid - centroid.mean(1, keepdim=True)
    phase = 2 * torch.pi * torch.arange(num_frames, dtype=torch.float32) / num_frames
    c1 = (centroid * torch.cos(phase)).mean(1) * 2
    s1 = (centroid * torch.sin(phase)).mean(1) * 2
    amplitude = (c1**2 + s1**2).sqrt()
    variance = centroid.pow(2).mean(1)
    fraction = (amplitude**2 / 2) / variance.clamp_min(1e-12)
    return MotionStatistics(turn, amplitude, torch.where(variance > 0, fraction.clamp(max=1.0), 0.0))


def classify_motion(frames: Tensor) -> list[str]:
    """The motion of each clip: one of `MOTIONS`, or "static" (module docstring)."""
    stats = motion_statistics(frames)
    out = []
    for i in range(frames.shape[0]):
        if stats.bob_amplitude[i] >= BOB_MIN_AMPLITUDE and stats.bob_fraction[i] >= BOB_HARMONIC_FRACTION:
            out.append("bobbing")
            continue
        scores = stats.turn_scores[i]
        moving = scores.abs() >= TURN_MIN_SCORE
        positive, negative = (
            float((moving & (scores > 0)).float().mean()),
            float((moving & (scores < 0)).float().mean()),
        )
        if positive >= TURN_AGREEMENT:
            out.append("turning counter-clockwise")
        elif negative >= TURN_AGREEMENT:
            out.append("turning clockwise")
        else:
            out.append("static")
    return out


def shuffle_frames(frames: Tensor, seed: int = 0) -> Tensor:
    """The clips with their frames in one random order (a time-shuffled control)."""
    order = torch.randperm(frames.shape[1], generator=torch.Generator().manual_seed(seed))
    return frames[:, order]


def freeze_frames(frames: Tensor) -> Tensor:
    """The clips with every frame equal to the first (a frozen control)."""
    return frames[:, :1].expand_as(frames).contiguous()


# ---------------------------------------------------------------------------------------------------- scores


def _per_frame(evaluator, frames: Tensor) -> dict[str, Tensor]:
    n, num_frames = frames.shape[:2]
    predicted = evaluator.classify(frames.reshape(n * num_frames, *frames.shape[2:]))
    return {k: v.reshape(n, num_frames) for k, v in predicted.items()}


def score_clips(evaluator, frames: Tensor, prompts: list[str]) -> dict:
    """Scores clips `[N, F, 3, H, W]` in [0, 1] against clip captions.

    Returns `frame_prompt_accuracy` (shape and colour right, over all frames), `frame_view_accuracy`,
    `motion_accuracy` (`classify_motion` equals the caption's motion), `temporal_consistency` (fraction of clips
    whose predicted shape and colour are the same on every frame), `num_clips` and `num_frames`."""
    from sdtoolkit.data.shapes import COLOUR_NAMES, SHAPES, VIEWS

    if len(prompts) != frames.shape[0]:
        raise ValueError(f"got {frames.shape[0]} clips but {len(prompts)} prompts; need one prompt per clip")
    parsed = [parse_clip_caption(p) for p in prompts]
    predicted = _per_frame(evaluator, frames)
    shape = torch.tensor([SHAPES.index(p[0]) for p in parsed])[:, None]
    colour = torch.tensor([COLOUR_NAMES.index(p[1]) for p in parsed])[:, None]
    view = torch.tensor([VIEWS.index(p[2]) if p[2] else -1 for p in parsed])[:, None]
    prompt_right = (predicted["shape"] == shape) & (predicted["colour"] == colour)
    has_view = view[:, 0] >= 0
    view_right = (predicted["view"] == view)[has_view]
    motions = classify_motion(frames)
    motion_right = torch.tensor([m == p[3] for m, p in zip(motions, parsed)])
    stable = (predicted["shape"] == predicted["shape"][:, :1]) & (predicted["colour"] == predicted["colour"][:, :1])
    return {
        "frame_prompt_accuracy": prompt_right.double().mean().item(),
        "frame_view_accuracy": view_right.double().mean().item() if has_view.any() else None,
        "motion_accuracy": motion_right.double().mean().item(),
        "temporal_consistency": stable.all(1).double().mean().item(),
        "num_clips": len(prompts),
        "num_frames": int(frames.shape[1]),
    }


def clip_features(evaluator, frames: Tensor) -> Tensor:
    """`[N, 3 D]` clip features: mean, std and mean temporal difference of per-frame evaluator features."""
    n, num_frames = frames.shape[:2]
    phi = evaluator.features(frames.reshape(n * num_frames, *frames.shape[2:])).reshape(n, num_frames, -1)
    delta = (phi[:, -1] - phi[:, 0]) / max(num_frames - 1, 1)
    return torch.cat([phi.mean(1), phi.std(1, unbiased=False), delta], dim=1)


def fvd_shapes(evaluator, frames: Tensor, reference: Tensor | FeatureStats) -> float:
    """Fréchet distance between the clip features of `frames` and of `reference` (clips or their FeatureStats)."""
    if not isinstance(reference, FeatureStats):
        reference = FeatureStats.from_features(clip_features(evaluator, reference))
    return frechet_distance(FeatureStats.from_features(clip_features(evaluator, frames)), reference)


def reference_clips(num: int, seed: int = 12345, config: ClipConfig | None = None) -> tuple[Tensor, list[str]]:
    """Real rendered clips and their captions, for FVD_shapes references."""
    out = render_clips(num, seed, config)
    return out["frames"], out["caption"]


def frame_prompts(prompts: list[str]) -> list[str]:
    """The image caption of each clip caption."""
    return [image_prompt(p) for p in prompts]


assert len(MOTIONS) == 3
