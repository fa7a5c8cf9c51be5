"""Distribution matching on builtin:shapes: train 1-step DMD2, SiD and Flash-DMD students (and a 1-step LCM baseline)
with `sdtoolkit distill`, then score the EXPORTED folders, loaded by stock `DiffusionPipeline.from_pretrained`,
against the teacher sampled with 50 DDIM steps.

    python -m benchmarks.dm_shapes --out runs/dm_shapes --device cuda              # all jobs in parallel on a GPU
    python -m benchmarks.dm_shapes --out /tmp/pilot --device cpu --steps 20 --jobs dmd2   # a CPU pilot

Writes `<out>/results.json` (per job: the final evaluation of the exported student, the validation curve logged
during training as (step, generator updates, prompt accuracy), the command) and prints a summary table. Metrics:
`sdtoolkit.eval.Evaluator` prompt accuracy (shape and colour right) over every builtin prompt x `--seeds` images, and
FD-shapes of those images against 2048 reference renders (lower is better).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch


def job_commands(args) -> dict[str, list[str]]:
    """`sdtoolkit distill` argument lists per job; `{out}` in them is each job's run folder."""
    common = ["--batch-size", str(args.batch_size), "--validate-every", str(args.validate_every)]
    common += ["--validation-prompts", "60", "--sample-every", "0", "--checkpoint-every", "100000"]
    common += ["--log-with", "none", "--seed", "0", "--builtin-images", str(args.builtin_images)]
    if args.threads:
        common += ["--num-threads", str(args.threads)]
    g = str(args.guidance)
    dm = ["--num-steps", "1", "--fake-rank", str(args.fake_rank), "--real-guidance-scale", g]
    lr = ["--learning-rate", str(args.lr), "--fake-learning-rate", str(args.lr)]
    ttur = ["--fake-updates-per-generator", str(args.ttur)]
    sid = ["--num-steps", "1", "--fake-rank", str(args.fake_rank), "--real-guidance-scale", g]
    sid += ["--fake-guidance", g, "--fake-train-guidance", g]
    lcm = ["--sample-steps", "1", "--w-min", str(args.guidance - 2), "--w-max", str(args.guidance)]
    return {
        "dmd2": ["dmd2", *dm, *lr, *ttur],
        "dmd2-gan": ["dmd2", *dm, *lr, *ttur, "--gan-weight", "1e-2"],
        "dmd2-ttur2": ["dmd2", *dm, *lr, "--fake-updates-per-generator", "2"],
        "flash-dmd": ["flash-dmd", *dm, *lr, "--fake-updates-per-generator", "1"],
        "sid": ["sid", *sid, "--learning-rate", str(args.sid_lr), "--fake-learning-rate", str(args.sid_lr)],
        "sid-lr1e-4": ["sid", *sid, "--learning-rate", "1e-4", "--fake-learning-rate", "1e-4"],
        "lcm": ["lcm", *lcm],
        "_common": common,
    }


def generator_updates(method: str, step: int, ttur: int) -> int:
    """Generator updates after `step` global steps (DMD2: every `ttur`-th step from step 0; the others: every)."""
    if method == "dmd2-ttur2":
        ttur = 2
    if method.startswith("dmd2"):
        return (step + ttur - 1) // ttur
    return step


def curve(run: Path, method: str, ttur: int) -> list[dict]:
    points = []
    for line in (run / "losses.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if "val/prompt_accuracy" in entry:
            step = entry["step"]
            points.append(
                {
                    "step": step,
                    "generator_updates": generator_updates(method, step, ttur),
                    "prompt_accuracy": entry["val/prompt_accuracy"],
                }
            )
    return points


def evaluate(
    folder: Path,
    steps: int,
    guidance: float,
    device: str,
    seeds: int,
    evaluator,
    fd_splits: int = 0,
    seed: int = 0,
    report: bool = False,
    call_kwargs: dict | None = None,
) -> dict:
    """Scores the exported `folder` through stock diffusers: every builtin prompt x `seeds` images at `steps` and
    `guidance`, with `call_kwargs` added to each call (an export's own call arguments, e.g. its `sigmas`)."""
    from diffusers import DiffusionPipeline

    from sdtoolkit.data import all_prompts
    from sdtoolkit.eval import evaluate_pipeline
    from sdtoolkit.models.loading import absent_components

    # stock diffusers; an SD3 export without T5 is loaded as its card says (text_encoder_3=None, tokenizer_3=None)
    pipe = DiffusionPipeline.from_pretrained(folder, **absent_components(Path(folder))).to(device)
    pipe.set_progress_bar_config(disable=True)
    prompts = [p for p in all_prompts() for _ in range(seeds)]
    started = time.perf_counter()
    scores = evaluate_pipeline(
        pipe,
        prompts,
        steps,
        guidance,
        seed=seed,
        batch_size=120,
        evaluator=evaluator,
        progress=False,
        fd_splits=fd_splits,
        report=report,
        call_kwargs=call_kwargs,
    )
    scores["call_kwargs"] = dict(call_kwargs or {})
    scores["eval_seconds"] = round(time.perf_counter() - started, 1)
    scores["pipeline"] = type(pipe).__name__
    scores["scheduler"] = type(pipe.scheduler).__name__
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dm_shapes", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder (one run folder per job)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    parser.add_argument("--jobs", default="dmd2,flash-dmd,sid,lcm", help="comma-separated jobs")
    parser.add_argument(
        "--steps",
        default="1000,2000",
        help="global training steps per job, in rounds: train to the first count, "
        "export, then resume to the next while --time-limit allows",
    )
    parser.add_argument("--time-limit", type=float, default=0, help="seconds for all training rounds (0: no limit)")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch size")
    parser.add_argument("--lr", type=float, default=1e-4, help="generator and fake-score learning rate")
    parser.add_argument("--sid-lr", type=float, default=3e-5, help="SiD's generator and fake-score learning rate")
    parser.add_argument("--ttur", type=int, default=5, help="DMD2 fake-score updates per generator update")
    parser.add_argument("--guidance", type=float, default=5.0, help="teacher CFG scale (real score, teacher eval)")
    parser.add_argument("--fake-rank", type=int, default=16, help="LoRA rank of the fake score")
    parser.add_argument("--validate-every", type=int, default=200, help="validation (60 prompts) every N steps")
    parser.add_argument("--seeds", type=int, default=4, help="images per builtin prompt in the final evaluation")
    parser.add_argument("--builtin-images", type=int, default=4096, help="builtin:shapes renders used as real data")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per job (0: leave the default)")
    parser.add_argument("--parallel", type=int, default=8, help="jobs trained at the same time")
    parser.add_argument(
        "--teacher-steps", type=int, default=50, help="DDIM steps of the teacher's evaluation (0: skip it)"
    )
    parser.add_argument("--skip-train", action="store_true", help="only evaluate existing run folders")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    commands = job_commands(args)
    common = commands.pop("_common")
    jobs = [j for j in args.jobs.split(",") if j]
    unknown = sorted(set(jobs) - set(commands))
    if unknown:
        parser.error(f"unknown jobs {unknown}; choose from {', '.join(commands)}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    tail = {j: [*common, "--output", str(out / j), "--cache-dir", str(out / f"cache-{j}")] for j in jobs}
    full = {j: [sys.executable, "-m", "sdtoolkit", "distill", *commands[j], *tail[j]] for j in jobs}
    timings: dict[str, float] = {}
    trained: dict[str, int] = {}
    rounds = [int(s) for s in args.steps.split(",")]
    started_all = time.time()
    previous = (0, 0.0)  # (steps trained, seconds) in the last round
    done_steps = 0
    if not args.skip_train:  # build the shared latent + text caches once, then give every job its own copy
        import shutil

        shared = out / "cache-shared"
        prep = [sys.executable, "-m", "sdtoolkit", "distill", "dmd2", *common, "--output", str(out / "_prep")]
        prep += ["--cache-dir", str(shared), "--max-steps", "1", "--no-export", "--validate-every", "-1"]
        with open(out / "_prep.log", "w") as log:
            subprocess.run(prep, stdout=log, stderr=subprocess.STDOUT, env=env, check=True)
        for j in jobs:
            if not (out / f"cache-{j}").exists():
                shutil.copytree(shared, out / f"cache-{j}")
        print(f"caches ready after {time.time() - started_all:.0f} s", flush=True)
    for steps in [] if args.skip_train else rounds:
        if args.time_limit and previous[0]:
            estimate = previous[1] * (steps - done_steps) / previous[0]
            if time.time() - started_all + estimate > args.time_limit:
                print(f"stopping before the {steps}-step round: ~{estimate:.0f} s would pass --time-limit", flush=True)
                break
        begun = time.time()
        commands_now = {}
        for j in jobs:
            method = commands[j][0]
            if j in trained:
                commands_now[j] = [sys.executable, "-m", "sdtoolkit", "distill", method, "--resume", str(out / j)]
            else:
                commands_now[j] = list(full[j])
            commands_now[j] += ["--max-steps", str(steps)]
        pending, running = [j for j in jobs if trained.get(j, 0) >= 0 and trained.get(j, 0) == done_steps], {}
        while pending or running:
            while pending and len(running) < args.parallel:
                job = pending.pop(0)
                log = open(out / f"{job}.log", "a")
                process = subprocess.Popen(commands_now[job], stdout=log, stderr=subprocess.STDOUT, env=env)
                running[job] = (process, time.time())
            overdue = args.time_limit and time.time() - started_all > args.time_limit + 60
            for job, (process, began) in list(running.items()):
                if overdue and process.poll() is None:
                    process.kill()  # the previous round's export stays the job's result
                    process.wait()
                    print(f"{job}: killed at the time limit during the {steps}-step round", flush=True)
                    timings[job] = round(timings.get(job, 0.0) + time.time() - began, 1)
                    del running[job]
                    continue
                if process.poll() is not None:
                    timings[job] = round(timings.get(job, 0.0) + time.time() - began, 1)
                    if process.returncode == 0:
                        trained[job] = steps
                    elif job not in trained:
                        trained[job] = -1
                    print(f"{job}: {steps} steps, exit {process.returncode}, {timings[job]} s so far", flush=True)
                    del running[job]
            time.sleep(2)
        previous = (steps - done_steps, time.time() - begun)
        done_steps = steps

    from sdtoolkit.eval import Evaluator

    evaluator = Evaluator.load(device=args.device)
    results: dict[str, dict] = {}
    card = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"cpu ({platform.machine()})"
    meta = {"date": datetime.date.today().isoformat(), "device": card, "torch": torch.__version__, "args": vars(args)}

    def save() -> None:  # after every evaluation, so a cut-off run still leaves its numbers
        (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")

    teacher = Path(__file__).resolve().parents[1] / "assets" / "shapes-teacher"
    if args.teacher_steps > 0:
        results[f"teacher-{args.teacher_steps}"] = evaluate(
            teacher, args.teacher_steps, args.guidance, args.device, args.seeds, evaluator
        )
    for job in jobs:
        export = out / job / "export"
        entry: dict = {"command": " ".join(full[job][2:]), "train_seconds": timings.get(job)}
        entry["trained_steps"] = trained.get(job)
        if not (export / "export.json").is_file():
            entry["error"] = f"no export in {export}; see {out / (job + '.log')}"
        else:
            spec = json.loads((export / "export.json").read_text())
            entry["eval"] = evaluate(export, 1, spec["guidance_scale"], args.device, args.seeds, evaluator)
            entry["curve"] = curve(out / job, job, args.ttur)
        results[job] = entry
        save()
    save()
    print(f"{'job':<12} {'prompt acc':>10} {'FD-shapes':>10} {'train s':>8}")
    for job, entry in results.items():
        scores = entry.get("eval", entry)
        if "prompt_accuracy" in scores:
            fd = scores.get("fd_shapes", float("nan"))
            print(f"{job:<12} {scores['prompt_accuracy']:>10.3f} {fd:>10.2f} {entry.get('train_seconds') or '-':>8}")
        else:
            print(f"{job:<12} {entry.get('error')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
