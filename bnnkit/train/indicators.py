"""The ReSTE paper's two equilibrium indicators, computed as its reference code does.

- estimating error: sum over binary layers of ``|| f_{o_end}(w) - binarize(w) ||_2`` where
  ``f_o(w) = sign(w) |w|^(1/o)`` is the estimator's forward approximation (with o_end, not
  the current o);
- gradient stability: sum over binary layers of ``var(|grad w|)`` (unbiased variance).

The reference code sums over the binary convolutions of the ResNet stages (VGG: conv1..5);
here every binary layer of the model counts, which is the same set for the zoo's models.
With sign(0) = +1 a weight of exactly 0 adds 1 to the squared error (the reference, with
torch.sign, adds 0); nothing else differs.

The reference logs both at the last iteration of each epoch and reports, at the end of the
run, the mean estimating error over the epochs and the total (the sum) of the gradient
stability (:func:`run_indicators`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from bnnkit.kernels.binarize import binarize_reference
from bnnkit.nn.layers import binary_layers


def _zero(model: nn.Module) -> torch.Tensor:
    param = next(model.parameters(), None)
    return torch.zeros((), dtype=torch.float64, device=param.device if param is not None else "cpu")


@torch.no_grad()
def estimating_error_tensor(model: nn.Module, o_end: float) -> torch.Tensor:
    """:func:`estimating_error` as a 0-d float64 tensor on the model's device (no host read)."""
    total = _zero(model)
    for _, layer in binary_layers(model):
        w = layer.weight.detach().float().flatten()
        b = binarize_reference(w)
        total = total + torch.linalg.vector_norm(b * w.abs().pow(1.0 / o_end) - b).double()
    return total


@torch.no_grad()
def gradient_stability_tensor(model: nn.Module) -> torch.Tensor:
    """:func:`gradient_stability` as a 0-d float64 tensor on the model's device (no host read)."""
    total = _zero(model)
    for _, layer in binary_layers(model):
        if layer.weight.grad is not None and layer.weight.numel() > 1:
            total = total + torch.var(layer.weight.grad.detach().float().abs().flatten()).double()
    return total


def estimating_error(model: nn.Module, o_end: float) -> float:
    """``sum over binary layers of || sign(w) |w|^(1/o_end) - sign(w) ||_2`` (sign(0) = +1)."""
    return estimating_error_tensor(model, o_end).item()


def gradient_stability(model: nn.Module) -> float:
    """``sum over binary layers of var(|w.grad|)`` (unbiased); layers without a gradient add 0."""
    return gradient_stability_tensor(model).item()


def run_indicators(rows: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """The run's indicators as the reference reports them at the end, from per-epoch rows
    (``estimating_error``, ``gradient_stability``): ``mean_estimating_error`` (sum over epochs
    / epochs) and ``total_gradient_stability`` (sum over epochs). NaN without rows."""
    rows = list(rows)
    if not rows:
        return {"mean_estimating_error": math.nan, "total_gradient_stability": math.nan}
    return {"mean_estimating_error": math.fsum(r["estimating_error"] for r in rows) / len(rows),
            "total_gradient_stability": math.fsum(r["gradient_stability"] for r in rows)}
