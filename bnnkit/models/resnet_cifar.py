"""CIFAR-10 ResNets of the ReSTE paper (1w1a unless ``a32=True``).

Binary blocks use conv -> ReLU -> BN; stem conv, BatchNorms, 1x1 downsample convs and the
classifier stay full precision; global average pooling, then BatchNorm1d, then Linear.
Module names follow the reference code, so its checkpoints' keys line up.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bnnkit.estimators import Estimator
from bnnkit.models.common import PadChannelsShortcut, binary_conv3x3, check_common_args, init_bn_identity
from bnnkit.models.registry import register_model


class BasicBlock1w1a(nn.Module):
    """``out = bn2(relu(conv2(bn1(relu(conv1(x)))))) + shortcut(x)``.

    Where the shape changes the shortcut is option A (``PadChannelsShortcut``, ResNet-20) or
    option B (full-precision 1x1 conv + BN, ResNet-18), as in the reference code.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, *, estimator: Estimator = "reste",
                 a32: bool = False, scale: str = "tensor", option: str = "A") -> None:
        super().__init__()
        self.conv1 = binary_conv3x3(in_planes, planes, stride, estimator, a32, scale)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = binary_conv3x3(planes, planes, 1, estimator, a32, scale)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            if option == "A":
                self.shortcut = PadChannelsShortcut(planes // 4)
            elif option == "B":
                self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                              nn.BatchNorm2d(planes))
            else:
                raise ValueError(f"shortcut option must be 'A' or 'B', got {option!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(F.relu(self.conv1(x)))
        out = self.bn2(F.relu(self.conv2(out)))
        return out + self.shortcut(x)


class BiRealBlock1w1a(BasicBlock1w1a):
    """Bi-Real style: a shortcut around each binary conv."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(F.relu(self.conv1(x))) + self.shortcut(x)
        return self.bn2(F.relu(self.conv2(out))) + out


class DownsampleBlock1w1a(BasicBlock1w1a):
    """ResNet-18 (CIFAR) block: the basic block with option-B shortcuts (FP 1x1 conv + BN)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, **kwargs) -> None:
        super().__init__(in_planes, planes, stride, option="B", **kwargs)


class ResNetCifar(nn.Module):
    """Stem conv3x3 -> ReLU -> BN, stages of blocks, global avg pool, BatchNorm1d, Linear."""

    def __init__(self, block: type[nn.Module], num_blocks: list[int], widths: list[int], num_classes: int = 10, *,
                 estimator: Estimator = "reste", a32: bool = False, scale: str = "tensor") -> None:
        super().__init__()
        check_common_args(type(self).__name__, num_classes, a32)
        self.in_planes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        block_kw = dict(estimator=estimator, a32=a32, scale=scale)
        for i, (width, n) in enumerate(zip(widths, num_blocks)):
            stride = 1 if i == 0 else 2
            layers = []
            for s in [stride] + [1] * (n - 1):
                layers.append(block(self.in_planes, width, s, **block_kw))
                self.in_planes = width
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.num_stages = len(widths)
        self.bn2 = nn.BatchNorm1d(widths[-1])
        self.linear = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(F.relu(self.conv1(x)))
        for i in range(self.num_stages):
            out = getattr(self, f"layer{i + 1}")(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(self.bn2(out))


def _kaiming_init(model: nn.Module) -> None:
    """Reference ResNet-20 init: Kaiming normal (ReLU gain) for every conv and linear weight."""
    init_bn_identity(model)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")


@register_model("resnet20", (3, 32, 32), 10, "cifar10", "ResNet-20 1w1a (CIFAR-10), option-A shortcuts")
def resnet20(num_classes: int = 10, *, estimator: Estimator = "reste", a32: bool = False,
             scale: str = "tensor") -> ResNetCifar:
    model = ResNetCifar(BasicBlock1w1a, [3, 3, 3], [16, 32, 64], num_classes, estimator=estimator, a32=a32,
                        scale=scale)
    _kaiming_init(model)
    return model


@register_model("resnet20_bireal", (3, 32, 32), 10, "cifar10", "ResNet-20 1w1a with a shortcut per binary conv")
def resnet20_bireal(num_classes: int = 10, *, estimator: Estimator = "reste", a32: bool = False,
                    scale: str = "tensor") -> ResNetCifar:
    model = ResNetCifar(BiRealBlock1w1a, [3, 3, 3], [16, 32, 64], num_classes, estimator=estimator, a32=a32,
                        scale=scale)
    _kaiming_init(model)
    return model


@register_model("resnet18_cifar", (3, 32, 32), 10, "cifar10", "ResNet-18 1w1a (CIFAR-10), FP 1x1 downsample")
def resnet18_cifar(num_classes: int = 10, *, estimator: Estimator = "reste", a32: bool = False,
                   scale: str = "tensor") -> ResNetCifar:
    # The reference keeps PyTorch's default initialization for this model.
    return ResNetCifar(DownsampleBlock1w1a, [2, 2, 2, 2], [64, 128, 256, 512], num_classes, estimator=estimator,
                       a32=a32, scale=scale)
