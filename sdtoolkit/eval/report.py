"""The full evaluator report: prompt following per attribute, image quality, fidelity/diversity and FD, every figure
with its 95 % interval and image count; and the comparison of two reports.

    from sdtoolkit.eval import Evaluator
    report = Evaluator.load().report(images, prompts)        # images [N, 3, H, W] in [0, 1], one prompt each
    report["metrics"]["all_attributes_accuracy"]             # {"value", "low", "high", "n", "method", "better"}
    compare_reports(report_a, report_b)                      # per metric: B - A, its interval, a verdict

The report is plain JSON (lists and numbers): `sdtoolkit eval --out` writes it, `sdtoolkit eval --compare A B`
reads two of them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sdtoolkit.data.cameras import Cameras
from sdtoolkit.data.dataset import CHUNK_SIZE, parse_caption
from sdtoolkit.data.render import render
from sdtoolkit.data.shapes import COLOUR_NAMES, SHAPES, VIEWS
from sdtoolkit.eval.diversity import group_by_prompt, per_prompt_diversity, precision_recall
from sdtoolkit.eval.frechet import REFERENCE_NUM, REFERENCE_SEED, FeatureStats, frechet_distance
from sdtoolkit.eval.quality import image_quality
from sdtoolkit.eval.stats import (
    NUM_RESAMPLES,
    Interval,
    bootstrap_interval,
    difference_interval,
    split_interval,
    verdict,
)
from sdtoolkit.eval.views import num_view_classes, view_cameras, view_class_table, view_classes

FD_SPLITS = 4
"""Default K of the FD / recall intervals (K disjoint interleaved splits; with prompts listed prompt-major and a
multiple of K images per prompt, each split holds every prompt equally often)."""
DIVERSITY_RENDERS = 32
"""At most this many real renders per prompt behind the real-render diversity reference."""
COLLAPSE_RATIO = 0.5
"""A prompt counts as mode-collapsed when its samples' effective number of distinct samples (Vendi score) is
below this fraction of that of as many real renders of the prompt."""

HIGHER_IS_BETTER = {
    "all_attributes_accuracy": True,
    "prompt_accuracy": True,
    "shape_accuracy": True,
    "colour_accuracy": True,
    "view_accuracy": True,
    "view_accuracy_4way": True,
    "sharpness": True,
    "noise_sigma": False,
    "speckle_fraction": False,
    "floater_rate": False,
    "colour_error_deg": False,
    "fd_shapes": False,
    "precision": True,
    "recall": True,
    "diversity_ratio": True,
    "modes_ratio": True,
    "collapsed_prompts": False,
}
"""Every figure of a report and whether higher is better (in this order in printed tables)."""


def attribute_correctness(predicted: dict[str, Tensor], prompts: list[str]) -> dict[str, Tensor]:
    """Per image, 1.0 / 0.0 / NaN (not scored): shape, colour, view between the shape's distinguishable view classes
    (`sdtoolkit.eval.views`, geometry cue; NaN when the prompt names no view or the prompt's shape has one class),
    the raw 4-way view (NaN without a view), prompt (shape and colour) and all named attributes (shape, colour, and
    the view where it is scored)."""
    parsed = [parse_caption(p) for p in prompts]
    shape = torch.tensor([SHAPES.index(s) for s, _, _ in parsed])
    colour = torch.tensor([COLOUR_NAMES.index(c) for _, c, _ in parsed])
    view = torch.tensor([VIEWS.index(v) if v is not None else -1 for _, _, v in parsed])
    has_view = view >= 0
    table, classes = view_class_table("geometry"), num_view_classes("geometry")
    scored = has_view & (classes[shape] > 1)
    safe_view = view.clamp_min(0)
    view_right = table[shape, predicted["view"]] == table[shape, safe_view]
    shape_right, colour_right = predicted["shape"] == shape, predicted["colour"] == colour
    nan = torch.full((len(prompts),), math.nan, dtype=torch.float64)
    return {
        "shape_accuracy": shape_right.double(),
        "colour_accuracy": colour_right.double(),
        "prompt_accuracy": (shape_right & colour_right).double(),
        "view_accuracy": torch.where(scored, view_right.double(), nan),
        "view_accuracy_4way": torch.where(has_view, (predicted["view"] == safe_view).double(), nan),
        "all_attributes_accuracy": (shape_right & colour_right & (view_right | ~scored)).double(),
    }


def prompt_renders(prompts: list[str], num: int, seed: int, resolution: int = 64) -> Tensor:
    """`num` real renders of each prompt, prompt-major ([0, 1], 8-bit quantised like an image file): its shape and
    colour, cameras from the dataset's distribution within its view (`view_cameras`, prompt i drawing from seed
    `seed + i`; views in turn for a prompt without one), rendered `CHUNK_SIZE` at a time."""
    shapes, colours, cameras = [], [], []
    for i, prompt in enumerate(prompts):
        shape, colour, view = parse_caption(prompt)
        generator = torch.Generator().manual_seed(seed + i)
        views = [view] * num if view is not None else [VIEWS[j % len(VIEWS)] for j in range(num)]
        cameras += [view_cameras(v, 1, generator) for v in views]
        shapes.append(torch.full((num,), SHAPES.index(shape)))
        colours.append(torch.full((num,), COLOUR_NAMES.index(colour)))
    fields = ("azimuth_deg", "elevation_deg", "distance", "fov_deg")
    cameras = Cameras(*(torch.cat([getattr(c, f) for c in cameras]) for f in fields))
    shapes, colours = torch.cat(shapes), torch.cat(colours)
    images = [
        render(shapes[i : i + CHUNK_SIZE], colours[i : i + CHUNK_SIZE], cameras[i : i + CHUNK_SIZE], resolution)
        for i in range(0, len(cameras), CHUNK_SIZE)
    ]
    return (torch.cat(images) * 255).round() / 255


def split_values(function, num: int, splits: int) -> list[float]:
    """`function(indices)` on each interleaved split `arange(num)[k::splits]`."""
    return [function(torch.arange(num)[k::splits]) for k in range(splits)]


def build_report(
    evaluator,
    images: Tensor,
    prompts: list[str],
    reference_num: int = REFERENCE_NUM,
    reference_seed: int = REFERENCE_SEED,
    fd_splits: int = FD_SPLITS,
    diversity: bool = True,
    num_resamples: int = NUM_RESAMPLES,
    seed: int = 0,
) -> dict:
    """Every figure of `images` against `prompts` (one each) with its 95 % interval (see `sdtoolkit.eval.stats`):

    - prompt following: `all_attributes_accuracy` (headline: shape, colour and, where distinguishable, view),
      `prompt_accuracy` (shape and colour), `shape_accuracy`, `colour_accuracy`, `view_accuracy` (between the
      view classes renders can tell apart, `sdtoolkit.eval.views`), `view_accuracy_4way` (the view head's raw
      4-way answer, what the world-fixed light also separates);
    - image quality (`sdtoolkit.eval.quality`; real renders: 1, 0, 0, 0, ~0): `sharpness`, `noise_sigma`,
      `speckle_fraction`, `floater_rate`, `colour_error_deg`;
    - against `reference_num` real renders of dataset seed `reference_seed` (skipped when 0): `fd_shapes`,
      improved `precision` and `recall` (k = 3) on the evaluator's features;
    - per prompt (prompts with at least 2 images; `diversity=False` skips): `diversity_ratio` (mean pairwise
      feature distance over that of as many real renders of the prompt), `modes_ratio` (effective number of
      distinct samples, Vendi score, over the real renders'; the mode-collapse indicator) and
      `collapsed_prompts` (the fraction of prompts whose modes ratio is below `COLLAPSE_RATIO`). Vendi scores use
      cosine similarities of features centred on the mean of the prompt's real renders.

    Per-image figures: bootstrap within prompts. FD and recall: Student t over `fd_splits` interleaved splits.
    Per-prompt figures: bootstrap over prompts. Returns {"num_images", "num_prompts", "metrics": {name:
    interval dict + "better"}, "samples": what `compare_reports` needs, "view_classes", "settings"}."""
    if len(prompts) != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but {len(prompts)} prompts; need one prompt per image")
    num = len(prompts)
    groups = group_by_prompt(prompts)
    strata = [0] * num
    for index, members in enumerate(groups.values()):
        for i in members:
            strata[i] = index
    out = evaluator.outputs(images)
    predicted = {
        "shape": out.shape_logits.argmax(-1),
        "colour": out.colour_logits.argmax(-1),
        "view": out.view_logits.argmax(-1),
    }
    features = out.features.double()
    per_image = attribute_correctness(predicted, prompts)
    per_image.update({k: v.double() for k, v in image_quality(images).items()})
    per_image["floater_rate"] = per_image.pop("floater")

    metrics: dict[str, Interval] = {}
    samples: dict[str, dict] = {}
    for name, values in per_image.items():
        metrics[name] = bootstrap_interval(values, strata, num_resamples, seed)
        samples[name] = {"values": [None if math.isnan(v) else v for v in values.tolist()], "strata": strata}

    splits = fd_splits if fd_splits >= 2 and num >= 4 * fd_splits else 0
    if reference_num > 0 and num >= 2:
        real = evaluator.reference_features(reference_num, reference_seed)
        reference = FeatureStats.from_features(real)
        fd = lambda idx: frechet_distance(FeatureStats.from_features(features[idx]), reference)  # noqa: E731
        fd_values = split_values(fd, num, splits) if splits else []
        metrics["fd_shapes"] = split_interval(fd(torch.arange(num)), fd_values, num, (0.0, math.inf))
        samples["fd_shapes"] = {"value": metrics["fd_shapes"].value, "splits": fd_values}
        if num > 3:
            pr = precision_recall(features, real)
            metrics["precision"] = bootstrap_interval(pr["precision"], strata, num_resamples, seed)
            samples["precision"] = {"values": pr["precision"].tolist(), "strata": strata}
            recall = lambda idx: float(precision_recall(features[idx], real)["recall"].mean())  # noqa: E731
            recall_values = split_values(recall, num, splits) if splits and num >= 4 * splits + 4 else []
            metrics["recall"] = split_interval(float(pr["recall"].mean()), recall_values, num, (0.0, 1.0))
            samples["recall"] = {"value": metrics["recall"].value, "splits": recall_values}

    if diversity and any(len(members) >= 2 for members in groups.values()):
        generated, real_div = [], []
        by_count: dict[int, list[str]] = {}
        for prompt, members in groups.items():
            if len(members) >= 2:
                by_count.setdefault(min(len(members), DIVERSITY_RENDERS), []).append(prompt)
        for count, count_prompts in by_count.items():
            renders = evaluator.prompt_render_features(count_prompts, count, seed=REFERENCE_SEED)
            for i, prompt in enumerate(count_prompts):
                members, own = torch.tensor(groups[prompt]), renders[i * count : (i + 1) * count]
                centre = own.mean(0)  # the prompt's real-render mean: Vendi measures spread around it
                generated.append(per_prompt_diversity(features[members], [prompt] * len(members), centre))
                real_div.append(per_prompt_diversity(own, [prompt] * count, centre))
        distance = torch.cat([g["distance"] for g in generated]) / torch.cat([r["distance"] for r in real_div])
        modes = torch.cat([g["vendi"] for g in generated]) / torch.cat([r["vendi"] for r in real_div])
        collapsed = (modes < COLLAPSE_RATIO).double()
        for name, values in (("diversity_ratio", distance), ("modes_ratio", modes), ("collapsed_prompts", collapsed)):
            metrics[name] = bootstrap_interval(values, None, num_resamples, seed)
            samples[name] = {"values": values.tolist()}

    ordered = {name: metrics[name] for name in HIGHER_IS_BETTER if name in metrics}
    return {
        "num_images": num,
        "num_prompts": len(groups),
        "metrics": {
            name: {**interval.to_dict(), "better": "higher" if HIGHER_IS_BETTER[name] else "lower"}
            for name, interval in ordered.items()
        },
        "samples": samples,
        "view_classes": {shape: [list(c) for c in view_classes("geometry")[i]] for i, shape in enumerate(SHAPES)},
        "settings": {
            "reference_num": reference_num,
            "reference_seed": reference_seed,
            "fd_splits": splits,
            "num_resamples": num_resamples,
            "bootstrap_seed": seed,
        },
    }


def compare_reports(a: dict, b: dict, num_resamples: int = NUM_RESAMPLES) -> dict[str, dict]:
    """For every figure in both reports: A's and B's value, B - A with its 95 % interval, and a verdict ("B better",
    "A better", "within noise"), treating the two runs as independent samples."""
    result = {}
    for name in HIGHER_IS_BETTER:
        if name not in a["metrics"] or name not in b["metrics"]:
            continue
        sample_a, sample_b = dict(a["samples"][name]), dict(b["samples"][name])
        for sample in (sample_a, sample_b):
            if "values" in sample:
                sample["values"] = [math.nan if v is None else v for v in sample["values"]]
        low, high = difference_interval(sample_a, sample_b, num_resamples)
        value_a, value_b = a["metrics"][name]["value"], b["metrics"][name]["value"]
        result[name] = {
            "a": value_a,
            "b": value_b,
            "difference": value_b - value_a,
            "low": low,
            "high": high,
            "verdict": verdict(low, high, HIGHER_IS_BETTER[name]),
        }
    return result


def format_report(report: dict) -> str:
    """A text table: metric, value, 95 % interval, n, how the interval was made."""
    rows = [("metric", "value", "95% interval", "n", "interval")]
    for name, m in report["metrics"].items():
        interval = "n/a" if math.isnan(m["low"]) else f"[{m['low']:.4f}, {m['high']:.4f}]"
        rows.append((f"{name} ({m['better']} better)", f"{m['value']:.4f}", interval, str(m["n"]), m["method"]))
    return _table(rows)


def format_comparison(comparison: dict[str, dict]) -> str:
    """A text table: metric, A, B, B - A with its 95 % interval, verdict."""
    rows = [("metric", "A", "B", "B - A [95% interval]", "verdict")]
    for name, c in comparison.items():
        interval = "n/a" if math.isnan(c["low"]) else f"{c['difference']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]"
        rows.append((name, f"{c['a']:.4f}", f"{c['b']:.4f}", interval, c["verdict"]))
    return _table(rows)


def _table(rows: list[tuple]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
