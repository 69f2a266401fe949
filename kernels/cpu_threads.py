"""Threads for the native CPU kernels: as many as ``torch.get_num_threads()``.

The numba kernels are single-threaded and release the GIL (``nogil``); a call is cut into
tasks (ranges of output rows, or of output channels when there are few rows) that run on a
process-wide thread pool, the first on the calling thread. This keeps numba's own threading
layer (and its interplay with torch's OpenMP runtime) out of the picture: the kernels are
safe to call from several Python threads at once, and a forked child gets a fresh pool.
Work too small to repay a thread hand-off (:data:`MIN_TASK_WORDS`) runs on the calling thread.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Callable, Sequence

import torch

MIN_TASK_WORDS = 200_000
"""Fewest XOR + popcount word operations (64-bit) per task: about 50 us on one core, several
times a thread hand-off."""

_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_pid: int | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def thread_count() -> int:
    """The threads a native kernel may use: torch's intra-op thread count."""
    return max(1, torch.get_num_threads())


def _executor(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    """The pool, with at least ``workers`` threads, created in this process (not inherited by fork)."""
    global _pool, _pool_pid, _pool_size
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid() or _pool_size < workers:
            previous = _pool if _pool_pid == os.getpid() else None
            _pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bnnkit-cpu")
            _pool_pid, _pool_size = os.getpid(), workers
            if previous is not None:
                previous.shutdown(wait=False)
        return _pool


def run_tasks(fn: Callable[..., object], tasks: Sequence[tuple]) -> None:
    """``fn(*task)`` for every task, concurrently: the first on this thread, the others on the pool."""
    if not tasks:
        return
    if len(tasks) == 1:
        fn(*tasks[0])
        return
    pool = _executor(len(tasks) - 1)
    futures = [pool.submit(fn, *task) for task in tasks[1:]]
    try:
        fn(*tasks[0])
    finally:
        for f in futures:
            f.result()


def split(total: int, parts: int, align: int = 1) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges covering ``range(total)`` in at most ``parts`` pieces of nearly
    equal size, each starting at a multiple of ``align``; no empty piece."""
    if total <= 0:
        return []
    units = -(-total // align)
    parts = max(1, min(parts, units))
    bounds = [min(total, (units * i // parts) * align) for i in range(parts + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def split_rows(rows: int, words_per_row: float) -> list[tuple[int, int]]:
    """Row ranges for work of ``words_per_row`` word operations per row (e.g. packing)."""
    parts = max(1, min(thread_count(), int(rows * words_per_row) // MIN_TASK_WORDS))
    return split(rows, parts)


def plan(rows: int, channels: int, words_per_output: int, row_align: int = 4,
         channel_align: int = 32) -> list[tuple[int, int, int, int]]:
    """Tasks ``(m0, m1, n0, n1)`` for ``rows`` x ``channels`` outputs of ``words_per_output``
    popcount words each: split by rows when there are enough of them, else by channels
    (multiples of ``channel_align``, so packed outputs stay whole words)."""
    if rows <= 0 or channels <= 0:
        return []
    work = rows * channels * max(1, words_per_output)
    parts = max(1, min(thread_count(), work // MIN_TASK_WORDS))
    if parts == 1:
        return [(0, rows, 0, channels)]
    if rows >= parts * row_align:
        return [(a, b, 0, channels) for a, b in split(rows, parts, row_align)]
    return [(0, rows, a, b) for a, b in split(channels, parts, channel_align)]
