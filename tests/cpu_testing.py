"""Helpers of the native CPU kernel tests: exercising the thread split on small shapes, inputs
whose packed words carry garbage past the valid bits, and bitwise comparisons."""

from __future__ import annotations

import contextlib
import os

import torch

from bnnkit.kernels import cpu_threads
from bnnkit.kernels.bitpack import pack_signs_reference

EXAMPLES = int(os.environ.get("BNNKIT_CPU_EXAMPLES", "25"))
"""Hypothesis examples per property test (the generic-ISA subprocess run takes fewer)."""


@contextlib.contextmanager
def task_split(split: bool, threads: int = 3):
    """With ``split``, every call is cut into ``threads`` tasks however small (the thread pool
    and the range arithmetic run on the tests' small shapes); else one task on this thread."""
    old_threads, old_min = torch.get_num_threads(), cpu_threads.MIN_TASK_WORDS
    if split:
        torch.set_num_threads(threads)
        cpu_threads.MIN_TASK_WORDS = 1
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        cpu_threads.MIN_TASK_WORDS = old_min


def dirty_packed(x: torch.Tensor, seed: int) -> torch.Tensor:
    """``pack_signs_reference(x)`` with random garbage in the padding bits of the last word
    (a producer may leave them set; the kernels must ignore them)."""
    words = pack_signs_reference(x)
    k = x.shape[-1]
    if k % 32:
        g = torch.Generator().manual_seed(seed)
        junk = torch.randint(-2**31, 2**31 - 1, words[..., -1].shape, generator=g, dtype=torch.int32)
        valid = (1 << (k % 32)) - 1
        words[..., -1] = (words[..., -1] & valid) | (junk & ~valid)
    return words


def assert_bitwise(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """Same shape, dtype and values (float outputs too: NaN equals NaN, -0.0 equals 0.0)."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    same = (got == want) | (got.isnan() & want.isnan()) if got.is_floating_point() else got == want
    if not bool(same.all()):
        bad = (~same).nonzero()
        idx = [tuple(i.tolist()) for i in bad[:4]]
        pairs = ", ".join(f"{i}: {got[i].item()!r} vs {want[i].item()!r}" for i in idx)
        raise AssertionError(f"{what}: {len(bad)} of {want.numel()} elements differ (got vs want) {pairs}")
