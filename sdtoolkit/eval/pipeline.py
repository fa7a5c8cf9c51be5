"""Generation with a diffusers text-to-image pipeline, then scoring with the shapes evaluator."""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from sdtoolkit.data.dataset import parse_caption
from sdtoolkit.eval.metrics import REFERENCE_NUM, Evaluator


@torch.no_grad()
def generate_images(
    pipe,
    prompts: list[str],
    steps: int,
    guidance: float,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
    call_kwargs: dict | None = None,
) -> Tensor:
    """Images [N, 3, H, W] in [0, 1], one per prompt, from `pipe(prompt=..., output_type="pt", **call_kwargs)`
    (`call_kwargs`: e.g. an export's `sigmas`).

    Image i uses its own CPU generator seeded `seed + i`, so an image does not depend on the batch size.
    """
    images = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="generating", unit="batch", disable=not progress):
        batch = list(prompts[start : start + batch_size])
        generators = [torch.Generator("cpu").manual_seed(seed + start + i) for i in range(len(batch))]
        out = pipe(
            prompt=batch,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generators,
            output_type="pt",
            **(call_kwargs or {}),
        )
        images.append(out.images.float().cpu().clamp(0, 1))
    return torch.cat(images)


def evaluate_pipeline(
    pipe,
    prompts: list[str],
    steps: int,
    guidance: float,
    seed: int = 0,
    batch_size: int = 16,
    evaluator: Evaluator | None = None,
    reference_num: int = REFERENCE_NUM,
    progress: bool = True,
    fd_splits: int = 0,
    report: bool = False,
    call_kwargs: dict | None = None,
) -> dict:
    """Generates one image per prompt with `pipe` and scores them: `Evaluator.score` plus `fd_shapes` against
    `reference_num` real renders (skipped when 0 or when fewer than 2 prompts). Prompts are checked first.

    `fd_splits` K > 1 adds `fd_shapes_splits`: the FD of each interleaved split `images[k::K]` against the same
    reference, a measure of FD's sampling noise at N / K images (with prompts listed prompt-major, seeds per prompt a
    multiple of K, each split holds every prompt equally often; image i is seeded `seed + i`, so the splits of two
    pipelines scored with the same prompts are paired).

    `report=True` adds "report": `Evaluator.report` of the images (every figure with its 95 % interval; FD and
    recall intervals from `fd_splits` splits, or the report's default when 0)."""
    if fd_splits < 0 or fd_splits == 1 or (fd_splits and len(prompts) < 2 * fd_splits):
        raise ValueError(f"fd_splits={fd_splits}: use 0 (none) or K >= 2 with at least 2 images per split")
    for prompt in prompts:
        parse_caption(prompt)
    evaluator = Evaluator.load() if evaluator is None else evaluator
    images = generate_images(
        pipe, prompts, steps, guidance, seed=seed, batch_size=batch_size, progress=progress, call_kwargs=call_kwargs
    )
    scores = evaluator.score(images, prompts)
    if reference_num > 0 and len(prompts) >= 2:
        reference = evaluator.reference_stats(n=reference_num)
        scores["fd_shapes"] = evaluator.fd_shapes(images, reference)
        if fd_splits:
            scores["fd_shapes_splits"] = [
                evaluator.fd_shapes(images[k::fd_splits], reference) for k in range(fd_splits)
            ]
    if report:
        kwargs = {"fd_splits": fd_splits} if fd_splits else {}
        scores["report"] = evaluator.report(images, prompts, reference_num=reference_num, **kwargs)
    scores.update(steps=steps, guidance=guidance, seed=seed)
    return scores
