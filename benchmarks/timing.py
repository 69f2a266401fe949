"""Timing: median and 20th/80th percentiles in milliseconds, on GPU or CPU.

Every timing dict has ``median_ms``, ``p20_ms``, ``p80_ms`` and ``timer``, the method used
(``do_bench``, ``cuda_graph``, ``cpu`` or ``cpu_interleaved``), so rows timed differently are
never compared unknowingly.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Callable

import torch

# A CPU sample shorter than this is dominated by timer resolution and Python call
# overhead; such functions are called several times per sample and the mean is taken.
MIN_CPU_SAMPLE_MS = 0.5


def quantiles(ms: list[float]) -> dict[str, float]:
    """``median_ms``, ``p20_ms`` and ``p80_ms`` of samples in milliseconds."""
    ms = sorted(ms)
    q = statistics.quantiles(ms, n=10, method="inclusive") if len(ms) > 1 else [ms[0]] * 9
    return {"median_ms": statistics.median(ms), "p20_ms": q[1], "p80_ms": q[7]}


def time_cpu(fn: Callable[[], object], warmup: int = 3, reps: int = 20) -> dict:
    """Run ``fn`` ``warmup`` times, then take ``reps`` samples.

    A sample is one call, or the mean of several back-to-back calls when one call takes
    less than :data:`MIN_CPU_SAMPLE_MS` (the count is fixed from the last warm-up call).
    """
    if warmup < 1 or reps < 1:
        raise ValueError(f"time_cpu needs warmup >= 1 and reps >= 1, got warmup={warmup}, reps={reps}")
    for _ in range(warmup - 1):
        fn()
    t0 = time.perf_counter()
    fn()
    one_ms = (time.perf_counter() - t0) * 1e3
    calls = max(1, math.ceil(MIN_CPU_SAMPLE_MS / one_ms)) if one_ms > 0 else 1000
    ms = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        ms.append((time.perf_counter() - t0) * 1e3 / calls)
    return {**quantiles(ms), "timer": "cpu"}


def time_interleaved(fns: dict[str, Callable[[], object]], reps: int = 20, warmup: int = 2
                     ) -> tuple[dict[str, dict], dict[str, list[float]]]:
    """Time several CPU functions side by side: ``reps`` rounds, each taking one sample of every
    function, in an order that rotates from round to round, so that a change in the machine's
    load (a shared machine) falls on all of them alike. Returns ``({name: timing dict}, {name:
    samples in ms, in round order})``; the samples of one round are paired, so ratios can be
    taken round by round (:func:`ratio_quantiles`).

    A sample is one call, or the mean of several when one call takes less than
    :data:`MIN_CPU_SAMPLE_MS` (the count is fixed per function from its last warm-up call).
    """
    if warmup < 1 or reps < 1 or not fns:
        raise ValueError(f"time_interleaved needs functions, warmup >= 1 and reps >= 1, got {len(fns)} functions, "
                         f"warmup={warmup}, reps={reps}")
    names = list(fns)
    calls = {}
    for name in names:
        fn = fns[name]
        for _ in range(warmup - 1):
            fn()
        t0 = time.perf_counter()
        fn()
        one_ms = (time.perf_counter() - t0) * 1e3
        calls[name] = max(1, math.ceil(MIN_CPU_SAMPLE_MS / one_ms)) if one_ms > 0 else 1000
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn = fns[name]
            t0 = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            samples[name].append((time.perf_counter() - t0) * 1e3 / calls[name])
    return {name: {**quantiles(ms), "timer": "cpu_interleaved"} for name, ms in samples.items()}, samples


def ratio_quantiles(numerator: list[float], denominator: list[float]) -> dict[str, float]:
    """Median and 20th / 80th percentiles of the paired ratios ``numerator[i] / denominator[i]``."""
    q = quantiles([a / b for a, b in zip(numerator, denominator)])
    return {"median": q["median_ms"], "p20": q["p20_ms"], "p80": q["p80_ms"]}


def time_cuda(fn: Callable[[], object], warmup_ms: float = 25, rep_ms: float = 100) -> dict:
    """``triton.testing.do_bench`` (L2 flushed between runs): median and p20/p80 in ms."""
    import triton.testing

    p20, median, p80 = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.2, 0.5, 0.8])
    return {"median_ms": median, "p20_ms": p20, "p80_ms": p80, "timer": "do_bench"}


def time_cuda_graph(fn: Callable[[], object], rep_ms: float = 100) -> dict:
    """``triton.testing.do_bench_cudagraph``: ``fn`` replayed from a CUDA graph, no launch overhead.

    For work so small that kernel launches would dominate (batch-1 layers, small models),
    which is how such work is deployed. ``fn`` must be capturable (no host synchronization,
    no allocation that changes between calls). The L2 cache is not flushed.
    """
    import triton.testing

    p20, median, p80 = triton.testing.do_bench_cudagraph(fn, rep=rep_ms, quantiles=[0.2, 0.5, 0.8])
    return {"median_ms": median, "p20_ms": p20, "p80_ms": p80, "timer": "cuda_graph"}


def time_fn(fn: Callable[[], object], device: torch.device, quick: bool = False, cuda_graph: bool = False) -> dict:
    """Time ``fn`` on ``device`` with the right method; ``quick`` uses fewer repetitions.

    ``cuda_graph=True`` replays ``fn`` from a CUDA graph on CUDA devices (see
    :func:`time_cuda_graph`); when ``fn`` cannot be captured it falls back to ``do_bench``
    with a warning, and the returned ``timer`` says which method ran.
    """
    device = torch.device(device)
    if device.type == "cuda":
        if cuda_graph:
            try:
                return time_cuda_graph(fn, rep_ms=30 if quick else 100)
            except RuntimeError as e:  # capture fails for host syncs and some allocator patterns
                warnings.warn(f"CUDA graph capture failed ({e}); timing with do_bench instead", stacklevel=2)
        return time_cuda(fn, warmup_ms=10 if quick else 25, rep_ms=30 if quick else 100)
    return time_cpu(fn, warmup=2 if quick else 3, reps=5 if quick else 20)
