"""Bit packing of signs: the storage format of binary weights and activations.

Encoding: along the packed axis of length K, element ``i`` goes to bit ``i % 32`` of int32
word ``i // 32`` (LSB first); bit 1 means +1 (x >= 0), bit 0 means -1. The last word's
padding bits (positions K..32*ceil(K/32)-1) are 0 and are never counted: consumers carry K.
Words are stored as int32 (bit 31 is the sign bit; the values are bit patterns).
"""

from __future__ import annotations

import torch

WORD_BITS = 32


def num_words(k: int) -> int:
    """Number of int32 words that hold ``k`` bits."""
    return (k + WORD_BITS - 1) // WORD_BITS


def pack_signs_reference(x: torch.Tensor) -> torch.Tensor:
    """Pack ``x >= 0`` along the last dim: ``(..., K)`` any dtype -> ``(..., ceil(K/32))`` int32."""
    k = x.shape[-1]
    bits = (x >= 0).to(torch.int64)
    pad = num_words(k) * WORD_BITS - k
    if pad:
        bits = torch.nn.functional.pad(bits, (0, pad))
    bits = bits.reshape(*x.shape[:-1], num_words(k), WORD_BITS)
    shifts = torch.arange(WORD_BITS, device=x.device, dtype=torch.int64)
    words = (bits << shifts).sum(dim=-1)
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32)


def unpack_signs_reference(words: torch.Tensor, k: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`pack_signs_reference`: ``(..., ceil(K/32))`` int32 -> ``(..., K)`` of ±1."""
    if words.dtype != torch.int32:
        raise TypeError(f"packed words must be int32, got {words.dtype}")
    if words.shape[-1] != num_words(k):
        raise ValueError(f"{words.shape[-1]} words cannot hold K={k} bits; expected {num_words(k)}")
    shifts = torch.arange(WORD_BITS, device=words.device, dtype=torch.int32)
    bits = (words.unsqueeze(-1) >> shifts) & 1
    bits = bits.reshape(*words.shape[:-1], words.shape[-1] * WORD_BITS)[..., :k]  # explicit: rows may be 0
    return (2 * bits - 1).to(dtype)
