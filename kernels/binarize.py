"""Binarization forward: x -> +1 where x >= 0, -1 elsewhere (so sign(0) = +1).

This is the one binarization rule of bnnkit, shared by training, packing, the inference
kernels and ONNX. NaN compares false with 0 and therefore binarizes to -1 (bit 0).

:func:`binarize_reference` defines it (and is the CPU fallback); :func:`binarize` is the
Triton version, which can also emit the packed bits from the same read of ``x``.
"""

from __future__ import annotations

import torch
from .triton_compat import tl, triton

from .bitpack import num_words
from .bits import nonnegative, pack_rows
from .elementwise import check_kernel_tensor, empty_like_layout, needs_int64_index, shared_dense_layout
from .launch import on_device

BINARIZE_BLOCK = 4096
BINARIZE_WARPS = 8
PACK_TILE_ELEMENTS = 4096
"""Elements per program of the packing kernel (rows x words x 32)."""


def binarize_reference(x: torch.Tensor) -> torch.Tensor:
    """``+1`` where ``x >= 0``, ``-1`` elsewhere (NaN -> -1); same shape and dtype as ``x``."""
    # (x >= 0) written as 0/1 in x's dtype, then 2 * b - 1 in place: two vectorized passes.
    # torch.where(x >= 0, 1, -1) is the same map but about 2.5x slower on CPU (bool mask, select).
    out = torch.ge(x, 0, out=torch.empty_like(x))
    return torch.add(torch.full((), -1, dtype=x.dtype, device=x.device), out, alpha=2, out=out)


@triton.jit
def _binarize_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr, INDEX_64: tl.constexpr):
    """``out[i] = +1 if x[i] >= 0 else -1`` over ``n`` elements, in ``out``'s dtype."""
    pid = tl.program_id(0)
    if INDEX_64:
        pid = pid.to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    out = tl.where(nonnegative(x), 1.0, -1.0)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _binarize_pack_kernel(
    x_ptr, out_ptr, words_ptr, rows, k, n_words, stride_xr, stride_xc,
    BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr, WRITE_VALUES: tl.constexpr, INDEX_64: tl.constexpr,
):
    """Binarize a ``(rows, k)`` view and pack its signs along ``k`` into ``(rows, n_words)`` int32.

    ``out`` (written when ``WRITE_VALUES``) and ``words`` are contiguous; ``x`` is read through
    its strides. Columns past ``k`` load as -1, which makes the padding bits 0.
    """
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]  # [BLOCK_R, 1]
    w = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]  # [1, BLOCK_W]
    c = tl.program_id(1) * (BLOCK_W * 32) + tl.arange(0, BLOCK_W * 32)[None, :]  # [1, BLOCK_W * 32]
    if INDEX_64:
        r = r.to(tl.int64)
        c = c.to(tl.int64)
        w = w.to(tl.int64)
    row_ok = r < rows
    mask = row_ok & (c < k)  # [BLOCK_R, BLOCK_W * 32]
    x = tl.load(x_ptr + r * stride_xr + c * stride_xc, mask=mask, other=-1.0)
    positive = nonnegative(x)
    if WRITE_VALUES:
        out = tl.where(positive, 1.0, -1.0).to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + r * k + c, out, mask=mask)
    words = pack_rows(positive.to(tl.int32), BLOCK_R, BLOCK_W)  # [BLOCK_R, BLOCK_W]
    tl.store(words_ptr + r * n_words + w, words, mask=row_ok & (w < n_words))


def binarize(x: torch.Tensor, pack: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Triton binarization: ``+1`` where ``x >= 0``, ``-1`` elsewhere (NaN -> -1), in ``x``'s dtype.

    Args:
        x: fp16, bf16 or fp32 tensor of any shape (CUDA, or CPU under ``TRITON_INTERPRET=1``).
        pack: also return the signs packed along the last dim (format of
            :mod:`bnnkit.kernels.bitpack`: ``(..., ceil(K/32))`` int32, LSB first, bit 1 = +1,
            padding bits 0), computed from the same single read of ``x``.

    Returns:
        The ±1 tensor (``x``'s shape and dtype), or ``(values, words)`` when ``pack``.
        Without ``pack`` the values keep ``x``'s memory layout when ``x`` is dense (contiguous,
        channels_last, any permutation); other views are copied to contiguous memory first.
        With ``pack`` the values are contiguous and ``x`` is read through its strides
        whenever it has a ``(rows, K)`` view.
    """
    check_kernel_tensor(x, "x", "binarize")
    if pack:
        return binarize_and_pack(x, write_values=True)
    (x,) = shared_dense_layout(x)
    out = empty_like_layout(x)
    n = x.numel()
    if n == 0:
        return out
    grid = (triton.cdiv(n, BINARIZE_BLOCK),)
    with on_device(x.device):
        _binarize_kernel[grid](
            x, out, n, BLOCK=BINARIZE_BLOCK, INDEX_64=needs_int64_index(grid[0] * BINARIZE_BLOCK - 1),
            num_warps=BINARIZE_WARPS,
        )
    return out


def pack_tile(rows: int, n_words: int) -> tuple[int, int]:
    """``(BLOCK_R, BLOCK_W)`` of the packing kernel: up to 8 words wide, ~4096 elements a program."""
    block_w = min(triton.next_power_of_2(max(n_words, 1)), 8)
    block_r = max(1, min(PACK_TILE_ELEMENTS // (block_w * 32), triton.next_power_of_2(max(rows, 1))))
    return block_r, block_w


def pack_grid(rows: int, k: int, stride_r: int, stride_c: int) -> tuple[tuple[int, int], tuple[int, int], bool]:
    """Grid, tile and whether int64 offsets are needed for packing a ``(rows, k)`` view."""
    n_words = num_words(k)
    block_r, block_w = pack_tile(rows, n_words)
    grid = (triton.cdiv(rows, block_r), triton.cdiv(n_words, block_w))
    rows_padded, cols_padded = grid[0] * block_r, grid[1] * block_w * 32
    last_offset = max((rows_padded - 1) * stride_r + (cols_padded - 1) * stride_c, rows_padded * max(k, n_words))
    return grid, (block_r, block_w), needs_int64_index(last_offset)


def binarize_and_pack(x: torch.Tensor, write_values: bool,
                      words: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, words)`` of ``x`` (``(..., K)``, at least 1-D, any dtype the kernel reads): the
    ±1 values (when ``write_values``; else an empty tensor) and the packed signs, written into
    ``words`` when given (contiguous int32 ``(..., ceil(K/32))``)."""
    if x.dim() == 0:
        raise ValueError("packing needs a tensor with at least 1 dim (the last dim is packed); got a 0-d tensor")
    k = x.shape[-1]
    n_words = num_words(k)
    values = torch.empty(x.shape if write_values else (0,), dtype=x.dtype, device=x.device)
    shape = (*x.shape[:-1], n_words)
    if words is None:
        words = torch.empty(shape, dtype=torch.int32, device=x.device)
    elif tuple(words.shape) != shape or words.dtype != torch.int32 or not words.is_contiguous() \
            or words.device != x.device:
        raise ValueError(f"out must be a contiguous int32 tensor of shape {shape} on {x.device}, got "
                         f"{words.dtype} {tuple(words.shape)} on {words.device}")
    if x.numel() == 0:  # no rows, or K = 0 and no words
        return values, words
    x2 = x.reshape(-1, k)  # [rows, K]; a view whenever one exists
    rows = x2.shape[0]
    grid, (block_r, block_w), index_64 = pack_grid(rows, k, x2.stride(0), x2.stride(1))
    with on_device(x.device):
        _binarize_pack_kernel[grid](
            x2, values, words, rows, k, n_words, x2.stride(0), x2.stride(1),
            BLOCK_R=block_r, BLOCK_W=block_w, WRITE_VALUES=write_values, INDEX_64=index_64, num_warps=4,
        )
    return values, words
