"""Functional binarization with straight-through estimators.

Forward of every estimator: ``+1`` where ``x >= 0``, ``-1`` elsewhere (so ``0 -> +1``; NaN
-> -1), in ``x``'s dtype. Backward: ``grad_in = g(x) * grad_out`` with the estimator's slope
``g`` computed in float32 for fp16/bf16 inputs (see :mod:`bnnkit.estimators`).
"""

from __future__ import annotations

import torch

from bnnkit import ops
from bnnkit.estimators import Estimator, check_estimator, check_estimator_params, estimator_kind, threshold_for
from bnnkit.kernels.binarize import binarize_reference
from bnnkit.kernels.sign_grad import EstimatorKind
from bnnkit.kernels.weight_binarize import check_scale_mode


def _check_floating(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor (float32, float16, bfloat16, float64), got {x.dtype}")


def binarize(x: torch.Tensor) -> torch.Tensor:
    """``+1`` where ``x >= 0``, ``-1`` elsewhere, without a straight-through gradient."""
    return binarize_reference(x)


def sign_estimator(x: torch.Tensor, estimator: Estimator = "reste", o: float | torch.Tensor = 1.0,
                   t: float | None = None) -> torch.Tensor:
    """Binarize ``x`` with ``estimator`` (a name from :data:`bnnkit.estimators.ESTIMATORS` or a
    callable ``f(x) -> Tensor``); ``o`` and ``t`` parameterize the named estimators that use them
    (``t=None``: the estimator's default, 1.5 for ReSTE and 1 for the clipped STE).
    ``o`` may be a 0-d tensor (keeps torch.compile from recompiling when it changes; see
    :mod:`bnnkit.ops`)."""
    check_estimator(estimator)
    if callable(estimator):
        return estimator(x)
    _check_floating(x, "input")
    kind = estimator_kind(estimator)
    t = threshold_for(estimator, t)
    check_estimator_params(kind, o, t)
    return ops.sign_estimate(x, kind, o, t)


def reste_sign(x: torch.Tensor, o: float | torch.Tensor, t: float = 1.5) -> torch.Tensor:
    """ReSTE (Wu et al., ICCV 2023): forward ``binarize(x)``; backward ``g(x) * grad`` with

    - ``g = m^(1/o) / m`` for ``|x| <= m = 0.1`` (rectified: the secant slope of ``|x|^(1/o)`` on [0, m]),
    - ``g = (1/o) |x|^((1-o)/o)`` for ``m < |x| <= t``,
    - ``g = 0`` for ``|x| > t``.

    ``o >= 1`` (1 is the clipped STE, larger o approaches sign) and ``t > 0.1``.
    """
    return sign_estimator(x, "reste", o, t)


def identity_ste_sign(x: torch.Tensor) -> torch.Tensor:
    """Unclipped straight-through estimator: forward ``binarize(x)``, gradient 1 everywhere."""
    return sign_estimator(x, "identity_ste")


def clipped_ste_sign(x: torch.Tensor, t: float = 1.0) -> torch.Tensor:
    """Clipped STE: forward ``binarize(x)``, gradient passed where ``|x| <= t``. At the default
    ``t = 1`` it is the STE of the ReSTE paper (and BinaryNet's: the derivative of hardtanh)."""
    return sign_estimator(x, "clipped_ste", t=t)


def ste_sign(x: torch.Tensor) -> torch.Tensor:
    """Refused: "ste" is ambiguous. Use :func:`clipped_ste_sign` (the paper's STE) or
    :func:`identity_ste_sign` (what this function computed in bnnkit 0.1)."""
    raise ValueError("ste_sign is ambiguous and no longer computes anything: use clipped_ste_sign (the ReSTE paper's "
                     "STE, gradient 1 where |x| <= 1) or identity_ste_sign (gradient 1 everywhere, bnnkit 0.1's "
                     "ste_sign)")


def approx_sign(x: torch.Tensor) -> torch.Tensor:
    """Bi-Real Net's ApproxSign: forward ``binarize(x)``, gradient ``2 - 2|x|`` for ``|x| <= 1``."""
    return sign_estimator(x, "approx_sign")


def binarize_weight(
    w: torch.Tensor, scale: str = "tensor", estimator: Estimator = "reste", o: float | torch.Tensor = 1.0,
    t: float | None = None,
) -> torch.Tensor:
    """Binary weight ``alpha * est(w)``; dim 0 of ``w`` is the output channel.

    ``scale``: ``"tensor"`` (alpha = mean |w| over the tensor, as the ReSTE reference code),
    ``"channel"`` (mean |w| per output channel) or ``"none"`` (alpha = 1). alpha is not
    detached, so gradients also flow through it.
    """
    check_scale_mode(scale)
    check_estimator(estimator, what="weight_estimator")
    if callable(estimator):
        b = estimator(w)
        if scale == "none":
            return b
        dims = tuple(range(w.dim())) if scale == "tensor" else tuple(range(1, w.dim()))
        return b * w.abs().mean(dim=dims, keepdim=True)
    _check_floating(w, "weight")
    kind = estimator_kind(estimator)
    t = threshold_for(estimator, t)
    check_estimator_params(kind, o, t)
    return ops.scaled_binarize(w, scale, kind, o, t)


__all__ = [
    "EstimatorKind",
    "approx_sign",
    "binarize",
    "binarize_weight",
    "clipped_ste_sign",
    "identity_ste_sign",
    "reste_sign",
    "sign_estimator",
]
