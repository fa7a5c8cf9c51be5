"""Measures a trained flow-matching shapes teacher (`builtin:shapes-flow`, SD3 layout) with the shapes evaluator
and writes its model card (`README.md`).

Run as `python -m sdtoolkit.models.shapes_teacher_flow_card FOLDER [--num-samples 1200] [--device cuda]`: it loads
the folder with stock `diffusers.DiffusionPipeline` (a `StableDiffusion3Pipeline`), samples it with its Euler
scheduler and CFG at the default steps, 4 and 1 over every shape x colour x view prompt, scores the images with
`sdtoolkit.eval` and writes `metrics.json` (the fields of `assets/shapes-teacher/metrics.json`) and `README.md`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["dense_time_sigmas", "evaluate_flow_teacher", "write_flow_model_card"]


def dense_time_sigmas(scheduler_config: Any, steps: int) -> list[float]:
    """The `sigmas` under which a stock FlowMatchEulerDiscreteScheduler of num_train_timesteps=1 (a dense-time
    network's) samples the N-step grid the same config samples with 1000 train timesteps: that scheduler's unshifted
    linspace(sigma_max, sigma_min, N), which the call shifts as usual."""
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler

    reference = FlowMatchEulerDiscreteScheduler.from_config({**dict(scheduler_config), "num_train_timesteps": 1000})
    return [float(x) for x in np.linspace(reference.sigma_max, reference.sigma_min, steps)]


def evaluate_flow_teacher(
    folder: str | Path,
    num_samples: int = 1200,
    steps: tuple[int, ...] = (28, 4, 1),
    guidance: float = 5.0,
    seed: int = 0,
    batch_size: int = 50,
    device: str = "cpu",
) -> dict:
    """Scores the teacher in `folder` at each number of Euler `steps` (stock pipeline, CFG `guidance`):
    `num_samples` images over `sdtoolkit.data.all_prompts()` taken in turn, image i seeded `seed + i`. A dense-time
    teacher (`prepare-teacher --dense-time`) is called with the `sigmas` of its teacher's grid
    (`dense_time_sigmas`): its scheduler's own grid degenerates."""
    from diffusers import DiffusionPipeline

    from sdtoolkit.data import all_prompts
    from sdtoolkit.eval import Evaluator, evaluate_pipeline
    from sdtoolkit.models.shapes_teacher_card import _evaluator_hash

    pipeline = DiffusionPipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None).to(device)
    pipeline.set_progress_bar_config(disable=True)
    captions = all_prompts()
    prompts = [captions[i % len(captions)] for i in range(num_samples)]
    evaluator = Evaluator.load()
    results = {
        "num_samples": num_samples,
        "guidance": guidance,
        "seed": seed,
        "evaluator_sha256": _evaluator_hash(),
        "runs": [],
    }
    for num_steps in steps:
        start = time.perf_counter()
        call = None
        if pipeline.scheduler.config.get("num_train_timesteps") == 1:
            call = {"sigmas": dense_time_sigmas(pipeline.scheduler.config, num_steps)}
        scores = evaluate_pipeline(
            pipeline, prompts, num_steps, guidance, seed=seed, batch_size=batch_size, evaluator=evaluator,
            call_kwargs=call,
        )  # fmt: skip
        scores["seconds"] = round(time.perf_counter() - start, 1)
        scores["threads"] = torch.get_num_threads()
        scores["device"] = device
        results["runs"].append(scores)
        print(json.dumps(scores))
    return results


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def write_flow_model_card(folder: str | Path) -> Path:
    """Renders `README.md` in `folder` from the JSON files the training and `evaluate_flow_teacher` wrote there."""
    from sdtoolkit.models.loading import BUILTIN_TRAIN_COMMANDS

    folder = Path(folder)
    config = json.loads((folder / "training_config.json").read_text())
    log = json.loads((folder / "training_log.json").read_text())
    metrics_path = folder / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else None
    net = json.loads((folder / "transformer" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    text = json.loads((folder / "text_encoder" / "config.json").read_text())
    params, timings = log["parameters"], log["timings"]
    size_mb = sum(p.stat().st_size for p in folder.rglob("*.safetensors")) / 2**20
    loss = log["transformer"]["loss"][-1]["loss"] if log["transformer"]["loss"] else None
    command = config.get("extra", {}).get("command", BUILTIN_TRAIN_COMMANDS["shapes-flow"])
    side = config["resolution"] // 2 ** (len(vae["block_out_channels"]) - 1)
    lines = [
        "# shapes-flow: the built-in `builtin:shapes-flow` teacher of sdtoolkit",
        "",
        "A small rectified-flow (flow-matching) text-to-image model in Stable Diffusion 3's exact folder layout, "
        "trained from scratch on the procedurally rendered 3D shapes of `builtin:shapes`. Stock diffusers loads it "
        "offline:",
        "",
        "```python",
        "from diffusers import StableDiffusion3Pipeline",
        "pipe = StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None)",
        f'image = pipe("a red cube, front view", num_inference_steps={config["sample_steps"]}, '
        f"guidance_scale={config['guidance']}).images[0]",
        "```",
        "",
        "or `load_teacher('builtin:shapes-flow')`. Pass `guidance_scale`: the stock SD3 default (7.0) is not this "
        "teacher's.",
        "",
        "## Why SD3's layout (not SANA's)",
        "",
        "Stock `SanaPipeline` (diffusers 0.42) with its default `use_resolution_binning=True` refuses a transformer "
        "whose `sample_size` is not 16/32/64/128 latents and snaps the image size to its 512-4096 px aspect-ratio "
        "bins, so a 64 px model would be sampled at 512 px unless every caller passes `use_resolution_binning=False`;"
        " it prefixes every prompt with a ~300-token chat-style instruction for a Gemma-2 encoder; and its "
        "`AutoencoderDC` cannot reuse `builtin:shapes`' trained `AutoencoderKL`. SD3's layout has none of these.",
        "",
        "## Architecture",
        "",
        "| component | class | configuration | parameters |",
        "|---|---|---|---|",
        f"| VAE | `AutoencoderKL` | `builtin:shapes`' VAE, frozen ({config['vae_source']}); {config['resolution']}px "
        f"RGB <-> {vae['latent_channels']}x{side}x{side}; shift_factor {vae['shift_factor']:.4f}, scaling_factor "
        f"{vae['scaling_factor']:.4f} (mean and 1/std of the training latents) | {params['vae']:,} |",
        f"| text encoders | 2 x `CLIPTextModelWithProjection` | hidden {text['hidden_size']}, "
        f"{text['num_hidden_layers']} layers, {text['num_attention_heads']} heads, word-level `CLIPTokenizer`; "
        f"no T5 (`text_encoder_3=None`) | {params['text_encoder'] + params['text_encoder_2']:,} |",
        f"| transformer | `SD3Transformer2DModel` | {net['num_layers']} joint blocks, {net['num_attention_heads']} "
        f"heads x {net['attention_head_dim']}, patch {net['patch_size']}, joint_attention_dim "
        f"{net['joint_attention_dim']}, velocity prediction | {params['transformer']:,} |",
        f"| scheduler | `FlowMatchEulerDiscreteScheduler` | shift {config['shift']}, "
        f"{config['num_train_timesteps']} train timesteps | - |",
        "",
        f"Weights: safetensors, float32, {size_mb:.1f} MB in total.",
        "",
        "## Training",
        "",
        f"- Data: {config['num_train_images']} renders of {config['resolution']}x{config['resolution']} (seed "
        f'{config["seed"]}), captions `a <colour> <shape>, <view> view`, dropped to "" with probability '
        f"{config['caption_dropout']}.",
        f"- Hardware: {log['hardware']}; mixed precision `{config['mixed_precision']}`.",
        f"- Transformer + both text encoders (VAE frozen): {log['transformer']['steps']} steps, batch "
        f"{config['batch_size']}, AdamW lr {config['lr']} (warm-up {config['warmup_steps']}, cosine to 10 %), "
        f"weight decay {config['weight_decay']}, rectified-flow velocity MSE at logit-normal t (m "
        f"{config['logit_mean']}, s {config['logit_std']}, shift {config['shift']}), EMA {config['ema_decay']}; final "
        f"loss {_fmt(loss, 4)}; {timings['transformer_s']} s.",
        f"- Wall time: {timings['total_s']} s in all (rendering {timings['render_s']} s, latent encoding "
        f"{timings['encode_s']} s).",
        f"- Command: `{command}`",
        "",
        "Every number here is copied from `training_config.json`, `training_log.json` and `metrics.json` beside "
        "this card.",
        "",
        "## Metrics",
        "",
    ]
    if metrics is None:
        lines += ["Not measured yet (run `python -m sdtoolkit.models.shapes_teacher_flow_card FOLDER`).", ""]
    else:
        lines += [
            f"{metrics['num_samples']} samples per row, prompts cycling through all 120 captions, image i seeded "
            f"{metrics['seed']} + i, Euler (the shipped scheduler), CFG {metrics['guidance']}. Shapes evaluator "
            f"(weights sha256 `{metrics.get('evaluator_sha256', 'not recorded')[:16]}...`): prompt accuracy = shape "
            "and colour both right; FD-shapes against real renders (lower is better).",
            "",
            "| Euler steps | prompt acc. | shape acc. | colour acc. | view acc. | FD-shapes | seconds | device |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for run in metrics["runs"]:
            lines.append(
                f"| {run['steps']} | {_fmt(run['prompt_accuracy'])} | {_fmt(run['shape_accuracy'])} | "
                f"{_fmt(run['colour_accuracy'])} | {_fmt(run['view_accuracy'])} | {_fmt(run.get('fd_shapes'), 2)} | "
                f"{run['seconds']} | {run.get('device', 'cpu')} |"
            )
        lines.append("")
    if (folder / "samples.png").exists():
        lines += ["## Samples", "", "![samples](samples.png)", "", "Prompts and settings: `samples.json`.", ""]
    lines += [
        "## Limitations",
        "",
        "64x64 images of one centred object on white; nothing outside the 120 captions is meaningful. It is a test "
        "teacher for distillation code, not an image generator.",
        "",
    ]
    path = folder / "README.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure a flow-matching shapes teacher and write its model card.")
    parser.add_argument("folder", type=Path, help="The teacher folder (written by `train-teacher --family sd3`).")
    parser.add_argument("--num-samples", type=int, default=1200, help="Images per number of steps (default 1200).")
    parser.add_argument("--steps", type=int, nargs="+", default=[28, 4, 1], help="Euler step counts (28 4 1).")
    parser.add_argument("--guidance", type=float, default=5.0, help="Classifier-free guidance scale (5.0).")
    parser.add_argument("--device", default="cpu", help="Where to sample (cpu).")
    parser.add_argument("--card-only", action="store_true", help="Only re-render README.md from the JSON files.")
    args = parser.parse_args(argv)
    if not args.card_only:
        metrics = evaluate_flow_teacher(
            args.folder, args.num_samples, tuple(args.steps), args.guidance, device=args.device
        )
        (args.folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"wrote {write_flow_model_card(args.folder)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
