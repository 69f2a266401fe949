"""Operand tiles of the binary GEMM / convolution kernels: what an activation or a weight tile
becomes before ``tl.dot``.

Activation sources: the ``IN_KIND`` constexpr, an :class:`~bnnkit.kernels.kinds.InputKind` code
(``_IN_INT8``, ``_IN_BINARIZE``, ``_IN_PACKED``, ``_IN_REAL``); real values are binarized with
:func:`~bnnkit.kernels.bits.nonnegative`.

Weights are packed words (unpacked to ±1 in registers) or int8 ±1 (``W_PACKED`` constexpr);
the weight operand is built as ``(BK, BN)`` directly (K along the leading axis), which the
compile reports show needs about half the registers of building ``(BN, BK)`` and transposing.
Elements past the reduction length (the K tail, padding bits, convolution zero padding) are 0
in the activation operand, so they contribute nothing whatever the weight holds there.
"""

from __future__ import annotations

import torch

from .bits import nonnegative
from .kinds import _IN_BINARIZE, _IN_PACKED, _IN_REAL, InputKind
from .triton_compat import tl, triton

REAL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

MAX_K = 2**24
"""Largest reduction length: accumulators stay exact in int32 and in the float32 epilogue."""


def input_kind(x: torch.Tensor, real_input: bool) -> InputKind:
    """How activation tensor ``x`` is encoded: its dtype says which (``real_input``: a float
    ``x`` is used as it is, W1A16, instead of binarized)."""
    if x.dtype == torch.int32:
        kind = InputKind.PACKED
    elif x.dtype == torch.int8:
        kind = InputKind.INT8
    elif x.dtype in REAL_DTYPES:
        kind = InputKind.REAL if real_input else InputKind.BINARIZE
    else:
        raise TypeError(f"activations must be float32/float16/bfloat16 (real), int8 (±1) or int32 (packed bits); "
                        f"got {x.dtype}")
    if real_input and kind != InputKind.REAL:
        raise TypeError(f"real_input=True (W1A16) needs float activations, got {x.dtype}")
    return kind


@triton.jit
def grouped_tile(pid, M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """Program ``pid``'s (row tile, column tile) in grouped order: GROUP_M consecutive
    programs take GROUP_M row tiles of one column tile, so its weights stay in L2."""
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    return first_m + (pid % group) % size_m, (pid % group) // size_m


@triton.jit
def unpack_rows_pm1(words, ROWS: tl.constexpr, BITS: tl.constexpr):
    """``(ROWS, BITS // 32)`` int32 words -> ``(ROWS, BITS)`` int32 of ±1 (bit 1 -> +1)."""
    b = (words[:, :, None] >> tl.arange(0, 32)[None, None, :]) & 1
    return tl.reshape(2 * b - 1, (ROWS, BITS))


@triton.jit
def unpack_cols_pm1(words_t, COLS: tl.constexpr, BITS: tl.constexpr, DTYPE: tl.constexpr):
    """``(BITS // 32, COLS)`` int32 words (K-major) -> ``(BITS, COLS)`` ±1 in ``DTYPE``."""
    b = (words_t[:, None, :] >> tl.arange(0, 32)[None, :, None]) & 1
    if DTYPE == tl.int8:
        pm1 = tl.where(b != 0, 1, -1).to(DTYPE)
    else:
        pm1 = tl.where(b != 0, 1.0, -1.0).to(DTYPE)  # via float: the interpreter mis-converts int -> bf16
    return tl.reshape(pm1, (BITS, COLS))


@triton.jit
def _int8_to(v, DTYPE: tl.constexpr):
    """int8 ±1 -> ``DTYPE`` (through float32 for float types: the interpreter mis-converts int -> bf16)."""
    if DTYPE == tl.int8:
        return v
    else:
        return v.to(tl.float32).to(DTYPE)


@triton.jit
def _binary_operand(raw, offs_k, K, IN_KIND: tl.constexpr, MASK_K: tl.constexpr, ROWS: tl.constexpr,
                    BK: tl.constexpr):
    """Loaded activation values -> dot operand; ``raw`` holds 0 wherever nothing was read."""
    if IN_KIND == _IN_PACKED:
        v = unpack_rows_pm1(raw, ROWS, BK)
    elif IN_KIND == _IN_BINARIZE:
        v = tl.where(nonnegative(raw), 1, -1)
    else:
        v = raw
    if IN_KIND == _IN_BINARIZE or IN_KIND == _IN_PACKED:
        if MASK_K:
            v = tl.where((offs_k < K)[None, :], v, 0)
    if IN_KIND == _IN_REAL:
        return v
    else:
        return v.to(tl.int8)


@triton.jit
def gemm_activation_tile(a_desc, a_rows, m0, k0, K, IN_KIND: tl.constexpr, USE_DESC: tl.constexpr,
                         MASK_K: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr):
    """The ``(BM, BK)`` activation operand of a GEMM at rows ``m0..``, reduction offset ``k0``.

    Reads through the TMA descriptor ``a_desc`` (out-of-range reads are zero-filled) or the
    row pointers ``a_rows`` (``(BM, 1)``, rows already clamped into range). ``MASK_K``: the
    tiles may reach past ``K`` (K is not a multiple of BK); those elements become 0.
    """
    offs_k = k0 + tl.arange(0, BK)
    if IN_KIND == _IN_PACKED:
        if USE_DESC:
            raw = a_desc.load([m0, k0 // 32])
        else:
            offs_w = k0 // 32 + tl.arange(0, BK // 32)
            if MASK_K:
                raw = tl.load(a_rows + offs_w[None, :], mask=(offs_w < (K + 31) // 32)[None, :], other=0)
            else:
                raw = tl.load(a_rows + offs_w[None, :])
    else:
        if USE_DESC:
            raw = a_desc.load([m0, k0])
        elif MASK_K:
            raw = tl.load(a_rows + offs_k[None, :], mask=(offs_k < K)[None, :], other=0)
        else:
            raw = tl.load(a_rows + offs_k[None, :])
    return _binary_operand(raw, offs_k, K, IN_KIND, MASK_K, BM, BK)


@triton.jit
def gemm_weight_tile(w_desc, w_cols, n0, k0, K, W_PACKED: tl.constexpr, USE_DESC: tl.constexpr,
                     MASK_K: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """The ``(BK, BN)`` ±1 weight operand in ``DOT_DTYPE``. ``w_cols`` are the ``(1, BN)`` row
    pointers of the weight matrix (rows clamped into range) for the pointer path. The K tail
    is only masked against reading past a row: the activation is 0 there."""
    if W_PACKED:
        if USE_DESC:
            words_t = w_desc.load([n0, k0 // 32]).T
        else:
            offs_w = k0 // 32 + tl.arange(0, BK // 32)
            if MASK_K:
                words_t = tl.load(w_cols + offs_w[:, None], mask=(offs_w < (K + 31) // 32)[:, None], other=0)
            else:
                words_t = tl.load(w_cols + offs_w[:, None])
        return unpack_cols_pm1(words_t, BN, BK, DOT_DTYPE)
    else:
        if USE_DESC:
            raw_t = w_desc.load([n0, k0]).T
        else:
            offs_k = k0 + tl.arange(0, BK)
            if MASK_K:
                raw_t = tl.load(w_cols + offs_k[:, None], mask=(offs_k < K)[:, None], other=0)
            else:
                raw_t = tl.load(w_cols + offs_k[:, None])
        return _int8_to(raw_t, DOT_DTYPE)


@triton.jit
def masked_activation(a_ptr, row_off, row_ok, k0, K, IN_KIND: tl.constexpr, MASK_K: tl.constexpr,
                      ROWS: tl.constexpr, BK: tl.constexpr):
    """Load the ``(ROWS, BK)`` activation operand at reduction offset ``k0`` with pointers.

    ``row_off`` (``(ROWS,)``) is each row's offset in elements (in words for packed input) and
    ``row_ok`` its validity: out-of-range rows and zero-padding taps read as 0, which is what
    makes convolution padding exact. ``MASK_K``: elements at ``k >= K`` may occur in the tile.
    """
    offs_k = k0 + tl.arange(0, BK)
    if IN_KIND == _IN_PACKED:
        offs_w = k0 // 32 + tl.arange(0, BK // 32)
        if MASK_K:
            mask = row_ok[:, None] & (offs_w < (K + 31) // 32)[None, :]
        else:
            mask = row_ok[:, None]
        raw = tl.load(a_ptr + row_off[:, None] + offs_w[None, :], mask=mask, other=0)
        v = tl.where(row_ok[:, None], unpack_rows_pm1(raw, ROWS, BK), 0)
        if MASK_K:
            v = tl.where((offs_k < K)[None, :], v, 0)
        return v.to(tl.int8)
    else:
        if MASK_K:
            mask = row_ok[:, None] & (offs_k < K)[None, :]
        else:
            mask = row_ok[:, None]
        raw = tl.load(a_ptr + row_off[:, None] + offs_k[None, :], mask=mask, other=0)
        if IN_KIND == _IN_BINARIZE:
            return tl.where(mask, tl.where(nonnegative(raw), 1, -1), 0).to(tl.int8)
        else:
            return raw


@triton.jit
def masked_weight(w_ptr, col_off, k0, KLEN, W_PACKED: tl.constexpr, MASK_K: tl.constexpr, COLS: tl.constexpr,
                  BK: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """Load the ``(BK, COLS)`` ±1 weight operand with pointers. ``col_off`` (``(COLS,)``, rows
    of the weight clamped into range by the caller) is in elements (words if packed); ``KLEN``
    is the row length in elements, masked only against reading past it."""
    if W_PACKED:
        offs_w = k0 // 32 + tl.arange(0, BK // 32)
        ptrs = w_ptr + col_off[None, :] + offs_w[:, None]
        if MASK_K:
            words_t = tl.load(ptrs, mask=(offs_w < (KLEN + 31) // 32)[:, None], other=0)
        else:
            words_t = tl.load(ptrs)
        return unpack_cols_pm1(words_t, COLS, BK, DOT_DTYPE)
    else:
        offs_k = k0 + tl.arange(0, BK)
        ptrs = w_ptr + col_off[None, :] + offs_k[:, None]
        if MASK_K:
            raw_t = tl.load(ptrs, mask=(offs_k < KLEN)[:, None], other=0)
        else:
            raw_t = tl.load(ptrs)
        return _int8_to(raw_t, DOT_DTYPE)


@triton.jit
def dot_pm1(a, w, acc, REAL: tl.constexpr, INTERPRET: tl.constexpr):
    """``acc + a @ w``: int8 x int8 -> int32 (exact), or real x ±1 with float32 accumulation.

    fp32 inputs use 3xTF32 (about fp32 accuracy on the tensor cores). The interpreter's bf16
    dot is wrong, so there bf16 operands are widened to fp32 first (exact: x * ±1 is exact).
    """
    if REAL:
        if a.dtype == tl.float32:
            return tl.dot(a, w, acc, input_precision="tf32x3")
        elif INTERPRET:
            return tl.dot(a.to(tl.float32), w.to(tl.float32), acc)
        else:
            return tl.dot(a, w, acc)
    else:
        return tl.dot(a, w, acc)
