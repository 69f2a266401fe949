"""Pack activations to bits on the GPU: ``(..., K)`` -> ``(..., ceil(K/32))`` int32.

The reference is :func:`bnnkit.kernels.bitpack.pack_signs_reference` (same format: bit 1 =
``x >= 0``, LSB first, zero padding bits; NaN -> 0). The popcount GEMV packs a real or int8
input with this kernel before reading it.
"""

from __future__ import annotations

import torch
from .triton_compat import tl, triton

from .bitpack import num_words, pack_signs_reference
from .bits import pack_rows

__all__ = ["pack_signs", "pack_signs_reference"]


@triton.jit
def _pack_signs_kernel(x_ptr, out_ptr, R, K, stride_xr, stride_or, BR: tl.constexpr, BKW: tl.constexpr):
    offs_r = tl.program_id(0) * BR + tl.arange(0, BR)
    offs_k = tl.program_id(1) * (BKW * 32) + tl.arange(0, BKW * 32)
    mask = (offs_r < R)[:, None] & (offs_k < K)[None, :]
    x = tl.load(x_ptr + offs_r[:, None] * stride_xr + offs_k[None, :], mask=mask, other=-1)
    words = pack_rows(((x >= 0) & mask).to(tl.int32), BR, BKW)  # [BR, BKW]
    offs_w = tl.program_id(1) * BKW + tl.arange(0, BKW)
    tl.store(out_ptr + offs_r[:, None] * stride_or + offs_w[None, :], words,
             mask=(offs_r < R)[:, None] & (offs_w < (K + 31) // 32)[None, :])


def pack_signs(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Triton packing of ``x >= 0`` along the last dim (float or int8 ``x``, last dim contiguous)."""
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.int8):
        raise TypeError(f"pack_signs takes float32/float16/bfloat16/int8, got {x.dtype}")
    if x.dim() == 0:
        raise ValueError("pack_signs needs at least one dimension")
    k = x.shape[-1]
    rows = x.reshape(-1, k)
    if k and rows.stride(-1) != 1:
        rows = rows.contiguous()
    shape = (*x.shape[:-1], num_words(k))
    if out is None:
        out = torch.empty(shape, dtype=torch.int32, device=x.device)
    elif out.shape != shape or out.dtype != torch.int32 or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous int32 tensor of shape {shape}")
    r = rows.shape[0]
    if r == 0 or k == 0:
        return out
    br, bkw = 16, 8
    grid = (triton.cdiv(r, br), triton.cdiv(num_words(k), bkw))
    _pack_signs_kernel[grid](rows, out, r, k, rows.stride(0), num_words(k), BR=br, BKW=bkw)
    return out
