"""Export-only ops of the ONNX path: activation binarization and packed binary weights.

- ``torch.ops.bnnkit_export.binarize(x)``: ``+1`` where ``x >= 0``, ``-1`` elsewhere (NaN ->
  -1), ``x``'s shape and dtype. A torch.library custom op, so the ONNX exporter sees one node
  and translates it to ``Where(x >= 0, 1, -1)`` (:mod:`bnnkit.export.onnx.graph`), never to
  ONNX ``Sign`` (which maps 0 to 0).
- Packed weights: :func:`pack_weight_bits` / :func:`unpack_weight_bits`. A binary weight
  ``alpha * binarize(w)`` of shape ``(C_out, ...)`` is stored as

  - ``bits``: uint8 ``(C_out, ceil(K / 8))``, ``K = prod(shape[1:])`` (the weight flattened
    row-major per output channel, OIHW for convolutions); bit ``j % 8`` of byte ``j // 8``
    (LSB first) is element ``j``; bit 1 = ``+alpha`` (w >= 0), 0 = ``-alpha``; the last
    byte's padding bits are 0. This is the byte view of bnnkit's int32 word format
    (:mod:`bnnkit.kernels.bitpack`) truncated to whole bytes.
  - ``scale``: float32, ``()`` for one alpha per tensor (``scale="tensor"``; ``1.0`` for
    ``"none"``) or ``(C_out, 1)`` for one per output channel.

These are inference ops: no autograd.
"""

from __future__ import annotations

import math

import torch

from bnnkit.kernels.binarize import binarize_reference
from bnnkit.kernels.bitpack import pack_signs_reference

OPS_NAMESPACE = "bnnkit_export"


@torch.library.custom_op(f"{OPS_NAMESPACE}::binarize", mutates_args=())
def binarize(x: torch.Tensor) -> torch.Tensor:
    """``+1`` where ``x >= 0``, ``-1`` elsewhere; same shape and dtype as ``x``."""
    return binarize_reference(x)


@binarize.register_fake
def _binarize_fake(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def num_bytes(k: int) -> int:
    """Bytes that hold ``k`` bits."""
    return (k + 7) // 8


def pack_weight_bits(w: torch.Tensor) -> torch.Tensor:
    """Signs of ``w`` (``(C_out, ...)``, any real dtype; ``w >= 0`` -> bit 1) as uint8
    ``(C_out, ceil(K / 8))`` bytes, LSB first along the flattened ``K = prod(shape[1:])``."""
    if w.dim() < 1 or w.shape[0] == 0:
        raise ValueError(f"a binary weight needs a non-empty output dim 0, got shape {tuple(w.shape)}")
    flat = w.detach().reshape(w.shape[0], -1)
    words = pack_signs_reference(flat)  # [C_out, ceil(K/32)] int32, LSB first
    byte_shifts = torch.tensor([0, 8, 16, 24], dtype=torch.int32, device=w.device)
    as_bytes = ((words.unsqueeze(-1) >> byte_shifts) & 0xFF).to(torch.uint8)  # [C_out, W, 4], little-endian
    return as_bytes.reshape(w.shape[0], -1)[:, : num_bytes(flat.shape[1])].contiguous()


def unpack_weight_bits(bits: torch.Tensor, scale: torch.Tensor, shape: tuple[int, ...] | list[int]) -> torch.Tensor:
    """Inverse of :func:`pack_weight_bits` with the scale applied: ``where(bit, scale, -scale)``
    of ``shape``, in ``scale``'s dtype. ``scale`` is ``()`` or ``(C_out, 1)``."""
    shape = tuple(int(s) for s in shape)
    n, k = shape[0], math.prod(shape[1:])
    if bits.dtype != torch.uint8 or bits.shape != (n, num_bytes(k)):
        raise ValueError(f"packed weight bits must be uint8 of shape {(n, num_bytes(k))} for a weight of shape "
                         f"{shape}, got {bits.dtype} {tuple(bits.shape)}")
    if scale.shape not in ((), (n, 1)):
        raise ValueError(f"weight scale must have shape () or {(n, 1)}, got {tuple(scale.shape)}")
    shifts = torch.arange(8, dtype=torch.uint8, device=bits.device)
    signs = ((bits.unsqueeze(-1) >> shifts) & 1).reshape(n, -1)[:, :k].bool()  # [C_out, K]
    return torch.where(signs, scale, -scale).reshape(shape)
