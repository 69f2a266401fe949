"""Binary weights in the layouts the kernels read.

- Linear ``(N, K)`` -> ``(N, ceil(K/32))`` int32: each output row packed along K.
- Convolution ``(C_out, C_in, KH, KW)`` (PyTorch's OIHW) -> ``(C_out, KH, KW, ceil(C_in/32))``
  int32: OHWI, packed along the input channels of each tap, so a tap's words line up with
  the channel words of a packed NHWC activation.

Bits follow :mod:`bnnkit.kernels.bitpack` (bit 1 = +1 = ``w >= 0``, LSB first, zero padding
bits; :func:`~bnnkit.kernels.bitpack.unpack_signs_reference` inverts both along the last dim).
``expand_weight_int8`` gives the same weights as int8 ±1 (one byte per weight, 0 in the
padding), an alternative operand for large batches where reading 8x more weight bytes is
cheaper than unpacking bits for every output tile.
"""

from __future__ import annotations

import torch

from .bitpack import num_words, pack_signs_reference, unpack_signs_reference


def pack_linear_weight(weight: torch.Tensor) -> torch.Tensor:
    """``(N, K)`` float -> ``(N, ceil(K/32))`` int32 words of ``weight >= 0``."""
    if weight.dim() != 2:
        raise ValueError(f"linear weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    return pack_signs_reference(weight).contiguous()


def pack_conv_weight(weight: torch.Tensor) -> torch.Tensor:
    """``(C_out, C_in, KH, KW)`` float -> ``(C_out, KH, KW, ceil(C_in/32))`` int32 (OHWI, packed along C_in)."""
    if weight.dim() != 4:
        raise ValueError(f"conv weight must be 4-D (C_out, C_in, KH, KW), got shape {tuple(weight.shape)}")
    return pack_signs_reference(weight.permute(0, 2, 3, 1)).contiguous()


def expand_weight_int8(words: torch.Tensor, k: int) -> torch.Tensor:
    """Packed words ``(..., ceil(k/32))`` -> int8 ±1 ``(..., k)`` (the kernels' int8 weight operand)."""
    return unpack_signs_reference(words, k, torch.int8).contiguous()


def aligned_words(words: torch.Tensor, multiple: int = 4) -> torch.Tensor:
    """The same words in a buffer whose rows are padded to ``multiple`` words (16 bytes for 4),
    returned as a view of the original shape: rows then start at 16-byte boundaries, which
    TMA descriptors need. The extra words are zero and never read as data."""
    width = words.shape[-1]
    padded = -(-width // multiple) * multiple
    if padded == width:
        return words.contiguous()
    buf = torch.zeros(*words.shape[:-1], padded, dtype=words.dtype, device=words.device)
    buf[..., :width] = words
    return buf[..., :width]


__all__ = ["num_words", "pack_linear_weight", "pack_conv_weight", "expand_weight_int8", "aligned_words"]
