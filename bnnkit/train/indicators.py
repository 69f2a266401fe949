"""The ReSTE paper's two equilibrium indicators, computed as its reference code does.

- estimating error: sum over binary layers of ``|| f_{o_end}(w) - binarize(w) ||_2`` where
  ``f_o(w) = sign(w) |w|^(1/o)`` is the estimator's forward approximation (with o_end, not
  the current o);
- gradient stability: sum over binary layers of ``var(|grad w|)`` (unbiased variance).

The reference code sums over the binary convolutions of the ResNet stages (VGG: conv1..5);
here every binary layer of the model counts, which is the same set for the zoo's models.
"""

from __future__ import annotations

import torch
from torch import nn

from bnnkit.kernels.binarize import binarize_reference
from bnnkit.nn.layers import binary_layers


@torch.no_grad()
def estimating_error(model: nn.Module, o_end: float) -> float:
    total = 0.0
    for _, layer in binary_layers(model):
        w = layer.weight.detach().float().flatten()
        b = binarize_reference(w)
        total += torch.linalg.vector_norm(b * w.abs().pow(1.0 / o_end) - b).item()
    return total


@torch.no_grad()
def gradient_stability(model: nn.Module) -> float:
    total = 0.0
    for _, layer in binary_layers(model):
        if layer.weight.grad is not None and layer.weight.numel() > 1:
            total += torch.var(layer.weight.grad.detach().float().abs().flatten()).item()
    return total
