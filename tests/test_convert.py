"""bnnkit.binarize: converting a float model in place."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bnnkit
from bnnkit.nn import BinaryConv2d, BinaryLinear


class Block(nn.Module):
    """A torchvision-style BasicBlock."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + identity)


class TinyResNet(nn.Module):
    """The module layout of torchvision's ResNet: conv1, bn1, relu, maxpool, layer1.., avgpool, fc."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(Block(8, 8, 1))
        self.layer2 = nn.Sequential(Block(8, 16, 2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(self.layer2(self.layer1(x))), 1))


def kinds(model):
    return {n: type(m).__name__ for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def test_keeps_first_conv_and_last_linear_and_copies_weights():
    torch.manual_seed(0)
    model = TinyResNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert bnnkit.binarize(model) is model
    k = kinds(model)
    assert k["conv1"] == "Conv2d" and k["fc"] == "Linear"
    assert k["layer1.0.conv1"] == "BinaryConv2d" and k["layer2.0.downsample.0"] == "BinaryConv2d"
    after = model.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(before[n], after[n]) for n in before)
    y = model(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 5)
    y.sum().backward()
    assert model.layer1[0].conv1.weight.grad is not None


def test_binary_conv_computes_with_binarized_weights_after_conversion():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1, bias=True))
    bnnkit.binarize(model, keep_first=True, keep_last=False)
    conv = model[1]
    x = torch.randn(1, 4, 5, 5)
    wb = torch.where(conv.weight >= 0, 1.0, -1.0) * conv.weight.abs().mean()
    want = F.conv2d(torch.where(x >= 0, 1.0, -1.0), wb, conv.bias, padding=1)
    torch.testing.assert_close(conv(x), want)


def test_exclude_patterns_and_predicate():
    model = bnnkit.binarize(TinyResNet(), exclude=["*downsample*"])
    assert kinds(model)["layer2.0.downsample.0"] == "Conv2d"
    model = bnnkit.binarize(TinyResNet(), exclude=lambda name, m: name.endswith("conv2"))
    k = kinds(model)
    assert k["layer1.0.conv2"] == "Conv2d" and k["layer1.0.conv1"] == "BinaryConv2d"


def test_options_reach_the_layers():
    model = bnnkit.binarize(TinyResNet(), input_estimator=None, weight_estimator="approx_sign", scale="channel",
                            keep_first=False, keep_last=False)
    assert isinstance(model.conv1, BinaryConv2d) and isinstance(model.fc, BinaryLinear)
    assert model.fc.input_estimator is None and model.fc.weight_estimator == "approx_sign"
    assert model.fc.scale == "channel"


def test_mlp_keeps_first_and_last_linear():
    model = bnnkit.binarize(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2)))
    assert [type(m).__name__ for m in model if not isinstance(m, nn.ReLU)] == ["Linear", "BinaryLinear", "Linear"]


def test_idempotent_and_errors():
    model = bnnkit.binarize(TinyResNet())
    before = kinds(model)
    bnnkit.binarize(model)
    assert kinds(model) == before

    class MyConv(nn.Conv2d):
        pass

    with pytest.raises(TypeError, match=r"found: 1 \(MyConv\)"):
        bnnkit.binarize(nn.Sequential(nn.Conv2d(1, 1, 1), MyConv(1, 1, 1)))
    kept = bnnkit.binarize(nn.Sequential(nn.Conv2d(1, 1, 1), MyConv(1, 1, 1)), exclude=["1"])
    assert type(kept[1]) is MyConv
    with pytest.raises(ValueError, match="padding_mode='zeros'"):
        bnnkit.binarize(nn.Sequential(nn.Conv2d(1, 1, 1), nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular")))
