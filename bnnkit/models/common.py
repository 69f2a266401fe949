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


def binary_conv3x3(in_planes: int, planes: int, stride: int, estimator: Estimator, a32: bool, scale: str) -> BinaryConv2d:
    """The zoo's binary 3x3 convolution: padding 1, no bias."""
    return BinaryConv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False, weight_estimator=estimator,
                        input_estimator=None if a32 else estimator, scale=scale)


def init_bn_identity(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
