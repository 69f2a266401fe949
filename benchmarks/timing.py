"""Timing: median and 20th/80th percentiles in milliseconds, on GPU or CPU."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def _quantiles(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    q = statistics.quantiles(ms, n=10, method="inclusive") if len(ms) > 1 else [ms[0]] * 9
    return {"median_ms": statistics.median(ms), "p20_ms": q[1], "p80_ms": q[7]}


def time_cpu(fn: Callable[[], object], warmup: int = 3, reps: int = 20) -> dict[str, float]:
    """Run ``fn`` ``warmup`` times, then time ``reps`` runs one by one."""
    for _ in range(warmup):
        fn()
    ms = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t0) * 1e3)
    return _quantiles(ms)


def time_cuda(fn: Callable[[], object], warmup_ms: float = 25, rep_ms: float = 100) -> dict[str, float]:
    """``triton.testing.do_bench`` (L2 flushed between runs): median and p20/p80 in ms."""
    import triton.testing

    p20, median, p80 = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.2, 0.5, 0.8])
    return {"median_ms": median, "p20_ms": p20, "p80_ms": p80}


def time_fn(fn: Callable[[], object], device: torch.device, quick: bool = False) -> dict[str, float]:
    """Time ``fn`` on ``device`` with the right method; ``quick`` uses fewer repetitions."""
    if device.type == "cuda":
        return time_cuda(fn, warmup_ms=10 if quick else 25, rep_ms=30 if quick else 100)
    return time_cpu(fn, warmup=1 if quick else 3, reps=5 if quick else 20)
