"""Timing and peak-memory measurement that is honest on both CPU and CUDA (synchronised, warm-up excluded)."""

from __future__ import annotations

import gc
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Measurement:
    seconds_per_step: float
    first_step_seconds: float
    peak_memory_mb: float | None
    steps: int

    def as_dict(self) -> dict:
        return {
            "ms_per_step": 1000 * self.seconds_per_step,
            "first_step_s": self.first_step_seconds,
            "peak_memory_mb": self.peak_memory_mb,
            "steps": self.steps,
        }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(step: Callable[[], object], device: torch.device, warmup: int = 2, steps: int = 5) -> Measurement:
    """Runs `step` once (timed separately: includes compilation), `warmup - 1` more untimed, then `steps` timed.

    Peak memory: CUDA's max_memory_allocated over the timed steps; on CPU the process's max RSS (coarse: it only
    grows, so compare CPU figures from separate processes or read them as upper bounds)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    _sync(device)
    start = time.perf_counter()
    step()
    _sync(device)
    first = time.perf_counter() - start
    for _ in range(max(0, warmup - 1)):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    elapsed = (time.perf_counter() - start) / steps
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return Measurement(elapsed, first, peak, steps)
