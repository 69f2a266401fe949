"""VGG-small of the ReSTE paper (CIFAR-10): FP conv0, binary conv1..conv5, Linear(8192, 10)."""

from __future__ import annotations

import math

import torch
from torch import nn

from bnnkit.estimators import Estimator
from bnnkit.models.common import binary_conv3x3, check_common_args
from bnnkit.models.registry import register_model


class VGGSmall(nn.Module):
    """conv -> ReLU -> BN per layer; 2x2 max-pool after bn1, bn3 and bn5; no BN before the classifier."""

    def __init__(self, num_classes: int = 10, *, estimator: Estimator = "reste", a32: bool = False,
                 scale: str = "tensor") -> None:
        super().__init__()
        check_common_args("vgg_small", num_classes, a32)
        self.conv0 = nn.Conv2d(3, 128, kernel_size=3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(128)
        widths = [128, 128, 256, 256, 512, 512]
        for i in range(1, 6):
            setattr(self, f"conv{i}", binary_conv3x3(widths[i - 1], widths[i], 1, estimator, a32, scale))
            setattr(self, f"bn{i}", nn.BatchNorm2d(widths[i]))
        self.pooling = nn.MaxPool2d(kernel_size=2, stride=2)
        self.nonlinear = nn.ReLU()
        self.fc = nn.Linear(512 * 4 * 4, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn0(self.nonlinear(self.conv0(x)))
        for i in range(1, 6):
            x = getattr(self, f"bn{i}")(self.nonlinear(getattr(self, f"conv{i}")(x)))
            if i % 2 == 1:
                x = self.pooling(x)
        return self.fc(x.flatten(1))


@register_model("vgg_small", (3, 32, 32), 10, "cifar10", "VGG-small 1w1a (CIFAR-10)")
def vgg_small(num_classes: int = 10, *, estimator: Estimator = "reste", a32: bool = False,
              scale: str = "tensor") -> VGGSmall:
    return VGGSmall(num_classes, estimator=estimator, a32=a32, scale=scale)
