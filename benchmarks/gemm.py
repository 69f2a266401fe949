"""Benchmark suite "gemm": binary GEMM / GEMV kernels against cuBLAS fp16 and torch._int_mm int8.

Targets (issue 4, measured on H100/H200): W1A1 M=N=K=8192 >= 1.6x faster than torch.matmul on
fp16 and >= 0.8x of torch._int_mm; batch-1 GEMV N=K=16384 >= 8x faster than fp16 torch.matmul.
Every row names the implementation (``impl``) and carries TOPS (2*M*N*K per second) and the
speedup over each baseline measured in the same case.
"""

from __future__ import annotations

import torch

from bnnkit.kernels.binary_gemm import binary_gemm, binary_gemm_reference
from bnnkit.kernels.epilogue import Epilogue
from bnnkit.kernels.pack_signs import pack_signs
from bnnkit.kernels.weight_pack import aligned_words, expand_weight_int8, pack_linear_weight

from .registry import BenchContext, case
from .timing import time_fn


def _row(name: str, shape: tuple[int, ...], impl: str, dtype: str, timing: dict, ops: float) -> dict:
    return {"case": name, "shape": "x".join(map(str, shape)), "impl": impl, "dtype": dtype, **timing,
            "tops": ops / (timing["median_ms"] * 1e-3) / 1e12}


def _with_speedups(rows: list[dict], baselines: tuple[str, ...]) -> list[dict]:
    base = {r["impl"]: r["median_ms"] for r in rows if r["impl"] in baselines}
    for r in rows:
        for name, ms in base.items():
            if r["impl"] != name:
                r[f"speedup_vs_{name}"] = ms / r["median_ms"]
    return rows


def _operands(m: int, n: int, k: int, device: torch.device):
    x = torch.randn(m, k, device=device, dtype=torch.float16)
    w = torch.randn(n, k, device=device)
    words = aligned_words(pack_linear_weight(w))
    return x, w, words


def _w1a1_rows(ctx: BenchContext, name: str, m: int, n: int, k: int) -> list[dict]:
    dev = ctx.device
    x, w, words = _operands(m, n, k, dev)
    a8 = torch.where(x >= 0, 1, -1).to(torch.int8)
    w8 = expand_weight_int8(words, k)
    ops = 2.0 * m * n * k
    shape = (m, n, k)
    ep = Epilogue(scale=torch.rand(n, device=dev), bias=torch.randn(n, device=dev))
    xh, wh = x, w.half()
    rows = [
        _row(name, shape, "cublas_fp16", "fp16", time_fn(lambda: torch.matmul(xh, wh.T), dev, ctx.quick), ops),
        _row(name, shape, "int_mm_int8", "int8", time_fn(lambda: torch._int_mm(a8, w8.T), dev, ctx.quick), ops),
        _row(name, shape, "bnnkit_int8act_packedw_acc", "int8/1bit",
             time_fn(lambda: binary_gemm(a8, words, k, out_kind="acc"), dev, ctx.quick), ops),
        _row(name, shape, "bnnkit_int8act_int8w_acc", "int8",
             time_fn(lambda: binary_gemm(a8, w8, k, out_kind="acc"), dev, ctx.quick), ops),
        _row(name, shape, "bnnkit_fp16act_packedw_fp16out", "fp16/1bit",
             time_fn(lambda: binary_gemm(x, words, k, epilogue=ep, out_dtype=torch.float16), dev, ctx.quick), ops),
    ]
    return _with_speedups(rows, ("cublas_fp16", "int_mm_int8"))


@case("gemm", "w1a1_square", devices=("cuda",))
def w1a1_square(ctx: BenchContext) -> list[dict]:
    """W1A1 GEMM, M = N = K (8192 is the target shape)."""
    rows = []
    for size in ((4096, 8192) if ctx.quick else (2048, 4096, 8192)):
        rows += _w1a1_rows(ctx, "w1a1_square", size, size, size)
    return rows


@case("gemm", "w1a1_gemv", devices=("cuda",))
def w1a1_gemv(ctx: BenchContext) -> list[dict]:
    """Small-M W1A1 on N = K = 16384 (M = 1 is the target): popcount route vs fp16 cuBLAS."""
    dev, n, k = ctx.device, 16384, 16384
    rows = []
    w = torch.randn(n, k, device=dev)
    words = pack_linear_weight(w)
    wh = w.half()
    for m in ((1, 16) if ctx.quick else (1, 2, 4, 8, 16)):
        x = torch.randn(m, k, device=dev, dtype=torch.float16)
        bits = pack_signs(x)
        ops = 2.0 * m * n * k
        part = [
            _row("w1a1_gemv", (m, n, k), "cublas_fp16", "fp16", time_fn(lambda: torch.matmul(x, wh.T), dev, ctx.quick),
                 ops),
            _row("w1a1_gemv", (m, n, k), "bnnkit_packed_in", "1bit",
                 time_fn(lambda: binary_gemm(bits, words, k, out_dtype=torch.float16), dev, ctx.quick), ops),
            _row("w1a1_gemv", (m, n, k), "bnnkit_fp16_in", "fp16/1bit",
                 time_fn(lambda: binary_gemm(x, words, k, out_dtype=torch.float16), dev, ctx.quick), ops),
        ]
        for r in part:
            r["weight_gb_per_s"] = words.numel() * 4 / (r["median_ms"] * 1e-3) / 1e9 if r["impl"] != "cublas_fp16" \
                else wh.numel() * 2 / (r["median_ms"] * 1e-3) / 1e9
        rows += _with_speedups(part, ("cublas_fp16",))
    return rows


@case("gemm", "w1a16", devices=("cuda",))
def w1a16(ctx: BenchContext) -> list[dict]:
    """Binary weights, fp16 activations (the 1/32 models) vs fp16 cuBLAS."""
    dev, rows = ctx.device, []
    for m, n, k in ((4096, 4096, 4096),) if ctx.quick else ((1024, 4096, 4096), (4096, 4096, 4096)):
        x, w, words = _operands(m, n, k, dev)
        wh = w.half()
        ops = 2.0 * m * n * k
        part = [
            _row("w1a16", (m, n, k), "cublas_fp16", "fp16", time_fn(lambda: torch.matmul(x, wh.T), dev, ctx.quick),
                 ops),
            _row("w1a16", (m, n, k), "bnnkit_w1a16", "fp16/1bit",
                 time_fn(lambda: binary_gemm(x, words, k, real_input=True, out_dtype=torch.float16), dev, ctx.quick),
                 ops),
        ]
        rows += _with_speedups(part, ("cublas_fp16",))
    return rows


@case("gemm", "cpu_small", devices=("cpu",))
def cpu_small(ctx: BenchContext) -> list[dict]:
    """CPU fallback (the PyTorch reference) against a float32 matmul, so the suite runs anywhere."""
    dev, m, n, k = ctx.device, 64, 512, 512
    x, w, words = _operands(m, n, k, dev)
    xf, wf = x.float(), torch.where(w >= 0, 1.0, -1.0)
    ops = 2.0 * m * n * k
    rows = [
        _row("cpu_small", (m, n, k), "torch_fp32", "fp32", time_fn(lambda: torch.matmul(xf, wf.T), dev, ctx.quick),
             ops),
        _row("cpu_small", (m, n, k), "bnnkit_reference", "fp32/1bit",
             time_fn(lambda: binary_gemm_reference(xf, words, k), dev, ctx.quick), ops),
    ]
    return _with_speedups(rows, ("torch_fp32",))
