"""Backward of binarization: the pseudo-gradient of each straight-through estimator.

Every estimator of bnnkit has the same forward (:func:`binarize_reference`) and differs only
in the slope ``g(x)`` its backward multiplies ``grad_out`` by:

============  ==============================================================  ==========
kind          g(x)                                                             NaN input
============  ==============================================================  ==========
STE           1                                                                1
CLIPPED_STE   1 for |x| <= t, else 0                                           0
APPROX_SIGN   2 - 2|x| for |x| <= 1, else 0 (Bi-Real Net)                      0
RESTE         m^(1/o) / m for |x| <= m;  (1/o)|x|^((1-o)/o) for m < |x| <= t;  0
              0 for |x| > t;  m = 0.1 (Wu et al., ICCV 2023, arXiv:2308.06689)
============  ==============================================================  ==========

The slope is computed in float32 for half-precision inputs (float64 stays float64), and
``grad_in = (g * grad_out)`` is returned in ``x``'s dtype.
"""

from __future__ import annotations

import enum

import torch

RESTE_M = 0.1
"""Half-width of ReSTE's rectified interval around 0 (the reference code's ``interval``)."""


class EstimatorKind(enum.IntEnum):
    """Integer codes of the built-in estimators (kernels take them as a constexpr)."""

    STE = 0
    CLIPPED_STE = 1
    APPROX_SIGN = 2
    RESTE = 3


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype slopes are computed in: float32 for fp16/bf16/fp32, float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


def estimator_slope_reference(x: torch.Tensor, kind: int, o: float = 1.0, t: float = 1.5) -> torch.Tensor:
    """The slope ``g(x)`` of estimator ``kind``, elementwise, in :func:`compute_dtype` of ``x``.

    One vectorized expression per estimator: no masked writes.
    """
    a = x.to(compute_dtype(x.dtype)).abs()
    zero = torch.zeros((), dtype=a.dtype, device=a.device)
    kind = EstimatorKind(kind)
    if kind == EstimatorKind.STE:
        return torch.ones_like(a)
    if kind == EstimatorKind.CLIPPED_STE:
        return (a <= t).to(a.dtype)
    if kind == EstimatorKind.APPROX_SIGN:
        return torch.where(a <= 1.0, 2.0 - 2.0 * a, zero)
    rectified = RESTE_M ** (1.0 / o) / RESTE_M
    power = a.pow((1.0 - o) / o).mul_(1.0 / o)  # inf at 0 for o > 1: replaced by the rectified value
    return torch.where(a <= t, torch.where(a <= RESTE_M, rectified, power), zero)


def sign_grad_reference(
    x: torch.Tensor, grad_out: torch.Tensor, kind: int, o: float = 1.0, t: float = 1.5
) -> torch.Tensor:
    """``grad_in = g(x) * grad_out`` for estimator ``kind``; same shape and dtype as ``x``."""
    g = estimator_slope_reference(x, kind, o, t)
    return (g * grad_out.to(g.dtype)).to(x.dtype)
