"""Folding a binary layer and the ops that follow it into the packed layer's epilogue.

The trained layer computes ``conv(binarize(x), alpha * binarize(w)) + bias``; with the
integer accumulator ``acc = conv(binarize(x), binarize(w))`` that is ``alpha * acc + bias``
per output channel. A BatchNorm in eval mode is the affine ``y = x * m + (beta - mean * m)``
with ``m = gamma / sqrt(var + eps)``. Before the ReLU it folds into ``scale``/``bias``, after
it into ``post_scale``/``post_bias`` (conv -> ReLU -> BN, this model family's order).
"""

from __future__ import annotations

import torch
from torch import nn

from bnnkit.kernels.binarize import binarize_reference
from bnnkit.kernels.weight_binarize import weight_scale_reference


class PackError(ValueError):
    """A model (or one of its layers) cannot be packed; the message names the layer and why."""


def bn_affine(bn: nn.modules.batchnorm._BatchNorm, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(m, c)`` with ``bn(x) == x * m + c`` in eval mode, float32, computed the way PyTorch's
    BatchNorm computes its own per-channel terms (``invstd = 1 / sqrt(var + eps)``,
    ``m = invstd * gamma``, ``c = beta - mean * m``), so the folded layer rounds alike."""
    if bn.running_mean is None or bn.running_var is None:
        raise PackError(f"{name}: BatchNorm without running statistics (track_running_stats=False) normalizes "
                        "with batch statistics even in eval mode and cannot be folded")
    var = bn.running_var.detach().float()
    mean = bn.running_mean.detach().float()
    gamma = bn.weight.detach().float() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().float() if bn.bias is not None else torch.zeros_like(var)
    m = (1.0 / torch.sqrt(var + bn.eps)) * gamma
    return m, beta - mean * m


def weight_alpha(layer: nn.Module) -> torch.Tensor:
    """The layer's weight scale per output channel, float64 ``(C_out,)``, as training computes it."""
    w = layer.weight.detach()
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


def fold_epilogue(layer: nn.Module, bn_before: tuple[nn.Module, str] | None, relu: bool,
                  bn_after: tuple[nn.Module, str] | None) -> torch.Tensor:
    """``(4, C_out)`` float32 rows ``scale, bias, post_scale, post_bias``."""
    scale = weight_alpha(layer)
    c = scale.shape[0]
    bias = layer.bias.detach().double() if getattr(layer, "bias", None) is not None else torch.zeros(c, dtype=torch.float64)
    post_scale = torch.ones(c, dtype=torch.float64)
    post_bias = torch.zeros(c, dtype=torch.float64)
    if bn_before is not None:
        m, shift = (t.double() for t in bn_affine(*bn_before))
        scale, bias = scale * m, bias * m + shift
    if bn_after is not None:
        post_scale, post_bias = (t.double() for t in bn_affine(*bn_after))
    return torch.stack([scale, bias, post_scale, post_bias]).float()
