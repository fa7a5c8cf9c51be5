"""Video evaluation of shapes clips: per-frame prompt accuracy (the shapes evaluator on every frame), motion accuracy
(an analytic motion check justified by the renderer's exact motion), temporal consistency, and FVD_shapes.

Motion accuracy (`classify_motion`) uses by default the shipped clip classifier (`MotionClassifier`,
assets/motion-classifier: 0.988 / 0.983 on 240 held-out real clips of 8 frames at 32 px / 16 at 64 px, where the
analytic check below gets 0.692 / 0.750); `method="analytic"` keeps the analytic check: the clips of
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
MOTION_CHECK = "classifier"
"""The motion check `classify_motion` (and so `score_clips`, `clip_report`) uses by default."""

__all__ = [
    "MotionStatistics",
    "classify_motion",
    "classify_motion_analytic",
    "classify_motion_learned",
    "clip_report",
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


def classify_motion(frames: Tensor, method: str | None = None) -> list[str]:
    """The motion of each clip: one of `MOTIONS`, or "static". `method`: "classifier" (the shipped clip classifier,
    `classify_motion_learned`) or "analytic" (`classify_motion_analytic`); None: `MOTION_CHECK`."""
    method = method or MOTION_CHECK
    if method == "classifier":
        return classify_motion_learned(frames)
    if method != "analytic":
        raise ValueError(f"unknown motion check {method!r}; valid: classifier, analytic")
    return classify_motion_analytic(frames)


def classify_motion_analytic(frames: Tensor) -> list[str]:
    """The motion of each clip by the analytic check of the module docstring: one of `MOTIONS`, or "static"."""
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
    """`[N, 4 D]` clip features from the per-frame evaluator features phi_1..phi_F: their mean and std over time (what
    the frames show), the mean change (phi_F - phi_1) / (F - 1) (where the clip goes), and the mean absolute change
    between consecutive frames (how smoothly it gets there: a time-shuffled clip has the same mean and std but jumps
    between frames)."""
    n, num_frames = frames.shape[:2]
    phi = evaluator.features(frames.reshape(n * num_frames, *frames.shape[2:])).reshape(n, num_frames, -1)
    delta = (phi[:, -1] - phi[:, 0]) / max(num_frames - 1, 1)
    steps = (phi[:, 1:] - phi[:, :-1]).abs().mean(1) if num_frames > 1 else torch.zeros_like(delta)
    return torch.cat([phi.mean(1), phi.std(1, unbiased=False), delta, steps], dim=1)


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


# ---------------------------------------------------------------------------------------------------- learned check

MOTION_CLASSIFIER_ASSET = "motion-classifier"
"""Folder of the shipped motion classifier under `sdtoolkit/assets`."""
CLASSIFIER_FRAMES = 8
"""Frames the motion classifier sees: a clip of F frames is resampled to this many, evenly spaced in time."""
CLASSIFIER_RESOLUTION = 32
"""Side the motion classifier sees (frames are area-resized to it)."""
CLASSIFIER_LABELS: tuple[str, ...] = (*MOTIONS, "static")
"""The classifier's classes: the three motions and "static" (frozen and time-shuffled clips)."""


class MotionClassifier(torch.nn.Module):
    """A small CNN on a clip's frames and frame differences stacked as channels (`CLASSIFIER_FRAMES` frames at
    `CLASSIFIER_RESOLUTION` px): logits over `CLASSIFIER_LABELS`."""

    def __init__(self, width: int = 32):
        super().__init__()
        channels = 3 * CLASSIFIER_FRAMES + 3 * (CLASSIFIER_FRAMES - 1)
        layers, c = [], channels
        for out in (width, 2 * width, 2 * width):
            layers += [torch.nn.Conv2d(c, out, 3, 2, 1), torch.nn.GroupNorm(8, out), torch.nn.SiLU()]
            c = out
        self.net = torch.nn.Sequential(*layers, torch.nn.Flatten(), torch.nn.Linear(c * 16, len(CLASSIFIER_LABELS)))
        self.width = width

    @staticmethod
    def prepare(frames: Tensor) -> Tensor:
        """Clips `[N, F, 3, H, W]` in [0, 1] -> classifier input `[N, C, 32, 32]` (resampled in time and space)."""
        n, num_frames = frames.shape[:2]
        pick = torch.linspace(0, num_frames - 1, CLASSIFIER_FRAMES).round().long()
        x = frames[:, pick].float()
        if x.shape[-1] != CLASSIFIER_RESOLUTION or x.shape[-2] != CLASSIFIER_RESOLUTION:
            flat = x.reshape(-1, *x.shape[2:])
            x = F.interpolate(flat, size=(CLASSIFIER_RESOLUTION,) * 2, mode="area").reshape(
                n, CLASSIFIER_FRAMES, 3, 32, 32
            )
        x = x * 2 - 1
        diff = (x[:, 1:] - x[:, :-1]) * 4
        return torch.cat([x.flatten(1, 2), diff.flatten(1, 2)], dim=1)

    def forward(self, frames: Tensor) -> Tensor:
        return self.net(self.prepare(frames))


def motion_classifier_path():
    import importlib.resources
    from pathlib import Path

    return Path(str(importlib.resources.files("sdtoolkit.assets") / MOTION_CLASSIFIER_ASSET))


_LOADED: dict[str, MotionClassifier] = {}


def load_motion_classifier(path=None) -> MotionClassifier:
    """The shipped (or a saved) motion classifier, cached per path."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    folder = Path(path) if path is not None else motion_classifier_path()
    key = str(folder)
    if key not in _LOADED:
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"no motion classifier at {folder}; train one with `train_motion_classifier`")
        config = json.loads((folder / "config.json").read_text())
        model = MotionClassifier(config["width"])
        model.load_state_dict(load_file(folder / "model.safetensors"))
        _LOADED[key] = model.eval()
    return _LOADED[key]


@torch.no_grad()
def classify_motion_learned(frames: Tensor, path=None, batch_size: int = 256) -> list[str]:
    """The motion of each clip by the shipped clip classifier: one of `MOTIONS` or "static"."""
    model = load_motion_classifier(path)
    out = []
    for i in range(0, frames.shape[0], batch_size):
        out += model(frames[i : i + batch_size].float()).argmax(-1).tolist()
    return [CLASSIFIER_LABELS[k] for k in out]


def motion_training_set(num: int, seed: int, config: ClipConfig, chunk: int = 100) -> tuple[Tensor, Tensor]:
    """Classifier inputs (`MotionClassifier.prepare`) and labels of `num` real clips (their motions) plus frozen and
    time-shuffled copies of a quarter of them ("static"); rendered `chunk` clips at a time (memory)."""
    from sdtoolkit.data.clips import render_clip_parameters, sample_clip_parameters

    params = sample_clip_parameters(num, seed, config)
    g = torch.Generator().manual_seed(seed)
    inputs, labels = [], []
    for start in range(0, num, chunk):
        part = {k: v[start : start + chunk] for k, v in params.items()}
        frames = render_clip_parameters(part, config.resolution).float() / 255.0
        quarter = max(len(frames) // 4, 1)
        order = torch.stack([torch.randperm(frames.shape[1], generator=g) for _ in range(quarter)])
        shuffled = torch.stack([frames[-quarter + i, order[i]] for i in range(quarter)])
        for x in (frames, freeze_frames(frames[:quarter]), shuffled):
            inputs.append(MotionClassifier.prepare(x))
        labels += [part["motion"], torch.full((2 * quarter,), len(MOTIONS))]
    return torch.cat(inputs), torch.cat(labels)


def train_motion_classifier(
    output,
    num_clips: int = 3000,
    steps: int = 1500,
    batch_size: int = 64,
    seed: int = 0,
    width: int = 32,
) -> dict:
    """Trains `MotionClassifier` on procedural clips (half 8 frames at 32 px, half 16 frames at 64 px, with light
    pixel noise) and writes `output/` (config.json, model.safetensors, metrics.json). Returns the metrics."""
    import json
    import time
    from pathlib import Path

    from safetensors.torch import save_file

    torch.manual_seed(seed)
    started = time.perf_counter()
    sets = [
        motion_training_set(num_clips // 2, seed, ClipConfig(8, 32)),
        motion_training_set(num_clips // 2, seed + 1, ClipConfig(16, 64)),
    ]
    inputs = torch.cat([x for x, _ in sets])
    labels = torch.cat([y for _, y in sets])
    model = MotionClassifier(width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        pick = torch.randint(len(labels), (batch_size,), generator=g)
        x = inputs[pick]
        x = x + torch.randn(x.shape, generator=g) * 0.05 * torch.rand(batch_size, 1, 1, 1, generator=g)
        loss = F.cross_entropy(model.net(x), labels[pick])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, output / "model.safetensors")
    config = {"width": width, "labels": list(CLASSIFIER_LABELS), "frames": CLASSIFIER_FRAMES}
    (output / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    training = {"num_clips": num_clips, "steps": steps, "batch_size": batch_size, "seed": seed}
    seconds = round(time.perf_counter() - started, 1)
    metrics = {"training": training, "final_loss": float(loss.detach()), "seconds": seconds}
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _LOADED.pop(str(output), None)
    return metrics


# ---------------------------------------------------------------------------------------------------- clip files

CLIP_SUFFIX = ".gif"
"""The clip layout `sdtoolkit eval --clips` reads and `sdtoolkit generate --clips-dir` writes: one animated GIF per
clip (frames in time order), in a folder with `prompts.txt` (one clip caption per line, in the files' natural name
order) or `metadata.jsonl` (`file_name`, `text`)."""
GIF_FRAME_MS = 125
"""Frame duration of written GIFs (8 frames per second)."""


def save_gif(frames: Tensor, path, duration_ms: int = GIF_FRAME_MS) -> None:
    """Writes frames `[F, 3, H, W]` in [0, 1] as a looping animated GIF."""
    from PIL import Image

    arrays = (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    images = [Image.fromarray(a) for a in arrays]
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)


def load_gif(path) -> Tensor:
    """The frames `[F, 3, H, W]` in [0, 1] of an animated GIF (every frame composited to RGB)."""
    import numpy as np
    from PIL import Image, ImageSequence

    with Image.open(path) as image:
        arrays = [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def save_clips(frames: Tensor, folder, prompts: list[str]) -> list:
    """Writes clips `[N, F, 3, H, W]` as `folder/00000.gif`... and `folder/prompts.txt` (the `CLIP_SUFFIX` layout)."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, clip in enumerate(frames):
        paths.append(folder / f"{i:05d}{CLIP_SUFFIX}")
        save_gif(clip, paths[-1])
    (folder / "prompts.txt").write_text("".join(p + "\n" for p in prompts))
    return paths


def load_clips(files: list) -> Tensor:
    """Clips `[N, F, 3, H, W]` of GIF files; ValueError naming the first file whose frame count or size differs."""
    clips = [load_gif(f) for f in files]
    for file, clip in zip(files, clips):
        if clip.shape != clips[0].shape:
            raise ValueError(
                f"{file} has {clip.shape[0]} frames of {tuple(clip.shape[-2:])} px but {files[0]} has "
                f"{clips[0].shape[0]} of {tuple(clips[0].shape[-2:])}; every clip needs the same frames and size"
            )
    return torch.stack(clips)


# ---------------------------------------------------------------------------------------------------- report

VIDEO_HIGHER_IS_BETTER = {
    "frame_prompt_accuracy": True,
    "frame_view_accuracy": True,
    "motion_accuracy": True,
    "temporal_consistency": True,
    "fvd_shapes": False,
}
"""The figures of `clip_report` and whether higher is better."""


def clip_report(
    evaluator,
    frames: Tensor,
    prompts: list[str],
    reference_num: int = 256,
    reference_seed: int = 12345,
    fd_splits: int = 4,
    num_resamples: int = 2000,
    seed: int = 0,
) -> dict:
    """Every video figure with its 95 % interval, the form of `sdtoolkit.eval.report.build_report`: per-clip figures
    (a clip's fraction of right frames, its motion right, its shape and colour stable) bootstrapped over clips within
    prompts; FVD_shapes against `reference_num` real clips of the same frame count and size (0 skips it) with a
    Student t interval over `fd_splits` interleaved splits."""
    from sdtoolkit.data.shapes import COLOUR_NAMES, SHAPES, VIEWS
    from sdtoolkit.eval.stats import bootstrap_interval, split_interval

    if len(prompts) != frames.shape[0]:
        raise ValueError(f"got {frames.shape[0]} clips but {len(prompts)} prompts; need one prompt per clip")
    num, num_frames = frames.shape[:2]
    parsed = [parse_clip_caption(p) for p in prompts]
    groups: dict[str, int] = {}
    strata = [groups.setdefault(p, len(groups)) for p in prompts]
    predicted = _per_frame(evaluator, frames)
    shape = torch.tensor([SHAPES.index(p[0]) for p in parsed])[:, None]
    colour = torch.tensor([COLOUR_NAMES.index(p[1]) for p in parsed])[:, None]
    view = torch.tensor([VIEWS.index(p[2]) if p[2] else -1 for p in parsed])[:, None]
    view_right = (predicted["view"] == view).double().mean(1)
    per_clip = {
        "frame_prompt_accuracy": ((predicted["shape"] == shape) & (predicted["colour"] == colour)).double().mean(1),
        "frame_view_accuracy": torch.where(view[:, 0] >= 0, view_right, torch.nan),
        "motion_accuracy": torch.tensor([m == p[3] for m, p in zip(classify_motion(frames), parsed)]).double(),
        "temporal_consistency": (
            (predicted["shape"] == predicted["shape"][:, :1]) & (predicted["colour"] == predicted["colour"][:, :1])
        )
        .all(1)
        .double(),
    }
    metrics = {name: bootstrap_interval(v, strata, num_resamples, seed) for name, v in per_clip.items()}
    splits = fd_splits if fd_splits >= 2 and num >= 4 * fd_splits else 0
    if reference_num >= 2 and num >= 2:
        config = ClipConfig(num_frames=num_frames, resolution=frames.shape[-1])
        real, _ = reference_clips(reference_num, reference_seed, config)
        reference = FeatureStats.from_features(clip_features(evaluator, real).double())
        features = clip_features(evaluator, frames).double()
        fd = lambda idx: frechet_distance(FeatureStats.from_features(features[idx]), reference)  # noqa: E731
        values = [fd(torch.arange(k, num, splits)) for k in range(splits)] if splits else []
        metrics["fvd_shapes"] = split_interval(fd(torch.arange(num)), values, num, (0.0, float("inf")))
    return {
        "num_clips": num,
        "num_frames": num_frames,
        "num_prompts": len(groups),
        "metrics": {
            name: {**metrics[name].to_dict(), "better": "higher" if VIDEO_HIGHER_IS_BETTER[name] else "lower"}
            for name in VIDEO_HIGHER_IS_BETTER
            if name in metrics
        },
        "settings": {
            "reference_num": reference_num,
            "reference_seed": reference_seed,
            "fd_splits": splits,
            "num_resamples": num_resamples,
            "motion_check": MOTION_CHECK,
        },
    }
