"""Pack activations to bits on the GPU: ``(..., K)`` -> ``(..., ceil(K/32))`` int32.

The reference is :func:`bnnkit.kernels.bitpack.pack_signs_reference` (same format: bit 1 =
``x >= 0``, LSB first, zero padding bits; NaN -> 0). The kernel is the binarize-and-pack
kernel of :mod:`bnnkit.kernels.binarize` without its values output.
"""

from __future__ import annotations

import torch

from .binarize import binarize_and_pack
from .bitpack import pack_signs_reference

__all__ = ["PACK_DTYPES", "pack_signs", "pack_signs_reference"]

PACK_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.int8)


def pack_signs(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Triton packing of ``x >= 0`` along the last dim.

    Args:
        x: ``(..., K)`` float32 / float16 / bfloat16 / int8, at least 1-D (read through its
            strides whenever it has a ``(rows, K)`` view).
        out: optional contiguous int32 ``(..., ceil(K/32))`` to write into.
    """
    if not isinstance(x, torch.Tensor) or x.dtype not in PACK_DTYPES:
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"pack_signs takes float32/float16/bfloat16/int8 tensors, got {got}")
    return binarize_and_pack(x, write_values=False, words=out)[1]
