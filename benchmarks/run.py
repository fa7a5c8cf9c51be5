"""Measure sdtoolkit against plain-diffusers references of the same work, in the same run, as ratios.

    python -m benchmarks.run --size tiny                       # CPU, a few minutes
    python -m benchmarks.run --size sd15-thin --repeats 5      # CPU: SD1.5's module count, narrow channels
    python -m benchmarks.run --size sd15 --only forward,lcm    # a GPU (H100/H200), one prepared script

Prints a table (reference ms/step, sdtoolkit ms/step, speed-up, images/s, peak memory) and writes JSON.
Results worth keeping go to benchmarks/RESULTS.md with card, date and command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import traceback

import torch

from benchmarks import components, timing, workloads

WORKLOADS = workloads.WORKLOADS


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--size",
        choices=["tiny", "sd15-thin", "sd15"],
        default="tiny",
        help="model sizes: tiny; sd15-thin (SD1.5's block topology and module count, narrow channels: host overhead "
        "shows on a CPU); sd15 (needs a GPU)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="measure reference and sdtoolkit alternately this many times and report each one's median ms/step "
        "(on a shared CPU, 5 or more)",
    )
    parser.add_argument(
        "--fake-rank",
        type=int,
        default=None,
        help="LoRA rank of the DMD2/SiD fake score (default: the size's, 64 at SD1.5 width scaled to the narrow "
        "sizes' width)",
    )
    parser.add_argument(
        "--only", default=",".join(WORKLOADS), help=f"comma-separated workloads; known: {', '.join(WORKLOADS)}"
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--batch-size", type=int, default=None, help="override the size's batch (sd15: 16)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per measurement (tiny: 3, sd15: 10)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps before timing (tiny: 1, sd15: 3)")
    parser.add_argument(
        "--variants",
        default="all",
        help="sdtoolkit variants (comma list: eager, compiled, fp32-prior, 1-step, ...; a workload with none of "
        "them runs its own); all: every variant on a GPU, no compiled ones on a CPU",
    )
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (1: on a shared machine, 2 threads spin-wait on each other)",
    )
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    if args.size == "sd15" and device.type != "cuda":
        parser.error("--size sd15 needs a CUDA device (an SD1.5-size step on a CPU takes minutes)")
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; known: {', '.join(WORKLOADS)}")
    comps = components.build(args.size, device, args.batch_size)
    if args.fake_rank is not None:
        comps.fake_rank = args.fake_rank
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats} must be at least 1")
    steps = args.steps or (10 if args.size == "sd15" else 3)
    warmup = args.warmup or (3 if args.size == "sd15" else 1)
    mixed_precision = device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": _device_name(device),
        "torch": torch.__version__,
        "size": args.size,
        "batch_size": comps.batch_size,
        "fake_rank": comps.fake_rank,
        "repeats": args.repeats,
        "command": " ".join(["python -m benchmarks.run", *(argv if argv is not None else sys.argv[1:])]),
        "workloads": {},
    }
    for name in names:
        workload = WORKLOADS[name]
        entry: dict = {"notes": workload.notes, "images_per_step": workload.images_per_step(comps.batch_size)}
        results["workloads"][name] = entry
        # torch.compile on a CPU costs ~100 s per model cold and is not what the CPU size is for
        variants = [v for v in workload.variants if device.type == "cuda" or v not in workload.gpu_only]
        if args.variants != "all":
            requested = [v for v in args.variants.split(",") if v in workload.variants]
            variants = requested or variants  # a workload with none of the named variants runs its own
        if args.repeats == 1:
            _measure_once(name, workload, comps, mixed_precision, variants, entry, device, warmup, steps)
        else:
            _measure_alternating(name, workload, comps, mixed_precision, variants, entry, device, warmup, steps, args)
        if workload.numerics is not None:
            try:
                entry["numerics"] = workload.numerics(comps, mixed_precision)
            except Exception as error:
                entry["numerics"] = {"error": f"{type(error).__name__}: {error}"}
                traceback.print_exc()
        if args.json:  # after every workload: a run stopped by a time limit keeps what it measured
            _write_json(results, args.json)
    print(format_table(results))
    if args.json:
        print(f"wrote {args.json}")
    return 0


def _write_json(results: dict, path: str) -> None:
    with open(path, "w") as handle:
        json.dump(results, handle, indent=2)


def _measure_once(name, workload, comps, mixed_precision, variants, entry, device, warmup, steps) -> None:
    """Reference, then each variant, each built, measured and freed in turn (the GPU sizes' memory allows one)."""
    print(f"[{name}] reference ...", flush=True)
    try:
        ref_step = workload.reference(comps, mixed_precision)
        entry["reference"] = timing.measure(ref_step, device, warmup, steps).as_dict()
        entry["reference"]["check"] = workload.check(ref_step) if workload.check else None
        entry["reference"]["label"] = workload.reference_label
        del ref_step
    except Exception as error:  # keep measuring the rest; the table says what failed
        entry["reference"] = {"error": f"{type(error).__name__}: {error}"}
        traceback.print_exc()
    _free(device)
    for variant in variants:
        print(f"[{name}] sdtoolkit/{variant} ...", flush=True)
        try:
            step = workload.toolkit(comps, mixed_precision, variant)
            entry[variant] = timing.measure(step, device, warmup, steps).as_dict()
            del step
        except Exception as error:
            entry[variant] = {"error": f"{type(error).__name__}: {error}"}
            traceback.print_exc()
        _free(device)


def _measure_alternating(name, workload, comps, mixed_precision, variants, entry, device, warmup, steps, args):
    """Builds the reference and every variant once, measures each as usual once (warm-up, first step, peak memory),
    then runs `args.repeats` rounds in which each path times `steps` steps back to back, so a load change on a
    shared machine hits both sides alike. Keeps each path's median ms/step over the rounds, every round, and for
    each variant the median of its per-round ratio to the reference (paired in time)."""
    import time

    paths: dict[str, object] = {}
    for label in ["reference", *variants]:
        print(f"[{name}] build {label} ...", flush=True)
        try:
            if label == "reference":
                paths[label] = workload.reference(comps, mixed_precision)
            else:
                paths[label] = workload.toolkit(comps, mixed_precision, label)
        except Exception as error:
            entry[label] = {"error": f"{type(error).__name__}: {error}"}
            traceback.print_exc()
    first = {label: timing.measure(step, device, warmup, steps).as_dict() for label, step in paths.items()}
    rounds: dict[str, list[float]] = {label: [] for label in paths}
    for repeat in range(args.repeats):
        for label, step in paths.items():
            timing._sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                step()
            timing._sync(device)
            rounds[label].append(1000 * (time.perf_counter() - start) / steps)
        done = ", ".join(f"{label} {rounds[label][-1]:.1f}" for label in paths)
        print(f"[{name}] round {repeat + 1}/{args.repeats}: {done} ms/step", flush=True)
    for label, times in rounds.items():
        entry[label] = dict(first[label], ms_per_step=statistics.median(times), rounds_ms=times)
        if label == "reference":
            entry[label]["label"] = workload.reference_label
            entry[label]["check"] = workload.check(paths[label]) if workload.check else None
        elif "reference" in rounds:
            ratios = [r / t for r, t in zip(rounds["reference"], times)]
            entry[label]["paired_ratio_median"] = statistics.median(ratios)
    paths.clear()
    _free(device)


def _free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def format_table(results: dict) -> str:
    batch = results["batch_size"]
    lines = [
        f"{results['device']} · torch {results['torch']} · size {results['size']} · batch {batch} · fake-score "
        f"LoRA rank {results.get('fake_rank')} · median of {results.get('repeats', 1)} repeat(s)",
        f"{'workload':<10} {'variant':<22} {'ms/step':>10} {'img/s':>9} {'× ref':>7} {'first s':>8} {'peak MB':>9}",
    ]
    for name, entry in results["workloads"].items():
        ref = entry.get("reference", {})
        ref_ms = ref.get("ms_per_step")
        for variant, values in entry.items():
            if variant in ("numerics",) or not isinstance(values, dict):
                continue
            label = values.get("label", variant)
            if "error" in values:
                lines.append(f"{name:<10} {label:<22} error: {values['error'][:80]}")
                continue
            ms = values["ms_per_step"]
            images = entry.get("images_per_step", WORKLOADS[name].images_per_step(batch))
            ratio = f"{ref_ms / ms:.2f}" if ref_ms else "-"
            if values.get("paired_ratio_median") is not None:
                ratio += f" ({values['paired_ratio_median']:.2f} paired)"
            peak = f"{values['peak_memory_mb']:.0f}" if values.get("peak_memory_mb") is not None else "-"
            lines.append(
                f"{name:<10} {label:<22} {ms:>10.1f} {1000 * images / ms:>9.1f} {ratio:>7} "
                f"{values['first_step_s']:>8.1f} {peak:>9}"
            )
        if "numerics" in entry:
            lines.append(f"{name:<10} numerics: {entry['numerics']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
