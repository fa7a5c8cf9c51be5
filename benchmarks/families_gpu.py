"""Step time and peak memory of LCM and DMD2 distillation on SD1.5-size and SDXL-size random-weight teachers
(issue 18: "when a GPU is at hand, one prepared script"). No quality claim: the weights are random, only the work is
real (the published UNet and VAE configurations; small random text encoders of the real widths, since their cost is
cached away by the loop).

Each (family, method) runs sdtoolkit's real `Trainer` (`sdtoolkit distill`'s loop: data caches, optimizers, EMA,
clipping) on a few random images at the family's native resolution, in a fresh process, and reports the median
step time after warm-up and the peak accelerator memory (CUDA) or the peak resident set growth (CPU).

    python -m benchmarks.families_gpu --size full --device cuda --json $OUT/families.json     # H100/H200
    python -m benchmarks.families_gpu --size tiny --device cpu                                # smoke test
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SDXL_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
"""stabilityai/stable-diffusion-xl-base-1.0's UNet configuration (2.6B parameters)."""
FAMILIES = ("sd15", "sdxl")
METHODS = {
    "lcm": {"lr_warmup_steps": 0},
    "dmd2": {"num_steps": 1, "fake_updates_per_generator": 1},
}


def build_pipeline(family: str, size: str):
    """A stock pipeline of `family` with random weights: the published UNet/VAE configs (`full`) or tiny ones."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    from benchmarks.components import SD15_SCHEDULER, SD15_UNET, SD15_VAE
    from sdtoolkit.testing import tiny_sd_pipeline, tiny_sdxl_pipeline, tiny_text_encoder, tiny_tokenizer

    if size == "tiny":
        return tiny_sd_pipeline() if family == "sd15" else tiny_sdxl_pipeline()
    torch.manual_seed(0)
    scheduler = DDIMScheduler(**SD15_SCHEDULER)
    vae = AutoencoderKL(**SD15_VAE)
    if family == "sd15":
        tokenizer = tiny_tokenizer(model_max_length=77)
        return StableDiffusionPipeline(
            vae=vae,
            text_encoder=tiny_text_encoder(len(tokenizer), hidden_size=768, max_position_embeddings=77),
            tokenizer=tokenizer,
            unet=UNet2DConditionModel(**SD15_UNET),
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    tokenizer, tokenizer_2 = tiny_tokenizer(model_max_length=77), tiny_tokenizer(model_max_length=77)
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=tiny_text_encoder(len(tokenizer), hidden_size=768, max_position_embeddings=77),
        text_encoder_2=_clip_with_projection(len(tokenizer_2), 1280),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=UNet2DConditionModel(**SDXL_UNET),
        scheduler=scheduler,
    )


def _clip_with_projection(vocab_size: int, hidden_size: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=1,
        num_attention_heads=max(1, hidden_size // 64),
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        projection_dim=hidden_size,
    )
    return CLIPTextModelWithProjection(config).eval()


def measure(family: str, method: str, size: str, device: str, steps: int, warmup: int, batch_size: int) -> dict:
    """One (family, method): build, run `warmup + steps` global steps of the real loop, time and peak memory."""
    import numpy as np
    from PIL import Image

    from sdtoolkit.cli.distill import prepare_data
    from sdtoolkit.distill.config import TrainConfig
    from sdtoolkit.distill.loop import Trainer, get_method
    from sdtoolkit.models.loading import teacher_resolution
    from sdtoolkit.testing import TINY_CAPTIONS

    pipeline = build_pipeline(family, size)
    resolution = teacher_resolution(pipeline)
    parameters = sum(p.numel() for p in pipeline.unet.parameters())
    root = Path(tempfile.mkdtemp(prefix=f"families-{family}-{method}-"))
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2 * batch_size):
        Image.fromarray(rng.integers(0, 255, (resolution, resolution, 3), dtype=np.uint8)).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(TINY_CAPTIONS[i % len(TINY_CAPTIONS)])
    cuda = device == "cuda"
    train = TrainConfig(
        teacher=f"random-{family}",
        output=str(root / "run"),
        data=str(data),
        batch_size=batch_size,
        max_steps=10**9,
        mixed_precision="bf16" if cuda else "no",
        sample_every=0,
        validate_every=-1,
        checkpoint_every=10**9,
        log_with="none",
        export=False,
        log_every=10**9,
        channels_last=cuda,
    )
    method_class = get_method(method)
    config = method_class.config_class(**METHODS[method])
    trainer = Trainer(method_class, config, train, {}, prepare_data, pipeline=pipeline)
    progress, dataloader, models = trainer.setup()
    batches = trainer._batches(dataloader, 0)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss0 = _rss_mb()
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        logs = trainer.train_step(step, batches, models)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    finite = all(torch.isfinite(v).all().item() for v in logs.values())
    timed = sorted(times[warmup:])
    return {
        "family": family,
        "method": method,
        "size": size,
        "device": device if not cuda else torch.cuda.get_device_name(),
        "batch_size": batch_size,
        "resolution": resolution,
        "unet_parameters": parameters,
        "ms_per_step_median": 1000 * timed[len(timed) // 2],
        "images_per_s": batch_size / timed[len(timed) // 2],
        "first_step_s": times[0],
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "peak_rss_growth_mb": None if cuda else _rss_mb() - rss0,
        "finite_losses": finite,
    }


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--size", choices=("full", "tiny"), default="full", help="published sizes or tiny (default: full)"
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="device (default: cuda)")
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"comma list of {FAMILIES} (default: all)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {tuple(METHODS)} (default: all)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after warm-up (default: 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps (default: 2)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 4 at full size, 2 tiny")
    parser.add_argument("--json", default=None, help="write the rows here as JSON")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # family:method, run in this process
    args = parser.parse_args(argv)
    batch = args.batch_size or (4 if args.size == "full" else 2)
    if args.one:
        family, method = args.one.split(":")
        print(json.dumps(measure(family, method, args.size, args.device, args.steps, args.warmup, batch)))
        return 0
    families, methods = args.families.split(","), args.methods.split(",")
    for name, valid in ((families, FAMILIES), (methods, tuple(METHODS))):
        bad = [n for n in name if n not in valid]
        if bad:
            parser.error(f"{bad[0]!r} is not one of {', '.join(valid)}")
    rows = []
    for family in families:
        for method in methods:  # a fresh process each: peak memory of one configuration alone
            command = [sys.executable, "-m", "benchmarks.families_gpu", "--one", f"{family}:{method}"]
            command += ["--size", args.size, "--device", args.device, "--steps", str(args.steps)]
            command += ["--warmup", str(args.warmup), "--batch-size", str(batch)]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                row = {"family": family, "method": method, "error": result.stderr.strip().splitlines()[-1:]}
            else:
                row = json.loads(result.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all("error" not in row for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
