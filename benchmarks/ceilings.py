"""Suite "ceilings": what the device reaches at best, measured in the same run as every other suite.

- ``copy``: a large device-to-device copy (``dst.copy_(src)``), GB/s counting read + write.
- ``matmul``: large dense matmuls (the best of a few sizes), TOPS (2*M*N*K per second, in 1e12): fp16 and bf16
  ``torch.matmul`` (cuBLAS) and int8 ``torch._int_mm`` on CUDA; fp32 ``torch.matmul`` on
  CPU (``torch._int_mm`` on CPU runs a slow fallback, about 0.35 GOPS on the 2-core
  development machine, 40x below fp32, so it is no ceiling).

The runner turns these rows into ceilings (:func:`ceilings_from_rows`) and relates every
other row to them (:func:`add_ceiling_ratios`).
"""

from __future__ import annotations

import math

import torch

from .registry import BenchContext, case
from .timing import time_fn

SUITE = "ceilings"
COPY = "copy"

# sizes: a copy far larger than L2 (50-60 MB on H100/H200) / L3, matmuls large enough to saturate
GPU_COPY_ELEMENTS = 1 << 28  # fp32: 1 GiB per buffer
CPU_COPY_ELEMENTS = 1 << 24  # fp32: 64 MiB per buffer
# the best of a few sizes: the peak is reached at different sizes on different machines
GPU_MATMUL_SIZES = (4096, 8192)
CPU_MATMUL_SIZES = (256, 512, 1024)


@case(SUITE, "copy")
def copy_bandwidth(ctx: BenchContext) -> list[dict]:
    """One large fp32 copy; ``gb_per_s`` = 2 * bytes / time."""
    n = GPU_COPY_ELEMENTS if ctx.device.type == "cuda" else CPU_COPY_ELEMENTS
    if ctx.quick and ctx.device.type == "cuda":
        n //= 2
    src = torch.randn(n, device=ctx.device)
    dst = torch.empty_like(src)
    timing = time_fn(lambda: dst.copy_(src), ctx.device, ctx.quick)
    gb = 2 * n * src.element_size() / timing["median_ms"] / 1e6
    return [{"case": "copy", "impl": "torch.copy_", "shape": f"({n},)", "dtype": "fp32", **timing,
             "gb_per_s": gb, "ceiling": COPY}]


def _matmul_row(ctx: BenchContext, dtype: torch.dtype, size: int) -> dict:
    """``x @ w.T`` with row-major x [M, K] and w [N, K]: the layout of a linear layer, cuBLAS's fastest (TN)."""
    ops = 2.0 * size ** 3
    if dtype == torch.int8:
        x = torch.randint(-128, 128, (size, size), device=ctx.device, dtype=torch.int8)
        w = torch.randint(-128, 128, (size, size), device=ctx.device, dtype=torch.int8)
        impl, fn = "torch._int_mm", lambda: torch._int_mm(x, w.T)
    else:
        x = torch.randn(size, size, device=ctx.device).to(dtype)
        w = torch.randn(size, size, device=ctx.device).to(dtype)
        impl, fn = "torch.matmul", lambda: torch.matmul(x, w.T)
    fn()
    timing = time_fn(fn, ctx.device, ctx.quick)
    name = dtype_key(dtype)
    return {"case": "matmul", "impl": impl, "shape": f"{size}x{size}x{size}", "dtype": name, **timing,
            "tops": ops / (timing["median_ms"] * 1e-3) / 1e12, "ceiling": name}


@case(SUITE, "matmul")
def matmul_throughput(ctx: BenchContext) -> list[dict]:
    """Dense square matmuls of a few sizes (the ceiling is the best): fp16, bf16, int8 on CUDA; fp32 on CPU."""
    if ctx.device.type == "cuda":
        return [_matmul_row(ctx, dt, n) for dt in (torch.float16, torch.bfloat16, torch.int8) for n in GPU_MATMUL_SIZES]
    return [_matmul_row(ctx, torch.float32, n) for n in CPU_MATMUL_SIZES]


DTYPE_KEYS = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int8: "int8"}
_ALIASES = {"fp16": "fp16", "float16": "fp16", "half": "fp16", "bf16": "bf16", "bfloat16": "bf16",
            "fp32": "fp32", "float32": "fp32", "float": "fp32", "int8": "int8", "1bit": "int8", "bit": "int8",
            "packed": "int8"}


def dtype_key(dtype: torch.dtype) -> str:
    return DTYPE_KEYS[dtype]


def compute_ceiling_for(dtype: str) -> str | None:
    """Which matmul ceiling bounds a row of ``dtype`` (e.g. ``"int8/1bit"`` -> ``"int8"``).

    A row's dtype may name several operands (``"fp16/1bit"``: fp16 activations, packed
    weights). Real-valued operands set the arithmetic (fp16 > bf16 > fp32), else the
    integer/binary path runs on int8 tensor cores or integer units: ``"int8"``.
    """
    tokens = [_ALIASES.get(t.strip().lower().removeprefix("torch.")) for t in str(dtype).split("/")]
    for key in ("fp16", "bf16", "fp32", "int8"):
        if key in tokens:
            return key
    return None


def ceilings_from_rows(rows: list[dict]) -> dict[str, float]:
    """``{"copy": GB/s, "fp16": TOPS, ...}`` from the rows of this suite (the best row per ceiling)."""
    found: dict[str, float] = {}
    for row in rows:
        name = row.get("ceiling")
        if row.get("suite", SUITE) != SUITE or name is None:
            continue
        value = row["gb_per_s"] if name == COPY else row["tops"]
        if math.isfinite(value) and value > 0:
            found[name] = max(value, found.get(name, 0.0))
    return found


def add_ceiling_ratios(rows: list[dict], ceilings: dict[str, float]) -> None:
    """Add roofline-style ratios to ``rows`` in place (percent, keys the row lacks only).

    - ``pct_of_copy_ceiling``: ``gb_per_s`` over the copy ceiling (and ``<x>_pct_of_copy_ceiling``
      for each other ``<x>_gb_per_s``);
    - ``pct_of_compute_ceiling``: ``tops`` over the matmul ceiling of the row's dtype
      (:func:`compute_ceiling_for`; a row may name it in ``ceiling_dtype``);
    - ``pct_of_ceiling`` and ``bound``: the larger of the two, i.e. how close the row is to
      the roofline, and which roof (``copy`` or the dtype) that is.
    """
    copy = ceilings.get(COPY)
    for row in rows:
        candidates: dict[str, float] = {}
        if copy:
            for key, value in list(row.items()):
                if key.endswith("gb_per_s") and isinstance(value, (int, float)):
                    prefix = key.removesuffix("gb_per_s")
                    pct = 100.0 * value / copy
                    row.setdefault(f"{prefix}pct_of_copy_ceiling", pct)
                    candidates[COPY] = max(pct, candidates.get(COPY, 0.0))
        if isinstance(row.get("tops"), (int, float)):
            key = row.get("ceiling_dtype") or compute_ceiling_for(row.get("dtype", ""))
            if key in ceilings:
                pct = 100.0 * row["tops"] / ceilings[key]
                row.setdefault("pct_of_compute_ceiling", pct)
                candidates[key] = pct
        if candidates and "pct_of_ceiling" not in row:
            bound = max(candidates, key=candidates.get)
            row["pct_of_ceiling"] = candidates[bound]
            row["bound"] = bound
