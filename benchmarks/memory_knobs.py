"""Peak memory of one training step through the real loop with each memory knob of `TrainConfig`, one fresh process
per (method, knob).

    python -m benchmarks.memory_knobs --size shapes                          # builtin:shapes architecture, CPU RSS
    python -m benchmarks.memory_knobs --size sd15 --device cuda --batch-size 4   # SD1.5 sizes on a GPU

Knobs (`TrainConfig` fields): `baseline` (none), `checkpointing` (`gradient_checkpointing`: the trained networks
recompute activations in the backward), `offload` (`teacher_offload`: the frozen teacher's weights live on the host
and visit the device for its forwards), `adamw8bit` (`optimizer="adamw8bit"`: bitsandbytes' 8-bit AdamW states),
`all` (the three together). Methods: `lcm` (full student with a w-embedding, EMA target, teacher CFG) and `dmd2`
(one generator and one fake-score update, the fake score as a full copy: the LoRA fake score shares the teacher's
backbone and refuses offload).

Each worker drives `Trainer.train_step` of `sdtoolkit distill` (built by `benchmarks.workloads.synthetic_trainer`:
in-memory teacher of the size, cached random latents and text embeddings). Measured after one warm-up step (so
optimizer states exist) over two further steps: on CUDA `torch.cuda.max_memory_allocated`; on CPU the process's
peak resident set (VmHWM, reset through /proc/self/clear_refs after the warm-up) minus its resident set before any
network was built. On a CPU the host IS the device, so `offload` cannot lower the figure there (it only adds a
copy of the teacher during its forwards): its saving is a GPU figure.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys

import torch

KNOBS = {
    "baseline": {},
    "checkpointing": {"gradient_checkpointing": True},
    "offload": {"teacher_offload": True},
    "adamw8bit": {"optimizer": "adamw8bit"},
    "all": {"gradient_checkpointing": True, "teacher_offload": True, "optimizer": "adamw8bit"},
}
METHODS = ("lcm", "dmd2")


def worker(method: str, knob: str, size: str, device: torch.device, batch_size: int | None) -> dict:
    import importlib.util

    import accelerate  # noqa: F401  (imported before the baseline: libraries are not what is measured)
    import diffusers  # noqa: F401
    import peft  # noqa: F401

    import sdtoolkit.distill.loop  # noqa: F401
    from benchmarks import components, workloads
    from benchmarks.memory_dmd2 import _rss_kb, peak_over_steps

    if importlib.util.find_spec("bitsandbytes") is not None:
        import bitsandbytes  # noqa: F401

    cuda = device.type == "cuda"
    comps = components.build(size, device, batch_size)
    baseline_kb = _rss_kb()
    overrides = {"fake_updates_per_generator": 1, "fake_score": "full"} if method == "dmd2" else {}
    if method == "lcm":
        overrides["time_cond_proj_dim"] = comps.time_cond_proj_dim
    step = workloads.synthetic_trainer(comps, cuda, method, "eager", dict(KNOBS[knob]), **overrides)
    peak, seconds = peak_over_steps(step, device, baseline_kb)
    trainer = step.trainer
    trained = sum(p.numel() for spec in trainer.specs for p in spec.parameters())
    return {
        "method": method,
        "knob": knob,
        "peak_bytes": int(peak),
        "ms_per_step": 1000 * seconds,
        "trained_params": trained,
        "batch_size": comps.batch_size,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_knobs", description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=["tiny", "shapes", "sd15"], default="shapes", help="model sizes")
    parser.add_argument("--device", default="cpu", help="torch device (cpu or cuda)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (default: the size's; shapes 16)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    parser.add_argument("--knobs", default=",".join(KNOBS), help=f"comma-separated subset of {', '.join(KNOBS)}")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.worker:
        method, knob = args.worker.split(":")
        print(json.dumps(worker(method, knob, args.size, device, args.batch_size)))
        return 0
    methods = [m for m in args.methods.split(",") if m]
    knobs = [k for k in args.knobs.split(",") if k]
    unknown = sorted(set(methods) - set(METHODS)) + sorted(set(knobs) - set(KNOBS))
    if unknown:
        parser.error(f"unknown methods/knobs {unknown}; methods: {', '.join(METHODS)}; knobs: {', '.join(KNOBS)}")
    results: dict[str, dict] = {}
    for method in methods:
        for knob in knobs:
            command = [sys.executable, "-m", "benchmarks.memory_knobs", "--worker", f"{method}:{knob}"]
            command += ["--size", args.size, "--device", args.device, "--threads", str(args.threads)]
            if args.batch_size:
                command += ["--batch-size", str(args.batch_size)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                error = (done.stderr.strip().splitlines() or ["failed"])[-1]
                results[f"{method}:{knob}"] = {"method": method, "knob": knob, "error": error}
            else:
                results[f"{method}:{knob}"] = json.loads(done.stdout.strip().splitlines()[-1])
            print(_row(results[f"{method}:{knob}"], results.get(f"{method}:baseline")), flush=True)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"
    print(f"{args.size} on {card}, {args.threads} thread(s)")
    if args.json:
        meta = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": card,
            "torch": torch.__version__,
            "args": vars(args),
        }
        with open(args.json, "w") as handle:
            json.dump({"meta": meta, "results": results}, handle, indent=2)
    return 0


def _row(result: dict, base: dict | None) -> str:
    name = f"{result['method']:<6} {result['knob']:<14}"
    if "error" in result:
        return f"{name} error: {result['error'][:100]}"
    ratio = f"{result['peak_bytes'] / base['peak_bytes']:.2f}" if base and "peak_bytes" in base else "-"
    return f"{name} {result['peak_bytes'] / 2**20:>9.1f} MiB  x{ratio:<5} {result['ms_per_step']:>9.0f} ms/step"


if __name__ == "__main__":
    sys.exit(main())
