"""Binary GEMM for linear layers: ``out = epilogue(x @ sign(W)^T)`` with packed weights.

Operands (see :mod:`bnnkit.kernels.binary_operands`): ``x`` is ``(..., K)`` real (binarized
on load, or used as is with ``real_input=True`` for W1A16), ``(..., K)`` int8 ±1, or
``(..., ceil(K/32))`` int32 packed bits; ``weight`` is ``(N, ceil(K/32))`` int32 packed
along K (:func:`bnnkit.kernels.weight_pack.pack_linear_weight`) or ``(N, K)`` int8 ±1.

Two routes:

- ``mma`` (any M): int8 ±1 tiles on the tensor cores, ``tl.dot`` int8 x int8 -> int32, exact
  (on sm_90 ``wgmma``/IGMMA, on sm_80 ``mma.sync``/IMMA). Packed operands are unpacked in
  registers; K-tail elements are 0 in the activation tile. On sm_90 with 16-byte aligned rows
  the tiles are loaded with TMA tensor descriptors. W1A16 uses the same kernel with real
  activations and ±1 weights in the activation dtype (fp16/bf16 tensor cores with fp32
  accumulation; fp32 as 3xTF32, about fp32 accuracy).
- ``gemv`` (W1A1, M <= 16, packed weights): XOR + popcount on packed words, memory-bound on
  the weights (16x fewer bytes than fp16): ``acc = K - 2 * popcount(a ^ w)`` over valid bits.
  Real activations are binarized and packed in registers as they are loaded.

Either route is one kernel launch (:class:`~bnnkit.kernels.launch.TunedKernel`), under the
input's device; with a prepared :class:`~bnnkit.kernels.epilogue.KernelStage` (``stage=``)
a call does no tensor work besides allocating its output.

The integer accumulator is exact (``|acc| <= K < 2**24``); the epilogue is
:mod:`bnnkit.kernels.epilogue`. :func:`binary_gemm_reference` is the PyTorch reference and
CPU fallback with the same signature.
"""

from __future__ import annotations

import torch
from .triton_compat import tl, triton

from .binarize import binarize_reference
from .binary_operands import (MAX_K, dot_pm1, gemm_activation_tile, gemm_weight_tile, grouped_tile, input_kind)
from .bitpack import num_words, unpack_signs_reference
from .bits import interpreting, nonnegative, pack_rows, popcount32
from .epilogue import (Epilogue, KernelStage, SignThreshold, check_output_request, finish_reference, output_dtype,
                       output_kind, output_shape, output_stage, store_epilogue)
from .kinds import _IN_PACKED, _IN_REAL, InputKind, OutputKind
from .launch import (TunedKernel, check_residual, is_hopper_or_newer, next_power_of_2, prepare_out, prune_reading,
                     tma_compatible)

GEMV_MAX_M = 16
"""Rows up to which W1A1 with packed weights takes the popcount route."""

GEMV_BINARIZE_TILE = 4096
"""Most activation values a popcount program binarizes per step (BM x BKW x 32), a register budget."""


@triton.jit
def _binary_gemm_mma_kernel(
    a_ptr, w_ptr, out_ptr, res_ptr, params_ptr, thr_ptr,
    M, N, K, M_BUCKET, stride_am, stride_wn, stride_om, stride_rm,
    IN_KIND: tl.constexpr, W_PACKED: tl.constexpr, OUT_KIND: tl.constexpr, SIGN_FROM_THRESHOLD: tl.constexpr,
    RELU: tl.constexpr, HAS_RESIDUAL: tl.constexpr, USE_DESC: tl.constexpr, EVEN_K: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr, INTERPRET: tl.constexpr,
):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BM, BN, GROUP_M)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)

    if IN_KIND == _IN_REAL:
        DOT_DTYPE: tl.constexpr = a_ptr.dtype.element_ty
        acc = tl.zeros((BM, BN), dtype=tl.float32)
    else:
        DOT_DTYPE: tl.constexpr = tl.int8
        acc = tl.zeros((BM, BN), dtype=tl.int32)

    if USE_DESC:
        if IN_KIND == _IN_PACKED:
            a_src = tl.make_tensor_descriptor(a_ptr, [M, (K + 31) // 32], [stride_am, 1], [BM, BK // 32])
        else:
            a_src = tl.make_tensor_descriptor(a_ptr, [M, K], [stride_am, 1], [BM, BK])
        if W_PACKED:
            w_src = tl.make_tensor_descriptor(w_ptr, [N, (K + 31) // 32], [stride_wn, 1], [BN, BK // 32])
        else:
            w_src = tl.make_tensor_descriptor(w_ptr, [N, K], [stride_wn, 1], [BN, BK])
        a_rows = a_ptr
        w_cols = w_ptr
    else:
        # rows past M / N read row 0 (in range); their results are never stored
        a_rows = a_ptr + tl.where(offs_m < M, offs_m, 0)[:, None].to(tl.int64) * stride_am  # [BM, 1]
        w_cols = w_ptr + tl.where(offs_n < N, offs_n, 0)[None, :].to(tl.int64) * stride_wn  # [1, BN]
        a_src = a_ptr
        w_src = w_ptr

    # one loop (no separate tail tile: duplicating the body costs registers); with EVEN_K the
    # K masks vanish at compile time
    for k0 in range(0, K, BK):
        a = gemm_activation_tile(a_src, a_rows, pid_m * BM, k0, K, IN_KIND, USE_DESC, not EVEN_K, BM, BK)
        w = gemm_weight_tile(w_src, w_cols, pid_n * BN, k0, K, W_PACKED, USE_DESC, not EVEN_K, BN, BK, DOT_DTYPE)
        acc = dot_pm1(a, w, acc, IN_KIND == _IN_REAL, INTERPRET)

    store_epilogue(acc, offs_m, pid_n * BN, M, N, out_ptr, stride_om, res_ptr, stride_rm, params_ptr, thr_ptr,
                   OUT_KIND, SIGN_FROM_THRESHOLD, RELU, HAS_RESIDUAL, BN)


@triton.jit
def _binary_gemv_popcount_kernel(
    a_ptr, w_ptr, out_ptr, res_ptr, params_ptr, thr_ptr,
    M, N, K, stride_am, stride_wn, stride_om, stride_rm,
    IN_KIND: tl.constexpr, OUT_KIND: tl.constexpr, SIGN_FROM_THRESHOLD: tl.constexpr, RELU: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BKW: tl.constexpr, INTERPRET: tl.constexpr,
):
    """``IN_KIND``: packed words, or real values binarized and packed in registers on load."""
    offs_m = tl.arange(0, BM)
    offs_n = tl.program_id(0) * BN + tl.arange(0, BN)
    m_ok = offs_m < M
    kw = (K + 31) // 32
    mismatches = tl.zeros((BM, BN), dtype=tl.int32)
    for w0 in range(0, kw, BKW):
        offs_w = w0 + tl.arange(0, BKW)
        w_ok = offs_w < kw
        # bits of the last word past K are ignored even if an input left them set
        rest = tl.minimum(tl.maximum(K - offs_w * 32, 0), 31)
        valid = tl.where(K - offs_w * 32 >= 32, -1, (1 << rest) - 1)
        if IN_KIND == _IN_PACKED:
            a = tl.load(a_ptr + offs_m[:, None] * stride_am + offs_w[None, :], mask=m_ok[:, None] & w_ok[None, :],
                        other=0)  # [BM, BKW]
        else:
            offs_k = w0 * 32 + tl.arange(0, BKW * 32)
            x = tl.load(a_ptr + offs_m[:, None] * stride_am + offs_k[None, :],
                        mask=m_ok[:, None] & (offs_k < K)[None, :], other=0)  # [BM, BKW * 32]
            a = pack_rows(nonnegative(x).to(tl.int32), BM, BKW)  # [BM, BKW]
        w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_w[None, :],
                    mask=(offs_n < N)[:, None] & w_ok[None, :], other=0)  # [BN, BKW]
        diff = (a[:, None, :] ^ w[None, :, :]) & valid[None, None, :]  # [BM, BN, BKW]
        mismatches += tl.sum(popcount32(diff, INTERPRET), axis=2)
    acc = K - 2 * mismatches
    store_epilogue(acc, offs_m, tl.program_id(0) * BN, M, N, out_ptr, stride_om, res_ptr, stride_rm, params_ptr,
                   thr_ptr, OUT_KIND, SIGN_FROM_THRESHOLD, RELU, HAS_RESIDUAL, BN)


# ----------------------------------------------------------------------------- compile signatures


def mma_signature(a_type: str, w_type: str, out_type: str, res_type: str = "*fp32") -> dict[str, str]:
    """Triton signature of :func:`_binary_gemm_mma_kernel` for :mod:`.compile_check`
    (types such as ``"*i8"``, ``"*i32"``, ``"*fp16"``); every constexpr is listed as such."""
    sig = {"a_ptr": a_type, "w_ptr": w_type, "out_ptr": out_type, "res_ptr": res_type, "params_ptr": "*fp32",
           "thr_ptr": "*i32"}
    sig.update(dict.fromkeys(["M", "N", "K", "M_BUCKET", "stride_am", "stride_wn", "stride_om", "stride_rm"], "i32"))
    sig.update(dict.fromkeys(["IN_KIND", "W_PACKED", "OUT_KIND", "SIGN_FROM_THRESHOLD", "RELU", "HAS_RESIDUAL",
                              "USE_DESC", "EVEN_K", "BM", "BN", "BK", "GROUP_M", "INTERPRET"], "constexpr"))
    return sig


def gemv_signature(out_type: str, res_type: str = "*fp32", a_type: str = "*i32") -> dict[str, str]:
    """Triton signature of :func:`_binary_gemv_popcount_kernel` (see :func:`mma_signature`)."""
    sig = {"a_ptr": a_type, "w_ptr": "*i32", "out_ptr": out_type, "res_ptr": res_type, "params_ptr": "*fp32",
           "thr_ptr": "*i32"}
    sig.update(dict.fromkeys(["M", "N", "K", "stride_am", "stride_wn", "stride_om", "stride_rm"], "i32"))
    sig.update(dict.fromkeys(["IN_KIND", "OUT_KIND", "SIGN_FROM_THRESHOLD", "RELU", "HAS_RESIDUAL", "BM", "BN", "BKW",
                              "INTERPRET"], "constexpr"))
    return sig


# ----------------------------------------------------------------------------- configs

def _mma_config(bm: int, bn: int, bk: int, warps: int, stages: int, group_m: int = 8) -> triton.Config:
    return triton.Config({"BM": bm, "BN": bn, "BK": bk, "GROUP_M": group_m}, num_warps=warps, num_stages=stages)


# Tile configs per (real activations?, TMA descriptors?) and architecture. Each was compiled
# for its architecture with every activation kind, weight format and epilogue without a
# register spill (tests/kernels/test_kernel_compile.py, BNNKIT_COMPILE_SWEEP=1), which is how
# they were chosen:
# - TMA descriptors (sm_90+): BK = 128 (a TMA box row needs >= 16 bytes, i.e. 4 packed words);
#   M tiles of 64/128 with 4/8 warps become wgmma (IGMMA / HGMMA). 128x256 tiles only without
#   a float epilogue or residual (see _prune_mma).
# - pointer loads (sm_80, or rows not 16-byte aligned on sm_90): BK <= 64, smaller tiles on
#   sm_90, where wgmma keeps the whole accumulator in registers.
MMA_CONFIGS_SM90 = {
    (False, True): [_mma_config(128, 128, 128, 8, 4), _mma_config(128, 256, 128, 8, 3),
                    _mma_config(128, 64, 128, 4, 4), _mma_config(64, 64, 128, 4, 4)],
    (True, True): [_mma_config(128, 128, 128, 8, 3), _mma_config(128, 64, 128, 4, 3), _mma_config(64, 64, 128, 4, 3)],
    (False, False): [_mma_config(128, 64, 32, 4, 4), _mma_config(64, 64, 32, 4, 4)],
    (True, False): [_mma_config(128, 64, 32, 4, 4), _mma_config(64, 64, 32, 4, 4)],
}
MMA_CONFIGS_SM80 = {
    (False, False): [_mma_config(128, 128, 32, 8, 4), _mma_config(64, 128, 32, 4, 4), _mma_config(64, 64, 64, 4, 4),
                     _mma_config(64, 64, 32, 4, 4)],
    (True, False): [_mma_config(128, 128, 32, 8, 4), _mma_config(64, 128, 32, 4, 4), _mma_config(64, 64, 32, 4, 4)],
}


def mma_config_lists(arch: int) -> dict[tuple[bool, bool], list[triton.Config]]:
    """``{(real activations?, TMA descriptors?): configs}`` used on compute capability ``arch`` (80, 90, ...)."""
    return MMA_CONFIGS_SM90 if arch >= 90 else MMA_CONFIGS_SM80


GEMV_CONFIGS = [  # (BN, BKW, warps); BM is the padded row count
    triton.Config({"BN": 64, "BKW": 32}, num_warps=4, num_stages=3),
    triton.Config({"BN": 32, "BKW": 64}, num_warps=4, num_stages=3),
    triton.Config({"BN": 128, "BKW": 16}, num_warps=4, num_stages=3),
    triton.Config({"BN": 32, "BKW": 32}, num_warps=4, num_stages=4),
    triton.Config({"BN": 32, "BKW": 16}, num_warps=2, num_stages=4),
    triton.Config({"BN": 32, "BKW": 8}, num_warps=4, num_stages=4),  # binarize-on-load with 16 rows
]


@prune_reading("M_BUCKET", "OUT_KIND", "HAS_RESIDUAL")
def _prune_mma(configs, args):
    heavy_epilogue = args["OUT_KIND"] == OutputKind.FLOAT.code or args["HAS_RESIDUAL"]
    fitting = [c for c in configs if c.kwargs["BM"] <= max(64, args["M_BUCKET"])
               and not (heavy_epilogue and c.kwargs["BM"] * c.kwargs["BN"] > 128 * 128)]
    return fitting or configs[-1:]


@prune_reading("BM", "IN_KIND")
def _prune_gemv(configs, args):
    bm = args["BM"]
    binarize = args["IN_KIND"] != InputKind.PACKED.code
    fitting = [c for c in configs if bm * c.kwargs["BN"] * c.kwargs["BKW"] <= 8192
               and not (binarize and bm * c.kwargs["BKW"] * 32 > GEMV_BINARIZE_TILE)]
    return fitting or configs[-1:]


def _interpret_mma(args) -> dict:
    return {"BM": 32, "BN": 32, "BK": 128 if args["USE_DESC"] else 64, "GROUP_M": 2}


# (sm_90+?, real activations?, TMA descriptors?) -> the kernel with that config list
_MMA = {(hopper, *key): TunedKernel(
            _binary_gemm_mma_kernel, configs,
            key=["M_BUCKET", "N", "K", "IN_KIND", "W_PACKED", "OUT_KIND", "SIGN_FROM_THRESHOLD", "HAS_RESIDUAL",
                 "USE_DESC"],
            prune=_prune_mma, interpret_config=_interpret_mma,
            derived={"EVEN_K": lambda args: args["K"] % args["BK"] == 0})
        for hopper, lists in ((True, MMA_CONFIGS_SM90), (False, MMA_CONFIGS_SM80)) for key, configs in lists.items()}
_GEMV = TunedKernel(_binary_gemv_popcount_kernel, GEMV_CONFIGS,
                    key=["BM", "N", "K", "IN_KIND", "OUT_KIND", "SIGN_FROM_THRESHOLD", "HAS_RESIDUAL"],
                    prune=_prune_gemv, interpret_config=lambda args: {"BN": 32, "BKW": 4})


# ----------------------------------------------------------------------------- reference


def _check_inputs(x: torch.Tensor, weight: torch.Tensor, k: int, real_input: bool) -> InputKind:
    if not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise ValueError(f"k (the reduction length) must be an int in [1, {MAX_K}], got {k!r}")
    kind = input_kind(x, real_input)
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D: (N, ceil(K/32)) int32 packed or (N, K) int8, got shape "
                         f"{tuple(weight.shape)}")
    if weight.dtype == torch.int32:
        if weight.shape[1] != num_words(k):
            raise ValueError(f"packed weight has {weight.shape[1]} words per row; K={k} needs {num_words(k)}")
    elif weight.dtype == torch.int8:
        if weight.shape[1] != k:
            raise ValueError(f"int8 weight has {weight.shape[1]} columns; expected K={k}")
    else:
        raise TypeError(f"weight must be int32 (packed bits) or int8 (±1), got {weight.dtype}")
    if x.dim() < 1:
        raise ValueError("x needs at least one dimension (..., K)")
    width = num_words(k) if kind == InputKind.PACKED else k
    if x.shape[-1] != width:
        what = f"{width} words (packed, K={k})" if kind == InputKind.PACKED else f"K={k}"
        raise ValueError(f"x has last dimension {x.shape[-1]}; expected {what}")
    if x.device != weight.device:
        raise ValueError(f"x is on {x.device} but weight is on {weight.device}")
    return kind


def _check_call(x, weight, k, real_input, out_kind, epilogue, threshold, stage, residual, out_dtype
                ) -> tuple[InputKind, OutputKind, KernelStage]:
    """Everything the reference and the launcher check; returns the input and output kinds and the stage."""
    in_kind = _check_inputs(x, weight, k, real_input)
    n = weight.shape[0]
    kind = output_kind(out_kind)
    stage = output_stage(kind, epilogue=epilogue, threshold=threshold, stage=stage, channels=n, device=x.device)
    check_output_request(kind, stage, residual=residual, out_dtype=out_dtype, real_acc=real_input, channels=n,
                         device=x.device)
    check_residual(residual, (*x.shape[:-1], n), x.device)
    return in_kind, kind, stage


def binary_gemm_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    k: int,
    *,
    real_input: bool = False,
    out_kind: OutputKind | str = OutputKind.FLOAT,
    epilogue: Epilogue | None = None,
    threshold: SignThreshold | None = None,
    stage: KernelStage | None = None,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """PyTorch reference of :func:`binary_gemm` (and its CPU fallback); same arguments and result.

    The accumulator is computed as a float32 matmul of ±1 values, which is exact for
    ``K < 2**24`` in any summation order (every partial sum is an integer below 2**24).
    """
    in_kind, kind, stage = _check_call(x, weight, k, real_input, out_kind, epilogue, threshold, stage, residual,
                                       out_dtype)
    w = unpack_signs_reference(weight, k) if weight.dtype == torch.int32 else weight.to(torch.float32)
    if in_kind == InputKind.PACKED:
        a = unpack_signs_reference(x, k)
    elif in_kind == InputKind.BINARIZE:
        a = binarize_reference(x.to(torch.float32))
    else:
        a = x.to(torch.float32)
    if in_kind == InputKind.REAL:
        acc = torch.matmul(a.to(torch.float64), w.to(torch.float64).T).to(torch.float32)
    else:
        acc = torch.matmul(a, w.T).to(torch.int32)
    return finish_reference(acc, out_kind=kind, **stage.reference_args(), residual=residual, out_dtype=out_dtype)


# ----------------------------------------------------------------------------- launcher


def binary_gemm(
    x: torch.Tensor,
    weight: torch.Tensor,
    k: int,
    *,
    real_input: bool = False,
    out_kind: OutputKind | str = OutputKind.FLOAT,
    epilogue: Epilogue | None = None,
    threshold: SignThreshold | None = None,
    stage: KernelStage | None = None,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
    route: str | None = None,
    use_descriptors: bool | None = None,
) -> torch.Tensor:
    """``epilogue(x @ sign(W)^T)`` with the Triton kernels: one launch.

    Args:
        x: ``(..., K)`` float (binarized, or real with ``real_input``), ``(..., K)`` int8 ±1,
            or ``(..., ceil(K/32))`` int32 packed bits.
        weight: ``(N, ceil(K/32))`` int32 packed along K, or ``(N, K)`` int8 ±1.
        k: the reduction length K.
        out_kind: ``acc`` (int32, float32 for W1A16), ``float`` (``out_dtype``), ``sign_int8``
            or ``packed`` (``(..., ceil(N/32))`` int32); see :mod:`bnnkit.kernels.epilogue`.
        epilogue / threshold / residual: the fused output stage (``residual`` is ``(..., N)``).
        stage: the output stage already in the kernels' layout, instead of ``epilogue`` /
            ``threshold`` (what packed layers pass: no per-call tensor work).
        out: optional preallocated output (contiguous, the shape and dtype of the result).
        route: ``"mma"`` or ``"gemv"`` to override the choice by M (tests, benchmarks).
        use_descriptors: force TMA tensor descriptors on/off (default: sm_90+ and aligned).

    Returns:
        ``(..., N)`` (``(..., ceil(N/32))`` for ``packed``) in the dtype ``out_kind`` implies.
    """
    in_kind, kind, stage = _check_call(x, weight, k, real_input, out_kind, epilogue, threshold, stage, residual,
                                       out_dtype)
    n = weight.shape[0]
    rows = tuple(x.shape[:-1])
    shape = output_shape(rows, n, kind)
    out = prepare_out(out, shape, output_dtype(kind, out_dtype, real_input), x.device)
    a = x.reshape(-1, x.shape[-1])
    if a.stride(-1) != 1:
        a = a.contiguous()
    m = a.shape[0]
    if m == 0 or n == 0:
        return out
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    out2 = out.view(m, shape[-1])
    res2 = None
    if residual is not None:
        res2 = residual.reshape(m, n)
        if res2.stride(-1) != 1:
            res2 = res2.contiguous()
    args = dict(a_ptr=a, w_ptr=weight, out_ptr=out2, res_ptr=out2 if res2 is None else res2,
                params_ptr=stage.params, thr_ptr=stage.thresholds, M=m, N=n, K=k, stride_am=a.stride(0),
                stride_wn=weight.stride(0), stride_om=out2.stride(0), stride_rm=0 if res2 is None else res2.stride(0),
                IN_KIND=in_kind.code, OUT_KIND=kind.code, SIGN_FROM_THRESHOLD=stage.has_threshold, RELU=stage.relu,
                HAS_RESIDUAL=res2 is not None)

    popcount_ok = in_kind in (InputKind.PACKED, InputKind.BINARIZE) and weight.dtype == torch.int32
    if route is None:
        route = "gemv" if popcount_ok and m <= GEMV_MAX_M else "mma"
    if route == "gemv":
        if not popcount_ok:
            raise ValueError("the popcount route needs binary activations (real to binarize, or packed) and packed "
                             "int32 weights")
        if m > GEMV_MAX_M:
            raise ValueError(f"the popcount route takes at most {GEMV_MAX_M} rows, got {m}")
        _GEMV(lambda meta: (triton.cdiv(n, meta["BN"]),), {**args, "BM": next_power_of_2(m)}, x.device)
        return out
    if route != "mma":
        raise ValueError(f"unknown route {route!r}; expected 'mma' or 'gemv'")

    hopper = is_hopper_or_newer(x.device)
    aligned = tma_compatible(a) and tma_compatible(weight)
    if use_descriptors is None:
        use_descriptors = hopper and aligned
    elif use_descriptors and not aligned:
        raise ValueError("TMA descriptors need 16-byte aligned base pointers and row strides for x and weight "
                         "(see bnnkit.kernels.weight_pack.aligned_words)")
    if use_descriptors and not hopper and not interpreting():
        raise ValueError("TMA descriptors are used on sm_90+ only")
    kernel = _MMA[(hopper or interpreting(), in_kind == InputKind.REAL, bool(use_descriptors))]
    kernel(lambda meta: (triton.cdiv(m, meta["BM"]) * triton.cdiv(n, meta["BN"]),),
           {**args, "M_BUCKET": next_power_of_2(m), "W_PACKED": weight.dtype == torch.int32,
            "USE_DESC": bool(use_descriptors)}, x.device, descriptors=bool(use_descriptors))
    return out
