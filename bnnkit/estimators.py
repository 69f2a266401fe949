"""Straight-through estimators by name, larq-style.

Every estimator binarizes in the forward pass (+1 for x >= 0, -1 otherwise) and differs in
the pseudo-gradient of its backward pass (see :mod:`bnnkit.kernels.sign_grad`):

- ``"ste"``: identity gradient.
- ``"clipped_ste"``: gradient 1 inside ``|x| <= t``, 0 outside.
- ``"approx_sign"``: Bi-Real Net's ``2 - 2|x|`` inside ``|x| <= 1``.
- ``"reste"``: ReSTE (Wu et al., ICCV 2023), the derivative of ``sign(x)|x|^(1/o)``,
  rectified to ``m^(1/o)/m`` for ``|x| <= m = 0.1`` and clipped to 0 beyond ``t``.

Wherever bnnkit takes an estimator it also takes a callable ``f(x) -> Tensor`` that
implements both passes itself (e.g. an autograd.Function's ``apply``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Union

import torch

from bnnkit.kernels.sign_grad import RESTE_M, EstimatorKind

Estimator = Union[str, Callable[[torch.Tensor], torch.Tensor]]

ESTIMATORS: dict[str, EstimatorKind] = {kind.value: kind for kind in EstimatorKind}
"""The built-in estimators by name (the names are :class:`EstimatorKind`'s values)."""


def list_estimators() -> list[str]:
    """Names of the built-in estimators."""
    return list(ESTIMATORS)


def estimator_kind(name: str) -> EstimatorKind:
    """The :class:`EstimatorKind` of a built-in estimator's name; unknown names raise, listing the valid ones."""
    try:
        return ESTIMATORS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown estimator {name!r}; valid estimators: {', '.join(ESTIMATORS)}") from None


def check_estimator(estimator: Estimator | None, *, allow_none: bool = False, what: str = "estimator") -> Estimator | None:
    """Validate an estimator given by name or callable (and ``None`` where allowed)."""
    if estimator is None:
        if allow_none:
            return None
        raise ValueError(f"{what} must be a name ({', '.join(ESTIMATORS)}) or a callable, not None")
    if isinstance(estimator, str):
        estimator_kind(estimator)
        return estimator
    if callable(estimator):
        return estimator
    raise TypeError(f"{what} must be a name ({', '.join(ESTIMATORS)}) or a callable, got {type(estimator).__name__}")


def check_o(o: float) -> float:
    """``o`` as a float after checking ReSTE's condition (finite, >= 1)."""
    if isinstance(o, bool) or not (isinstance(o, (int, float)) and math.isfinite(o) and o >= 1.0):
        raise ValueError(f"ReSTE needs a finite o >= 1 (o = 1 is the clipped STE), got o={o!r}")
    return float(o)


def check_estimator_params(kind: EstimatorKind, o: float | torch.Tensor, t: float) -> None:
    """Validate the parameters an estimator uses: ReSTE needs o >= 1 and t > m = 0.1;
    the clipped STE needs t > 0.

    ``o`` may also be a 0-d floating-point tensor (what the binary layers pass, so that
    torch.compile does not recompile when o changes); only its shape and dtype are checked
    here, since reading its value would break compiled graphs. Its value is checked where it
    is set (:attr:`bnnkit.nn.BinaryLayer.o`)."""
    if kind == EstimatorKind.RESTE:
        if isinstance(o, torch.Tensor):
            if o.dim() != 0 or not o.is_floating_point():
                raise ValueError(f"o must be a float or a 0-d floating-point tensor, got a tensor of shape "
                                 f"{tuple(o.shape)} and dtype {o.dtype}")
        else:
            check_o(o)
        if not (isinstance(t, (int, float)) and math.isfinite(t) and t > RESTE_M):
            raise ValueError(f"ReSTE needs a finite clipping threshold t > {RESTE_M} (the rectified interval), got t={t!r}")
    elif kind == EstimatorKind.CLIPPED_STE:
        if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
            raise ValueError(f"the clipped STE needs a finite threshold t > 0, got t={t!r}")
