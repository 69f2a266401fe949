"""Folding a binary layer and the ops that follow it into the packed layer's epilogue.

The trained layer computes ``conv(binarize(x), alpha * binarize(w)) + bias``; with the
integer accumulator ``acc = conv(binarize(x), binarize(w))`` that is ``alpha * acc + bias``
per output channel. A BatchNorm in eval mode is the affine ``y = x * m + (beta - mean * m)``
with ``m = gamma / sqrt(var + eps)``. Before the ReLU it folds into ``scale``/``bias``, after
it into ``post_scale``/``post_bias`` (conv -> ReLU -> BN, this model family's order).

Everything is folded in float64 from the trained (float32) parameters, as the trained model
evaluated in float64 computes them: the float epilogue stores these values rounded once to
float32, and the sign thresholds of a packed output are derived from the float64 values
(:func:`bnnkit.kernels.epilogue.sign_thresholds`), so a packed layer's output bits are the
signs the float64 trained model computes.
"""

from __future__ import annotations

import torch
from torch import nn

from bnnkit.kernels.binarize import binarize_reference
from bnnkit.kernels.weight_binarize import weight_scale_reference


class PackError(ValueError):
    """A model (or one of its layers) cannot be packed; the message names the layer and why."""


def bn_affine(bn: nn.modules.batchnorm._BatchNorm, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(m, c)`` with ``bn(x) == x * m + c`` in eval mode, float64 ``(C,)`` each, computed as
    PyTorch's BatchNorm computes its per-channel terms (``invstd = 1 / sqrt(var + eps)``,
    ``m = invstd * gamma``, ``c = beta - mean * m``)."""
    if bn.running_mean is None or bn.running_var is None:
        raise PackError(f"{name}: BatchNorm without running statistics (track_running_stats=False) normalizes "
                        "with batch statistics even in eval mode and cannot be folded")
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    m = (1.0 / torch.sqrt(var + bn.eps)) * gamma
    return m, beta - mean * m


def weight_alpha(layer: nn.Module) -> torch.Tensor:
    """The layer's weight scale per output channel, float64 ``(C_out,)``, as the trained layer
    computes it in float64 (``mean |w|`` of the float32 weights, summed in float64)."""
    w = layer.weight.detach().double()
    alpha = weight_scale_reference(w, layer.scale)
    c = w.shape[0]
    if alpha is None:
        return torch.ones(c, dtype=torch.float64)
    return alpha.double().reshape(-1).expand(c).clone()


def check_binary_forward(layer: nn.Module, name: str) -> None:
    """Packing assumes both binarizations are ``x >= 0 -> +1``; check callable estimators."""
    w = layer.weight.detach()
    if callable(layer.weight_estimator):
        with torch.no_grad():
            b = layer.weight_estimator(w)
        if not torch.equal(b.to(w.dtype), binarize_reference(w)):
            raise PackError(f"{name}: the callable weight estimator's forward is not binarize(w) (+1 for w >= 0, "
                            "-1 otherwise); only that forward can be packed to bits")
    if callable(layer.input_estimator):
        probe = torch.tensor([-3.0, -1e-6, 0.0, 1e-6, 0.5, 3.0, float("nan")], dtype=w.dtype)
        with torch.no_grad():
            b = layer.input_estimator(probe)
        if not torch.equal(b.to(w.dtype), binarize_reference(probe)):
            raise PackError(f"{name}: the callable input estimator's forward is not binarize(x) (+1 for x >= 0, "
                            "-1 otherwise); only that forward can be packed to bits")


def fold_epilogue(layer: nn.Module, bn_before: tuple[nn.Module, str] | None,
                  bn_after: tuple[nn.Module, str] | None) -> torch.Tensor:
    """``(4, C_out)`` float64 rows ``scale, bias, post_scale, post_bias`` of the layer followed
    by ``bn_before`` (before the ReLU, if any) and ``bn_after`` (after it)."""
    scale = weight_alpha(layer)
    c = scale.shape[0]
    bias = layer.bias.detach().double() if layer.bias is not None else torch.zeros(c, dtype=torch.float64)
    post_scale = torch.ones(c, dtype=torch.float64)
    post_bias = torch.zeros(c, dtype=torch.float64)
    if bn_before is not None:
        m, shift = (t.double() for t in bn_affine(*bn_before))
        scale, bias = scale * m, bias * m + shift
    if bn_after is not None:
        post_scale, post_bias = (t.double() for t in bn_affine(*bn_after))
    return torch.stack([scale, bias, post_scale, post_bias])
