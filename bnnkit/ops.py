"""The op layer of training: binarization with a straight-through estimator.

Two ops, each a forward and an exact backward over the kernels' PyTorch references:

- :func:`sign_estimate`: ``x -> binarize(x)``, backward ``g_kind(x) * grad``.
- :func:`scaled_binarize`: ``w -> alpha(w) * binarize(w)`` with alpha = mean |w| (per tensor
  or per output channel) not detached, backward as in
  :mod:`bnnkit.kernels.weight_binarize`.

``kind`` is an :class:`~bnnkit.kernels.sign_grad.EstimatorKind` code; ``o`` and ``t`` are the
estimator's parameters (ignored by estimators that do not use them). Callers validate them
(:mod:`bnnkit.functional` does).
"""

from __future__ import annotations

import torch

from bnnkit.kernels.binarize import binarize_reference
from bnnkit.kernels.sign_grad import sign_grad_reference
from bnnkit.kernels.weight_binarize import scaled_binarize_backward_reference, scaled_binarize_forward_reference


class _SignEstimate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, kind: int, o: float, t: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.params = (kind, o, t)
        return binarize_reference(x)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        return sign_grad_reference(x, grad_out, *ctx.params), None, None, None


class _ScaledBinarize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: torch.Tensor, scale: str, kind: int, o: float, t: float) -> torch.Tensor:
        out, alpha = scaled_binarize_forward_reference(w, scale)
        ctx.save_for_backward(w, alpha if alpha is not None else torch.empty(0))
        ctx.params = (scale, kind, o, t)
        ctx.has_alpha = alpha is not None
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        w, alpha = ctx.saved_tensors
        scale, kind, o, t = ctx.params
        grad = scaled_binarize_backward_reference(w, alpha if ctx.has_alpha else None, grad_out, scale, kind, o, t)
        return grad, None, None, None, None


def sign_estimate(x: torch.Tensor, kind: int, o: float = 1.0, t: float = 1.5) -> torch.Tensor:
    """Binarize ``x`` (any shape, floating dtype) with estimator ``kind``'s backward."""
    return _SignEstimate.apply(x, int(kind), float(o), float(t))


def scaled_binarize(w: torch.Tensor, scale: str, kind: int, o: float = 1.0, t: float = 1.5) -> torch.Tensor:
    """``alpha(w) * binarize(w)`` in ``w``'s dtype; dim 0 of ``w`` is the output channel."""
    return _ScaledBinarize.apply(w, scale, int(kind), float(o), float(t))
