"""Small 1w1a models for scikit-learn's 8x8 handwritten digits (inputs ``(N, 1, 8, 8)``, 10 classes).

They follow the zoo's conventions: full-precision first and last layers, binary layers in
between with the conv/linear -> ReLU -> BN order, so export and kernels treat them like the
paper's models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bnnkit.estimators import Estimator
from bnnkit.models.common import binary_conv3x3, check_common_args, check_size
from bnnkit.models.registry import register_model
from bnnkit.nn.layers import BinaryLinear


class DigitsMLP(nn.Module):
    """Flatten -> FP Linear(64, h) -> ReLU -> BN -> [BinaryLinear(h, h) -> ReLU -> BN] x depth -> FP Linear(h, 10)."""

    def __init__(self, num_classes: int = 10, hidden: int = 512, depth: int = 2, *, estimator: Estimator = "reste",
                 a32: bool = False, scale: str = "tensor") -> None:
        super().__init__()
        check_common_args("digits_mlp", num_classes, a32)
        check_size("digits_mlp", "hidden", hidden, 1, 8192)
        check_size("digits_mlp", "depth", depth, 1, 64)  # depth 0 would have no binary layer
        self.fc0 = nn.Linear(64, hidden, bias=False)
        self.bn0 = nn.BatchNorm1d(hidden)
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            self.blocks.append(nn.ModuleDict({
                "fc": BinaryLinear(hidden, hidden, bias=False, weight_estimator=estimator,
                                   input_estimator=None if a32 else estimator, scale=scale),
                "bn": nn.BatchNorm1d(hidden),
            }))
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn0(F.relu(self.fc0(x.flatten(1))))
        for block in self.blocks:
            x = block["bn"](F.relu(block["fc"](x)))
        return self.classifier(x)


class DigitsCNN(nn.Module):
    """FP conv(1->c) -> ReLU -> BN; binary conv(c->2c) -> ReLU -> BN -> pool; binary conv(2c->2c)
    -> ReLU -> BN -> pool; BatchNorm1d -> FP Linear(2c*2*2, 10)."""

    def __init__(self, num_classes: int = 10, channels: int = 32, *, estimator: Estimator = "reste",
                 a32: bool = False, scale: str = "tensor") -> None:
        super().__init__()
        check_common_args("digits_cnn", num_classes, a32)
        c = check_size("digits_cnn", "channels", channels, 1, 1024)
        self.conv0 = nn.Conv2d(1, c, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(c)
        self.conv1 = binary_conv3x3(c, 2 * c, 1, estimator, a32, scale)
        self.bn1 = nn.BatchNorm2d(2 * c)
        self.conv2 = binary_conv3x3(2 * c, 2 * c, 1, estimator, a32, scale)
        self.bn2 = nn.BatchNorm2d(2 * c)
        self.pool = nn.MaxPool2d(2)
        self.bn3 = nn.BatchNorm1d(2 * c * 4)
        self.classifier = nn.Linear(2 * c * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn0(F.relu(self.conv0(x)))
        x = self.pool(self.bn1(F.relu(self.conv1(x))))
        x = self.pool(self.bn2(F.relu(self.conv2(x))))
        return self.classifier(self.bn3(x.flatten(1)))


@register_model("digits_mlp", (1, 8, 8), 10, "digits", "1w1a MLP for the 8x8 digits (2 binary hidden layers)")
def digits_mlp(num_classes: int = 10, hidden: int = 512, depth: int = 2, *, estimator: Estimator = "reste",
               a32: bool = False, scale: str = "tensor") -> DigitsMLP:
    return DigitsMLP(num_classes, hidden, depth, estimator=estimator, a32=a32, scale=scale)


@register_model("digits_cnn", (1, 8, 8), 10, "digits", "1w1a CNN for the 8x8 digits (2 binary 3x3 convs)")
def digits_cnn(num_classes: int = 10, channels: int = 32, *, estimator: Estimator = "reste", a32: bool = False,
               scale: str = "tensor") -> DigitsCNN:
    return DigitsCNN(num_classes, channels, estimator=estimator, a32=a32, scale=scale)
