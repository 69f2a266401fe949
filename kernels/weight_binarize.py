"""Scaled weight binarization: ``w -> alpha * binarize(w)`` and its exact backward.

``alpha = mean(|w|)`` over the whole tensor (``"tensor"``, the reference code), over each
output channel (``"channel"``: dim 0 is the output channel), or ``alpha = 1`` (``"none"``).
alpha is not detached, as in the reference code, so the backward of
``est(w) * alpha(w)`` (``est``: binarize forward, estimator slope ``g`` backward) is::

    grad_w = alpha * g(w) * grad_out  +  sgn(w) / n * sum_group(grad_out * binarize(w))

where the sum and ``n`` run over the elements that share one alpha, and ``sgn`` is the
derivative of ``|w|`` that autograd uses (``sgn(0) = 0``). Statistics are computed in
float32 for half-precision weights.
"""

from __future__ import annotations

import torch

from .binarize import binarize_reference
from .sign_grad import compute_dtype, estimator_slope_reference

SCALE_MODES = ("tensor", "channel", "none")


def check_scale_mode(scale: str) -> str:
    if scale not in SCALE_MODES:
        raise ValueError(f"unknown weight scale {scale!r}; expected one of {', '.join(SCALE_MODES)}")
    return scale


def _reduce_dims(w: torch.Tensor, scale: str) -> tuple[int, ...]:
    return tuple(range(w.dim())) if scale == "tensor" else tuple(range(1, w.dim()))


def weight_scale_reference(w: torch.Tensor, scale: str) -> torch.Tensor | None:
    """alpha in float32 (float64 for float64 ``w``): 0-d for ``"tensor"``, ``(C_out, 1, ...)``
    for ``"channel"``, ``None`` for ``"none"``."""
    check_scale_mode(scale)
    if scale == "none":
        return None
    a = w.to(compute_dtype(w.dtype)).abs()
    if scale == "tensor":
        return a.mean()
    return a.mean(dim=_reduce_dims(w, scale), keepdim=True)


def scaled_binarize_forward_reference(w: torch.Tensor, scale: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(alpha * binarize(w), alpha)``; the first in ``w``'s dtype, alpha as :func:`weight_scale_reference`."""
    alpha = weight_scale_reference(w, scale)
    if alpha is None:
        return binarize_reference(w), None
    return torch.where(w >= 0, alpha, -alpha).to(w.dtype), alpha


def scaled_binarize_backward_reference(
    w: torch.Tensor, alpha: torch.Tensor | None, grad_out: torch.Tensor, scale: str, kind: int,
    o: float = 1.0, t: float = 1.5,
) -> torch.Tensor:
    """Gradient of ``alpha(w) * est(w)`` with respect to ``w``; same shape and dtype as ``w``."""
    g = estimator_slope_reference(w, kind, o, t)
    go = grad_out.to(g.dtype)
    if alpha is None:
        return (g * go).to(w.dtype)
    wc = w.to(g.dtype)
    dims = _reduce_dims(w, scale)
    n = 1
    for d in dims:
        n *= w.shape[d]
    through_alpha = torch.where(wc >= 0, go, -go).sum(dim=dims, keepdim=True) / n  # sum(grad * binarize(w)) / n
    # d|w|/dw as autograd defines it for abs (0 at 0): a derivative, not a binarization.
    return torch.addcmul(torch.sgn(wc) * through_alpha, g.mul_(alpha), go).to(w.dtype)
