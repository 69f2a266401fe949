"""The model zoo: names, shapes, parameter counts (from independent formulas), architecture rules."""

import pytest
import torch
from torch import nn

from bnnkit import models
from bnnkit.models.common import PadChannelsShortcut
from bnnkit.nn import BinaryConv2d, BinaryLinear, binary_layers

PAPER_MODELS = ["resnet20", "resnet20_bireal", "resnet18_cifar", "vgg_small", "resnet18", "resnet34"]


def conv(cin, cout, k):
    return cin * cout * k * k


def bn(c):
    return 2 * c


def linear(i, o, bias=True):
    return i * o + (o if bias else 0)


def resnet20_params():
    n = conv(3, 16, 3) + bn(16)
    cin = 16
    for width in (16, 32, 64):
        for _ in range(3):
            n += conv(cin, width, 3) + bn(width) + conv(width, width, 3) + bn(width)
            cin = width
    return n + bn(64) + linear(64, 10)


def resnet18_cifar_params():
    n = conv(3, 64, 3) + bn(64)
    cin = 64
    for width in (64, 128, 256, 512):
        for _ in range(2):
            n += conv(cin, width, 3) + bn(width) + conv(width, width, 3) + bn(width)
            if cin != width:
                n += conv(cin, width, 1) + bn(width)
            cin = width
    return n + bn(512) + linear(512, 10)


def resnet_imagenet_params(blocks):
    n = conv(3, 64, 7) + bn(64)
    cin = 64
    for width, count in zip((64, 128, 256, 512), blocks):
        for _ in range(count):
            n += conv(cin, width, 3) + bn(width) + conv(width, width, 3) + bn(width)
            if cin != width:
                n += conv(cin, width, 1) + bn(width)
            cin = width
    return n + bn(512) + linear(512, 1000)


def vgg_small_params():
    widths = [3, 128, 128, 256, 256, 512, 512]
    return sum(conv(a, b, 3) + bn(b) for a, b in zip(widths, widths[1:])) + linear(512 * 16, 10)


EXPECTED_PARAMS = {
    "resnet20": resnet20_params(),
    "resnet20_bireal": resnet20_params(),
    "resnet18_cifar": resnet18_cifar_params(),
    "resnet18": resnet_imagenet_params([2, 2, 2, 2]),
    "resnet34": resnet_imagenet_params([3, 4, 6, 3]),
    "vgg_small": vgg_small_params(),
    "digits_mlp": linear(64, 512, False) + bn(512) + 2 * (linear(512, 512, False) + bn(512)) + linear(512, 10),
    "digits_cnn": conv(1, 32, 3) + bn(32) + conv(32, 64, 3) + bn(64) + conv(64, 64, 3) + bn(64) + bn(256)
    + linear(256, 10),
}


def test_zoo_names():
    assert models.list_models() == sorted(EXPECTED_PARAMS)
    with pytest.raises(ValueError, match="available models: digits_cnn"):
        models.create("resnet50")


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_parameter_count(name):
    model = models.create(name)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS[name]


def test_known_totals():
    # Cross-checks with published counts: torchvision resnet18/34 plus the BatchNorm1d(512)
    # before the classifier; the classic option-A ResNet-20 (269,722) plus BatchNorm1d(64).
    assert EXPECTED_PARAMS["resnet18"] == 11_689_512 + 1024
    assert EXPECTED_PARAMS["resnet34"] == 21_797_672 + 1024
    assert EXPECTED_PARAMS["resnet20"] == 269_722 + 128


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_forward_shape(name):
    info = models.model_info(name)
    shape = (3, 64, 64) if info.input_shape == (3, 224, 224) else info.input_shape
    model = models.create(name).eval()
    with torch.no_grad():
        y = model(torch.randn(2, *shape))
    assert y.shape == (2, info.num_classes)


def full_precision_layers(model):
    return [n for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and not isinstance(m, (BinaryConv2d, BinaryLinear))]


def test_which_layers_stay_full_precision():
    assert full_precision_layers(models.create("resnet20")) == ["conv1", "linear"]
    assert full_precision_layers(models.create("vgg_small")) == ["conv0", "fc"]
    fp18 = full_precision_layers(models.create("resnet18"))
    assert fp18 == ["conv1", "layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0", "fc"]
    fp18c = full_precision_layers(models.create("resnet18_cifar"))
    assert fp18c[0] == "conv1" and fp18c[-1] == "linear" and all("shortcut" in n for n in fp18c[1:-1])
    assert len(list(binary_layers(models.create("resnet20")))) == 18
    assert len(list(binary_layers(models.create("resnet34")))) == 32


def test_option_a_shortcut():
    model = models.create("resnet20")
    shortcut = model.layer2[0].shortcut
    assert isinstance(shortcut, PadChannelsShortcut) and shortcut.pad == 8
    x = torch.randn(1, 16, 8, 8)
    y = shortcut(x)
    assert y.shape == (1, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2]) and y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0


def test_block_order_is_conv_relu_bn():
    # conv -> ReLU -> BN: with BN in eval mode and identity stats, every BN input is >= 0.
    model = models.create("resnet20").eval()
    seen = []
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].min().item()))
    model(torch.randn(2, 3, 32, 32))
    assert len(seen) == 19 and min(seen) >= 0.0


def test_bireal_has_shortcut_per_conv():
    # With bn2's output zeroed, a Bi-Real block still returns its first half plus x (the
    # shortcut around conv1); the plain block returns only x.
    x = torch.randn(1, 16, 8, 8)
    outs = {}
    for name in ("resnet20", "resnet20_bireal"):
        block = models.create(name).layer1[0].eval()
        nn.init.zeros_(block.bn2.weight)
        nn.init.zeros_(block.bn2.bias)
        outs[name] = (block(x), block.bn1(torch.relu(block.conv1(x))))
    torch.testing.assert_close(outs["resnet20"][0], x)
    torch.testing.assert_close(outs["resnet20_bireal"][0], outs["resnet20_bireal"][1] + x)


def test_a32_and_estimator_options():
    model = models.create("resnet20", a32=True, estimator="identity_ste", scale="channel")
    layers = [m for _, m in binary_layers(model)]
    assert all(m.input_estimator is None and m.weight_estimator == "identity_ste" and m.scale == "channel" for m in layers)
    with pytest.raises(ValueError, match="bad arguments for model .resnet20.*it accepts: num_classes"):
        models.create("resnet20", width=3)
