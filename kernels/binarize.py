"""Binarization forward: x -> +1 where x >= 0, -1 elsewhere (so sign(0) = +1).

This is the one binarization rule of bnnkit, shared by training, packing, the inference
kernels and ONNX. NaN compares false with 0 and therefore binarizes to -1 (bit 0).
"""

from __future__ import annotations

import torch


def binarize_reference(x: torch.Tensor) -> torch.Tensor:
    """``+1`` where ``x >= 0``, ``-1`` elsewhere (NaN -> -1); same shape and dtype as ``x``."""
    one = torch.ones((), dtype=x.dtype, device=x.device)
    return torch.where(x >= 0, one, -one)
