"""Peak memory of one DMD2 training step with the LoRA fake score vs a plain fine-tuning step of the student.

    python -m benchmarks.memory_dmd2 --size shapes --device cpu          # builtin:shapes architecture, CPU RSS
    python -m benchmarks.memory_dmd2 --size sd15 --device cuda --batch-size 4   # SD1.5 sizes on a GPU

Each mode runs in a fresh subprocess with the same student (fp32, AdamW) and the same batch:

- `finetune`: the student's own diffusion loss (eps-MSE at random t on random latents), backward, AdamW step;
- `dmd2-lora`: one DMD2 generator update (1-step student forward with grad; the teacher's guided forward and the
  fake score's forward without grad; injection loss; AdamW) and one fake-score update (denoising loss through the
  teacher's backbone with the LoRA adapter; AdamW on the LoRA), with the teacher frozen (bf16 on CUDA, fp32 on CPU);
- `dmd2-full`: the same with the fake score as a full trainable fp32 copy (the papers' setting), for reference.

Measured after one warm-up step (so optimizer states exist) over two further steps: on CUDA
`torch.cuda.max_memory_allocated`; on CPU the process's peak resident set (VmHWM, reset through
/proc/self/clear_refs after the warm-up) minus its resident set before any network was built. Random weights: memory
does not depend on their values. Text conditioning is random `[B, L, D]` embeddings (no text encoder is loaded).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import subprocess
import sys
import time

import torch

MODES = ("finetune", "dmd2-lora", "dmd2-full")


def _rss_kb(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def peak_over_steps(step, device: torch.device, baseline_kb: int, repeats: int = 2) -> tuple[int, float]:
    """Runs `step` once as a warm-up (optimizer states are allocated there), then `repeats` times; returns the peak
    memory of those repeats in bytes (CUDA: max allocated; CPU: peak RSS above `baseline_kb`) and seconds per step."""
    cuda = device.type == "cuda"
    step()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        _reset_peak()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    if cuda:
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = (_rss_kb("VmHWM") - baseline_kb) * 1024
    return int(peak), (time.perf_counter() - start) / repeats


def _build_unet(size: str, device: torch.device):
    from benchmarks.components import SD15_UNET
    from sdtoolkit.models.shapes_teacher import TeacherConfig, build_unet

    torch.manual_seed(0)
    if size == "sd15":
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel(**SD15_UNET).to(device), 64, 77, 768
    if size == "shapes":
        config = TeacherConfig()
        unet = build_unet(config)
        return unet.to(device), unet.config.sample_size, 16, config.text_hidden_size
    raise ValueError(f"size={size!r} is not known; choose shapes or sd15")


def worker(mode: str, size: str, device: torch.device, batch_size: int, rank: int) -> dict:
    from sdtoolkit.core.denoiser import Conditioning, Denoiser
    from sdtoolkit.core.schedules import VPSchedule, make_betas
    from sdtoolkit.distill.score_distillation import (
        FakeScoreConfig,
        ScorePair,
        dmd_gradient,
        injection_loss,
        sample_timesteps,
    )

    baseline_kb = _rss_kb()
    schedule = VPSchedule(make_betas(1000, 0.00085, 0.012, "scaled_linear"))
    unet, latent, text_len, text_dim = _build_unet(size, device)
    student_unet = copy.deepcopy(unet).requires_grad_(True).train()
    student = Denoiser(student_unet, schedule, "epsilon")
    optimizer_g = torch.optim.AdamW(student_unet.parameters(), lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(batch_size, 4, latent, latent, generator=generator).to(device)
    data = torch.randn(batch_size, 4, latent, latent, generator=generator).to(device)
    cond = Conditioning(torch.randn(batch_size, text_len, text_dim, generator=generator).to(device))
    uncond = Conditioning(torch.randn(batch_size, text_len, text_dim, generator=generator).to(device))
    t_student = torch.full((batch_size,), 999.0, device=device)

    if mode == "finetune":
        del unet

        def step() -> None:
            t = sample_timesteps(schedule, batch_size, device=device)
            eps = torch.randn_like(data)
            prediction = student.predict(student.add_noise(data, eps, t), t, cond).eps
            torch.nn.functional.mse_loss(prediction, eps).backward()
            optimizer_g.step()
            optimizer_g.zero_grad(set_to_none=True)

    else:
        teacher = Denoiser(unet, schedule, "epsilon").freeze()  # bf16 on CUDA, fp32 on CPU
        kind = "lora" if mode == "dmd2-lora" else "full"
        scores = ScorePair(teacher, FakeScoreConfig(kind=kind, rank=rank))
        optimizer_f = torch.optim.AdamW(scores.trainable_parameters(), lr=1e-5)

        def step() -> None:
            # generator update (DMD2 Sec. 4.1): DM loss, no GAN
            x = student.predict(z, t_student, cond).x0
            t = sample_timesteps(schedule, batch_size, 0.02, 0.98, device=device)
            with torch.no_grad():
                x_t = teacher.add_noise(x.detach(), torch.randn_like(x), t)
                x0_real = scores.real(x_t, t, cond, uncond=uncond, guidance_scale=1.75).x0
                x0_fake = scores.fake(x_t, t, cond).x0
                grad = dmd_gradient(x.detach(), x0_real, x0_fake)
            injection_loss(x, grad).backward()
            optimizer_g.step()
            optimizer_g.zero_grad(set_to_none=True)
            # fake-score update on the detached samples
            scores.fake_denoising_loss(x.detach(), cond).backward()
            optimizer_f.step()
            optimizer_f.zero_grad(set_to_none=True)

    peak, _ = peak_over_steps(step, device, baseline_kb)
    n_student = sum(p.numel() for p in student_unet.parameters())
    return {"mode": mode, "peak_bytes": int(peak), "student_params": n_student}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_dmd2", description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=["shapes", "sd15"], default="shapes", help="UNet architecture")
    parser.add_argument("--device", default="cpu", help="torch device (cpu or cuda)")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size of every mode")
    parser.add_argument("--rank", type=int, default=64, help="LoRA rank of the fake score (DMD2 SDXL LoRA: 64)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.worker:
        print(json.dumps(worker(args.worker, args.size, device, args.batch_size, args.rank)))
        return 0
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown modes {unknown}; choose from {', '.join(MODES)}")
    results = {}
    for mode in modes:
        command = [sys.executable, "-m", "benchmarks.memory_dmd2", "--worker", mode, "--size", args.size]
        command += ["--device", args.device, "--batch-size", str(args.batch_size), "--rank", str(args.rank)]
        command += ["--threads", str(args.threads)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    base = results.get("finetune", {}).get("peak_bytes")
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"
    print(f"{args.size} on {card}, batch {args.batch_size}, LoRA rank {args.rank}")
    print(f"{'mode':<10} {'peak MiB':>10} {'x finetune':>11}")
    for mode, result in results.items():
        ratio = f"{result['peak_bytes'] / base:.2f}" if base else "-"
        print(f"{mode:<10} {result['peak_bytes'] / 2**20:>10.1f} {ratio:>11}")
    if args.json:
        meta = {"date": datetime.date.today().isoformat(), "device": card, "args": vars(args)}
        with open(args.json, "w") as handle:
            json.dump({"meta": meta, "results": results}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
