"""ImageNet ResNet-18/34 of the ReSTE paper: Bi-Real style blocks (a shortcut per binary conv).

Stem 7x7/2 conv -> ReLU -> BN -> 3x3/2 max-pool (full precision); stages of binary blocks;
full-precision 1x1 stride-s downsample + BN; global average pool -> BatchNorm1d(512) -> Linear.
The reference pools with AvgPool2d(7); adaptive pooling is identical at 224x224 input and
also accepts other sizes.
"""

from __future__ import annotations

import torch
from torch import nn

from bnnkit.estimators import Estimator
from bnnkit.models.common import binary_conv3x3, check_common_args, init_bn_identity
from bnnkit.models.registry import register_model


class BiRealBasicBlock(nn.Module):
    """``out = bn1(relu(conv1(x))) + downsample(x)``; ``out = bn2(relu(conv2(out))) + out``."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, *,
                 estimator: Estimator = "reste", a32: bool = False, scale: str = "tensor") -> None:
        super().__init__()
        self.conv1 = binary_conv3x3(inplanes, planes, stride, estimator, a32, scale)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = binary_conv3x3(planes, planes, 1, estimator, a32, scale)
        self.bn2 = nn.BatchNorm2d(planes)
        self.nonlinear = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.bn1(self.nonlinear(self.conv1(x))) + residual
        return self.bn2(self.nonlinear(self.conv2(out))) + out


class ResNetImageNet(nn.Module):
    def __init__(self, layers: list[int], num_classes: int = 1000, *, estimator: Estimator = "reste",
                 a32: bool = False, scale: str = "tensor") -> None:
        super().__init__()
        check_common_args(type(self).__name__, num_classes, a32)
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.nonlinear1 = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        block_kw = dict(estimator=estimator, a32=a32, scale=scale)
        for i, (planes, n) in enumerate(zip([64, 128, 256, 512], layers)):
            setattr(self, f"layer{i + 1}", self._make_layer(planes, n, 1 if i == 0 else 2, block_kw))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.bn2 = nn.BatchNorm1d(512)
        self.fc = nn.Linear(512, num_classes)
        init_bn_identity(self)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int, block_kw: dict) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes))
        layers = [BiRealBasicBlock(self.inplanes, planes, stride, downsample, **block_kw)]
        self.inplanes = planes
        layers += [BiRealBasicBlock(planes, planes, **block_kw) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.bn1(self.nonlinear1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(x).flatten(1)
        return self.fc(self.bn2(x))


@register_model("resnet18", (3, 224, 224), 1000, "imagefolder", "ResNet-18 1w1a (ImageNet), Bi-Real style blocks")
def resnet18(num_classes: int = 1000, *, estimator: Estimator = "reste", a32: bool = False,
             scale: str = "tensor") -> ResNetImageNet:
    return ResNetImageNet([2, 2, 2, 2], num_classes, estimator=estimator, a32=a32, scale=scale)


@register_model("resnet34", (3, 224, 224), 1000, "imagefolder", "ResNet-34 1w1a (ImageNet), Bi-Real style blocks")
def resnet34(num_classes: int = 1000, *, estimator: Estimator = "reste", a32: bool = False,
             scale: str = "tensor") -> ResNetImageNet:
    return ResNetImageNet([3, 4, 6, 3], num_classes, estimator=estimator, a32=a32, scale=scale)
