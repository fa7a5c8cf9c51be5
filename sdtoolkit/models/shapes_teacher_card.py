"""Measures a trained shapes teacher with the shapes evaluator and writes its model card (`README.md`).

Run as `python -m sdtoolkit.models.shapes_teacher_card FOLDER [--num-samples 600]`: it samples the folder with stock
diffusers (DDIM, CFG 5) at 50, 4 and 1 steps over every shape x colour x view prompt, scores the images with
`sdtoolkit.eval` (prompt / shape / colour / view accuracy and FD-shapes against real renders), stores the numbers
in `metrics.json` and renders `README.md` from `training_config.json`, `training_log.json` and `metrics.json`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

__all__ = ["evaluate_teacher", "write_model_card"]


def evaluate_teacher(
    folder: str | Path,
    num_samples: int = 600,
    steps: tuple[int, ...] = (50, 4, 1),
    guidance: float = 5.0,
    seed: int = 0,
    batch_size: int = 50,
) -> dict:
    """Scores the teacher in `folder` at each number of DDIM `steps`: `num_samples` images over the prompts of
    `sdtoolkit.data.all_prompts()` taken in turn (600 = 5 per shape x colour x view prompt), one seed per image."""
    from diffusers import StableDiffusionPipeline

    from sdtoolkit.data import all_prompts
    from sdtoolkit.eval import Evaluator, evaluate_pipeline

    pipeline = StableDiffusionPipeline.from_pretrained(folder)
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
        scores = evaluate_pipeline(
            pipeline, prompts, num_steps, guidance, seed=seed, batch_size=batch_size, evaluator=evaluator
        )
        scores["seconds"] = round(time.perf_counter() - start, 1)
        scores["threads"] = torch.get_num_threads()
        results["runs"].append(scores)
        print(json.dumps(scores))
    return results


def _evaluator_hash() -> str:
    """sha256 of the shipped evaluator's weights, so the numbers can be tied to the evaluator that made them."""
    import hashlib

    from sdtoolkit.eval import default_evaluator_path

    weights = default_evaluator_path() / "diffusion_pytorch_model.safetensors"
    return hashlib.sha256(weights.read_bytes()).hexdigest()


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def write_model_card(folder: str | Path) -> Path:
    """Renders `README.md` in `folder` from the JSON files the training and `evaluate_teacher` wrote there."""
    folder = Path(folder)
    config = json.loads((folder / "training_config.json").read_text())
    log = json.loads((folder / "training_log.json").read_text())
    metrics_path = folder / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else None
    unet = json.loads((folder / "unet" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    text = json.loads((folder / "text_encoder" / "config.json").read_text())
    params = log["parameters"]
    timings = log["timings"]
    size_mb = sum(p.stat().st_size for p in folder.rglob("*.safetensors")) / 2**20
    unet_loss = log["unet"]["loss"][-1]["loss"] if log["unet"]["loss"] else None
    vae_loss = log["vae"]["loss"][-1]["recon"] if log["vae"]["loss"] else None
    command = config.get("extra", {}).get("command", "sdtoolkit train-teacher ...")

    lines = [
        "# shapes-teacher: the built-in `builtin:shapes` teacher of sdtoolkit",
        "",
        "A small but real text-to-image latent diffusion model in Stable Diffusion 1.x's exact folder layout, trained "
        "from scratch on procedurally rendered 3D shapes. Stock diffusers loads it offline:",
        "",
        "```python",
        "from diffusers import StableDiffusionPipeline",
        "pipe = StableDiffusionPipeline.from_pretrained(folder)  # or load_teacher('builtin:shapes')",
        'image = pipe("a red cube, front view", num_inference_steps=50, guidance_scale=5.0).images[0]',
        "```",
        "",
        'or `sdtoolkit generate --model builtin:shapes --prompt "a red cube, front view" --out grid.png`. '
        "It exists so that every distillation method of sdtoolkit can be run and measured end to end on a CPU.",
        "",
        "## Data",
        "",
        f"{config['num_train_images']} images of {config['resolution']}x{config['resolution']} pixels rendered once "
        f"(seed {config['seed']}) by `sdtoolkit.data.render_batch`: a sphere-traced, Lambert-shaded sphere, cube, "
        "cylinder, cone or torus in one of six colours on white, seen from a random camera whose view word follows "
        "DreamFusion (front, side, back, overhead). Captions: `a <colour> <shape>, <view> view` (120 prompts). "
        f'Captions were replaced by "" with probability {config["caption_dropout"]} for classifier-free guidance.',
        "",
        "## Architecture",
        "",
        "| component | class | configuration | parameters |",
        "|---|---|---|---|",
        f"| VAE | `AutoencoderKL` | channels {tuple(vae['block_out_channels'])}, {vae['layers_per_block']} ResNet "
        f"per block, {vae['latent_channels']} latent channels, 64x64 RGB <-> 4x16x16, mid-block attention "
        f"{'on' if vae.get('mid_block_add_attention', True) else 'off'}, scaling_factor "
        f"{vae['scaling_factor']:.4f} (1/std of the trained latents) | {params['vae']:,} |",
        f"| text encoder | `CLIPTextModel` | hidden {text['hidden_size']}, {text['num_hidden_layers']} layers, "
        f"{text['num_attention_heads']} heads, {text['max_position_embeddings']} positions; word-level "
        "`CLIPTokenizer` (one token per caption word) | " + f"{params['text_encoder']:,} |",
        f"| UNet | `UNet2DConditionModel` | sample 16x16, channels {tuple(unet['block_out_channels'])}, "
        f"{unet['layers_per_block']} layer per block, cross-attention (dim {unet['cross_attention_dim']}) at 8x8, "
        f"4x4 and the mid block only, epsilon prediction | {params['unet']:,} |",
        "| scheduler | `DDIMScheduler` | SD 1.5 convention: scaled_linear betas 0.00085 -> 0.012, 1000 steps, "
        "leading spacing, steps_offset 1, set_alpha_to_one False, clip_sample False | - |",
        "",
        f"Weights: safetensors, float32, {size_mb:.1f} MB in total.",
        "",
        "## Training",
        "",
        f"- Hardware: {log['hardware']}; mixed precision `{config['mixed_precision']}`.",
        f"- Stage 1, VAE: {log['vae']['steps']} steps, batch {config['vae_batch_size']}, AdamW lr "
        f"{config['vae_lr']} (warm-up {config.get('vae_warmup_steps', config['warmup_steps'])}, cosine to 10 %), "
        f"loss L1 + MSE + {config['vae_kl_weight']} x KL; final "
        f"reconstruction loss {_fmt(vae_loss, 4)}; {timings['vae_s']} s.",
        f"- Stage 2, UNet + text encoder (VAE frozen): {log['unet']['steps']} steps, batch {config['batch_size']}, "
        f"AdamW lr {config['lr']} (warm-up {config['warmup_steps']}, cosine to 10 %), weight decay "
        f"{config['weight_decay']}, epsilon-prediction MSE at uniform t, EMA {config['ema_decay']}; final loss "
        f"{_fmt(unet_loss, 4)}; {timings['unet_s']} s.",
        f"- Wall time: {timings['total_s']} s in all (rendering {timings['render_s']} s, latent encoding "
        f"{timings['encode_s']} s).",
        f"- Command: `{command}`",
    ]
    if config.get("extra", {}).get("note"):
        lines.append(f"- Note: {config['extra']['note']}.")
    lines += [
        "",
        "Every number here is copied from `training_config.json`, `training_log.json` and `metrics.json` beside "
        "this card.",
        "",
        "## Metrics",
        "",
    ]
    if metrics is None:
        lines += ["Not measured yet (run `python -m sdtoolkit.models.shapes_teacher_card FOLDER`).", ""]
    else:
        lines += [
            f"{metrics['num_samples']} samples per row, prompts cycling through all 120 shape x colour x view "
            f"captions, one seed per image (seed {metrics['seed']} + i), DDIM with the shipped scheduler config, "
            f"CFG {metrics['guidance']}. Scored by the shipped shapes evaluator (`sdtoolkit.eval.Evaluator`): prompt "
            "accuracy = shape and colour both right; FD-shapes = Fréchet distance of evaluator features to real "
            "renders (lower is better). Evaluator weights sha256 "
            f"`{metrics.get('evaluator_sha256', 'not recorded')[:16]}...`. Seconds: one CPU thread on a shared "
            "2-core machine, not a benchmark.",
            "",
            "| DDIM steps | prompt acc. | shape acc. | colour acc. | view acc. | FD-shapes | seconds |",
            "|---|---|---|---|---|---|---|",
        ]
        for run in metrics["runs"]:
            lines.append(
                f"| {run['steps']} | {_fmt(run['prompt_accuracy'])} | {_fmt(run['shape_accuracy'])} | "
                f"{_fmt(run['colour_accuracy'])} | {_fmt(run['view_accuracy'])} | {_fmt(run.get('fd_shapes'), 2)} | "
                f"{run['seconds']} |"
            )
        lines += [
            "",
            "With SD 1.5's leading timestep spacing a 1-step DDIM sample starts from t = 1 on pure noise, so the "
            "1-step row measures that convention, not the model; few-step generation is what distillation is for.",
            "",
        ]
    if (folder / "samples.png").exists():
        lines += [
            "## Samples",
            "",
            "![samples](samples.png)",
            "",
            "`samples.png`: 50 DDIM steps, CFG 5, four seeds per row; the prompts are in `samples.json`.",
            "",
        ]
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
    parser = argparse.ArgumentParser(description="Measure a shapes teacher and write its model card.")
    parser.add_argument("folder", type=Path, help="The teacher folder (written by `sdtoolkit train-teacher`).")
    parser.add_argument("--num-samples", type=int, default=600, help="Images per number of steps.")
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 4, 1], help="DDIM step counts to measure.")
    parser.add_argument("--guidance", type=float, default=5.0, help="Classifier-free guidance scale.")
    parser.add_argument("--card-only", action="store_true", help="Only re-render README.md from the JSON files.")
    args = parser.parse_args(argv)
    if not args.card_only:
        metrics = evaluate_teacher(args.folder, args.num_samples, tuple(args.steps), args.guidance)
        (args.folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"wrote {write_model_card(args.folder)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
