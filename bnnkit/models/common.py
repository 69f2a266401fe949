"""Pieces shared by the zoo's architectures."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bnnkit.estimators import Estimator
from bnnkit.nn.layers import BinaryConv2d


class PadChannelsShortcut(nn.Module):
    """ResNet option-A shortcut: ``x[:, :, ::2, ::2]`` zero-padded with ``pad`` channels on each side.

    Parameter-free; input ``(N, C, H, W)``, output ``(N, C + 2 * pad, ceil(H/2), ceil(W/2))``.
    """

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


MAX_CLASSES = 100_000
"""Largest ``num_classes`` a zoo model accepts (ImageNet-21k has 21,841)."""


def check_size(model: str, name: str, value: object, low: int, high: int) -> int:
    """``value`` if it is an int (not a bool) in ``[low, high]``; else a ValueError naming
    ``model``'s argument ``name`` and the accepted range. Bounds keep a typo or a crafted
    config from allocating without limit."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{model}: {name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def check_common_args(model: str, num_classes: object, a32: object) -> None:
    """The arguments every zoo model takes: ``num_classes`` in [1, MAX_CLASSES], ``a32`` a bool
    (estimator and scale are checked by the binary layers)."""
    check_size(model, "num_classes", num_classes, 1, MAX_CLASSES)
    if not isinstance(a32, bool):
        raise ValueError(f"{model}: a32 must be true or false, got {a32!r}")


def binary_conv3x3(in_planes: int, planes: int, stride: int, estimator: Estimator, a32: bool, scale: str) -> BinaryConv2d:
    """The zoo's binary 3x3 convolution: padding 1, no bias."""
    return BinaryConv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False, weight_estimator=estimator,
                        input_estimator=None if a32 else estimator, scale=scale)


def init_bn_identity(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
