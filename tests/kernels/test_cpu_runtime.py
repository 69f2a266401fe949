"""What runs around the native CPU kernels: the prepared-weight cache (derived once, rebuilt
after any in-place write), the task split over torch's threads, a forked child, and the
vector popcount the kernels compile to."""

import multiprocessing
import os
import platform
import re

import numpy as np
import pytest
import torch

numba = pytest.importorskip("numba")
from hypothesis import given, settings, strategies as st  # noqa: E402

from bnnkit.kernels import cpu_kernels as nk  # noqa: E402
from bnnkit.kernels import cpu_threads  # noqa: E402
from bnnkit.kernels.cpu_binary_conv import cpu_binary_conv2d  # noqa: E402
from bnnkit.kernels.cpu_prepared import PreparedWeights  # noqa: E402
from bnnkit.kernels.weight_pack import pack_conv_weight  # noqa: E402
from cpu_testing import task_split  # noqa: E402


def test_prepared_form_is_derived_once_and_again_after_every_in_place_write():
    cache, builds = PreparedWeights(), []

    def build(t):
        builds.append(t.clone())
        return t.sum().item()

    w = torch.arange(6, dtype=torch.int32)
    assert cache.get(w, "a", build) == 15 and cache.get(w, "a", build) == 15 and len(builds) == 1
    assert cache.get(w, "b", build) == 15 and len(builds) == 2  # another key: another form
    w.copy_(torch.ones(6, dtype=torch.int32))  # what load_state_dict and pack do
    assert cache.get(w, "b", build) == 6 and len(builds) == 3
    module = torch.nn.Module()
    module.register_buffer("w", w)
    module.load_state_dict({"w": torch.full((6,), 2, dtype=torch.int32)})
    assert cache.get(w, "b", build) == 12
    w[0] = 10  # any in-place write
    assert cache.get(w, "b", build) == 20
    twin = w.clone()  # equal contents, another tensor: its own entry
    assert cache.get(twin, "b", build) == 20 and len(builds) == 6
    del twin
    assert len(cache) == 1  # a freed tensor takes its entry with it
    with torch.inference_mode():
        frozen = torch.ones(3, dtype=torch.int32)
    n = len(builds)
    assert cache.get(frozen, "a", build) == 3 and cache.get(frozen, "a", build) == 3
    assert len(builds) == n + 2  # no version counter: derived on every call


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(total=st.integers(0, 500), parts=st.integers(1, 9), align=st.sampled_from([1, 4, 32]))
def test_split_covers_the_range_once_in_aligned_pieces(total, parts, align):
    pieces = cpu_threads.split(total, parts, align)
    assert [i for a, b in pieces for i in range(a, b)] == list(range(total))
    assert len(pieces) <= parts and all(a % align == 0 and b > a for a, b in pieces)


@pytest.mark.parametrize("rows,channels", [(1, 4096), (3, 70), (64, 4096), (1000, 16), (0, 5)])
def test_plan_covers_every_output_once(rows, channels):
    with task_split(True, threads=4):
        tasks = cpu_threads.plan(rows, channels, 64)
    covered = sorted((m, n) for m0, m1, n0, n1 in tasks for m in range(m0, m1) for n in range(n0, n1))
    assert covered == [(m, n) for m in range(rows) for n in range(channels)]
    assert all(n0 % 32 == 0 for _, _, n0, _ in tasks)  # packed outputs stay whole words
    assert len(cpu_threads.plan(rows, channels, 1)) == min(1, rows)  # small work: one task


def test_task_errors_reach_the_caller():
    def fail(i):
        if i == 2:
            raise ValueError("task 2")

    with pytest.raises(ValueError, match="task 2"):
        cpu_threads.run_tasks(fail, [(i,) for i in range(4)])


def _conv_in_child(queue):
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(2, 6, 6, 24, generator=g), torch.randn(8, 24, 3, 3, generator=g)
    with task_split(True):
        queue.put(cpu_binary_conv2d(x, pack_conv_weight(w), 24, padding=1, out_kind="acc").tolist())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_runs_the_kernels_on_its_own_threads():
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(2, 6, 6, 24, generator=g), torch.randn(8, 24, 3, 3, generator=g)
    with task_split(True):  # the parent's pool exists before the fork
        want = cpu_binary_conv2d(x, pack_conv_weight(w), 24, padding=1, out_kind="acc").tolist()
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_conv_in_child, args=(queue,))
    child.start()
    got = queue.get(timeout=120)
    child.join(timeout=60)
    assert child.exitcode == 0 and got == want


def _host_popcount_instruction() -> str | None:
    """The vector popcount the host's ISA gives LLVM, or None where there is no expectation."""
    if numba.config.CPU_NAME not in (None, "", "host"):
        return None
    machine = platform.machine().lower()
    if machine in ("arm64", "aarch64"):
        return r"\bcnt\b"
    if machine not in ("x86_64", "amd64"):
        return None
    from llvmlite import binding as llvm

    features = llvm.get_host_cpu_features()
    if features.get("avx512vpopcntdq") and features.get("avx512vl"):
        return r"vpopcntq"
    if features.get("avx2"):
        return r"vpshufb\s+%ymm"
    return r"pshufb|popcnt"


def test_the_xor_popcount_loop_becomes_vector_popcount():
    """The kernels' vector step, compiled for this process's target (not cached, so the
    assembly can be read): vpopcntq with AVX-512 VPOPCNTDQ, the AVX2 nibble lookup (vpshufb
    on ymm), NEON cnt; under NUMBA_CPU_NAME=generic no 256-bit registers at all."""

    @numba.njit(cache=False)
    def step(acc, w, a):
        for i in range(0, w.shape[0], 4):
            nk.xor_popcount_add64(acc.ctypes.data + 8 * i, w.ctypes.data + 8 * i, a)

    acc, w = np.zeros(8, np.uint64), np.arange(8, dtype=np.uint64) * np.uint64(0x0123456789ABCDEF)
    step(acc, w, np.uint64(0xFF00FF00FF00FF00))
    assert acc.tolist() == [bin(int(v) ^ 0xFF00FF00FF00FF00).count("1") for v in w.tolist()]
    asm = step.inspect_asm(step.signatures[0])
    if numba.config.CPU_NAME == "generic" and platform.machine().lower() in ("x86_64", "amd64"):
        assert "%ymm" not in asm and "%zmm" not in asm
        return
    expected = _host_popcount_instruction()
    if expected is None:
        pytest.skip(f"no expectation for {platform.machine()} / NUMBA_CPU_NAME={numba.config.CPU_NAME}")
    assert re.search(expected, asm), f"no {expected} in the compiled step"
