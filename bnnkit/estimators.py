"""Straight-through estimators by name, larq-style.

Every estimator binarizes in the forward pass (+1 for x >= 0, -1 otherwise) and differs in
the pseudo-gradient of its backward pass (see :mod:`bnnkit.kernels.sign_grad`):

- ``"identity_ste"``: gradient 1 everywhere (Bengio et al.'s straight-through estimator,
  unclipped).
- ``"clipped_ste"``: gradient 1 inside ``|x| <= t``, 0 outside; ``t`` defaults to 1, which is
  the STE of the ReSTE paper and of its reference code (``Binary.backward``: 1 where
  ``|x| <= 1``), the derivative of hardtanh (BinaryNet's STE).
- ``"approx_sign"``: Bi-Real Net's ``2 - 2|x|`` inside ``|x| <= 1``.
- ``"reste"``: ReSTE (Wu et al., ICCV 2023), the derivative of ``sign(x)|x|^(1/o)``,
  rectified to ``m^(1/o)/m`` for ``|x| <= m = 0.1`` and clipped to 0 beyond ``t`` (default
  1.5, the paper's).

``"ste"`` is refused with a message: bnnkit 0.1 used it for the unclipped estimator while
the paper's STE is clipped, so the name is ambiguous. Runs saved under it still load and
resume (:func:`saved_estimator_name` maps it to ``"identity_ste"``).

Wherever bnnkit takes an estimator it also takes a callable ``f(x) -> Tensor`` that
implements both passes itself (e.g. an autograd.Function's ``apply``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Union

import torch

from bnnkit.kernels.sign_grad import RESTE_M, EstimatorKind

Estimator = Union[str, Callable[[torch.Tensor], torch.Tensor]]

ESTIMATORS: dict[str, EstimatorKind] = {kind.value: kind for kind in EstimatorKind}
"""The built-in estimators by name (the names are :class:`EstimatorKind`'s values)."""

RESTE_T = 1.5
"""ReSTE's default clipping threshold t (the paper's)."""
CLIPPED_STE_T = 1.0
"""The clipped STE's default threshold: the paper's STE passes gradients where ``|x| <= 1``."""
DEFAULT_THRESHOLDS: dict[EstimatorKind, float] = {EstimatorKind.RESTE: RESTE_T,
                                                  EstimatorKind.CLIPPED_STE: CLIPPED_STE_T}
"""The default ``t`` of the estimators that clip; the others take no threshold."""

RENAMED_ESTIMATORS: dict[str, str] = {"ste": "identity_ste"}
"""Estimator names of runs saved by bnnkit 0.1 -> the estimator they meant."""


def default_threshold(estimator: Estimator | None) -> float | None:
    """The default clipping threshold ``t`` of ``estimator``: 1.5 for ReSTE, 1 for the clipped
    STE, ``None`` for estimators that do not clip (and callables)."""
    if not isinstance(estimator, str):
        return None
    return DEFAULT_THRESHOLDS.get(estimator_kind(estimator))


def threshold_for(estimator: Estimator | None, t: float | None) -> float:
    """The ``t`` an estimator runs with: ``t`` when given, else its default (1.5 for those
    without one, where the value is unused)."""
    if t is not None:
        return float(t)
    default = default_threshold(estimator)
    return RESTE_T if default is None else default


def saved_estimator_name(name: Any) -> Any:
    """``name`` as read from a saved run, with the names bnnkit 0.1 used mapped to the
    estimator they meant (``"ste"`` -> ``"identity_ste"``); anything else unchanged."""
    return RENAMED_ESTIMATORS.get(name, name) if isinstance(name, str) else name


def list_estimators() -> list[str]:
    """Names of the built-in estimators."""
    return list(ESTIMATORS)


def estimator_kind(name: str) -> EstimatorKind:
    """The :class:`EstimatorKind` of a built-in estimator's name; unknown names raise, listing the valid ones."""
    try:
        return ESTIMATORS[name]
    except (KeyError, TypeError):
        if name in RENAMED_ESTIMATORS:
            raise ValueError(f"estimator {name!r} is ambiguous and no longer a name: bnnkit's old {name!r} is "
                             f"'identity_ste' (gradient 1 everywhere); the STE of the ReSTE paper is 'clipped_ste' "
                             f"(gradient 1 where |x| <= t, t = 1 by default)") from None
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
