"""``pack`` on the patterns users write: regressions of issue 12 and what pack fuses, leaves
unfused or refuses. Outputs are compared with the trained model in float64 (the packed
thresholds are derived in float64; see tests/export/test_pack_random.py for the generator)."""

import json

import pytest
import torch
from torch import nn

from bnnkit import models
from bnnkit.backend import use_backend
from bnnkit.export import PackError, load, pack
from bnnkit.nn.layers import BinaryConv2d, BinaryLinear


def assert_same_outputs(model: nn.Module, packed, x: torch.Tensor, rtol: float = 1e-5) -> None:
    """The packed model (torch backend) against the trained model in float64; the native CPU
    kernels give the torch backend's output bit for bit."""
    with torch.no_grad(), use_backend("torch"):
        want = model.double()(x.double())
        model.float()
        got = packed(x)
    with torch.no_grad(), use_backend("cpu"):
        native = packed(x)
    assert torch.equal(native, got), "the native CPU kernels differ from the reference"
    got = got.double()
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    assert (got - want).abs().max() <= rtol * want.abs().max()


def random_bn(bn: nn.modules.batchnorm._BatchNorm, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    c = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=g))
        bn.running_var.copy_(torch.rand(c, generator=g) + 0.2)
        bn.weight.copy_(torch.randn(c, generator=g))
        bn.bias.copy_(torch.randn(c, generator=g))


class TwoBranches(nn.Module):
    """``self.b(x) + self.c(x)``: two fusible binary chains meeting in one add."""

    def __init__(self, bn: bool) -> None:
        super().__init__()
        self.b = BinaryConv2d(5, 6, 3, padding=1, bias=False)
        self.c = BinaryConv2d(5, 6, 1, bias=False)
        self.bn_b = nn.BatchNorm2d(6) if bn else nn.Identity()
        self.bn_c = nn.BatchNorm2d(6) if bn else nn.Identity()
        self.head = BinaryConv2d(6, 3, 3)

    def forward(self, x):
        return self.head(self.bn_b(self.b(x)) + self.bn_c(self.c(x)))


class BinaryDownsampleBlock(nn.Module):
    """A ResNet block whose 1x1 stride-2 downsample is binary + BN."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = BinaryConv2d(4, 8, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.downsample = nn.Sequential(BinaryConv2d(4, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        out = self.bn1(torch.relu(self.conv1(x))) + self.downsample(x)
        return self.fc(out.mean((2, 3)))


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    for i, m in enumerate(model.modules()):
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            random_bn(m, seed + i)
    return model.eval()


@pytest.mark.parametrize("input_shape", [None, (5, 7, 7)], ids=["graph-proved", "shape-checked"])
@pytest.mark.parametrize("bn", [False, True], ids=["conv", "conv-bn"])
def test_two_binary_branches_into_one_add(bn, input_shape):
    torch.manual_seed(0)
    model = randomized(TwoBranches(bn))
    packed = pack(model, input_shape=input_shape)
    # the first branch in graph order takes the add as its residual; the second ends before it
    assert packed.layers["b"]["residual"] and not packed.layers["c"]["residual"]
    assert packed.layers["c"]["output"] == "float"
    assert_same_outputs(model, packed, torch.randn(3, 5, 7, 7))


@pytest.mark.parametrize("input_shape", [None, (4, 9, 9)], ids=["graph-proved", "shape-checked"])
def test_binary_downsample_with_batchnorm(input_shape):
    torch.manual_seed(1)
    model = randomized(BinaryDownsampleBlock())
    packed = pack(model, input_shape=input_shape)
    assert packed.layers["conv1"]["residual"] and packed.layers["downsample.0"]["output"] == "float"
    assert_same_outputs(model, packed, torch.randn(2, 4, 9, 9))


def test_real_input_layer_feeding_a_binarizing_layer_writes_floats():
    """A 1w32a layer's accumulator is real: the next binarization cannot be an integer threshold."""
    torch.manual_seed(2)
    model = nn.Sequential(BinaryLinear(8, 4, input_estimator=None), BinaryLinear(4, 2)).eval()
    packed = pack(model)
    assert packed.layers["0"] == {"input": "real", "output": "float", "relu": False, "residual": False}
    assert packed.layers["1"]["input"] == "binarize"
    assert_same_outputs(model, packed, torch.randn(16, 8))


def test_residual_of_another_shape_is_not_fused():
    """A broadcasting add (a (C, 1, 1) parameter, a pooled branch) stays an add."""

    class Broadcast(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = BinaryConv2d(3, 3, 3, padding=1)
            self.conv2 = BinaryConv2d(3, 3, 3, padding=1)
            self.shift = nn.Parameter(torch.randn(3, 1, 1))

        def forward(self, x):
            y = self.conv(x) + self.shift
            return self.conv2(y) + y.mean((2, 3), keepdim=True)

    torch.manual_seed(3)
    model = Broadcast().eval()
    for shape in (None, (3, 6, 6)):
        packed = pack(model, input_shape=shape)
        assert not packed.layers["conv"]["residual"] and not packed.layers["conv2"]["residual"]
        assert_same_outputs(model, packed, torch.randn(2, 3, 6, 6))


def test_batchnorm1d_on_a_3d_linear_output_is_not_folded():
    """On (N, L, F) BatchNorm1d normalizes L, not the linear layer's F outputs."""

    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = BinaryLinear(6, 5)
            self.bn = nn.BatchNorm1d(4)

        def forward(self, x):
            return self.bn(self.fc(x)).flatten(1)

    torch.manual_seed(4)
    model = randomized(Tokens())
    for shape in (None, (4, 6)):
        packed = pack(model, input_shape=shape)
        assert "bn" in dict(packed.body.named_modules())
        assert_same_outputs(model, packed, torch.randn(3, 4, 6))


def test_batchnorm1d_after_a_flattened_linear_is_folded():
    torch.manual_seed(5)
    model = randomized(nn.Sequential(nn.Flatten(), BinaryLinear(12, 7), nn.BatchNorm1d(7), nn.ReLU(),
                                     BinaryLinear(7, 3)))
    packed = pack(model)
    assert "2" not in dict(packed.body.named_modules())  # folded
    assert packed.layers["1"] == {"input": "binarize", "output": "packed", "relu": True, "residual": False}
    assert_same_outputs(model, packed, torch.randn(4, 3, 2, 2))


def test_a_layer_called_twice_gets_one_packed_layer_per_call():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = BinaryConv2d(4, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            return self.conv(self.bn(self.conv(x)))

    torch.manual_seed(6)
    model = randomized(Twice())
    packed = pack(model)
    assert set(packed.layers) == {"conv", "conv_call2"}
    assert_same_outputs(model, packed, torch.randn(2, 4, 5, 5))


def test_internal_failures_are_pack_errors_naming_the_layer(monkeypatch):
    from bnnkit.export.runtime.layers import PackedConv2d

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(PackedConv2d, "from_weight", broken)
    model = randomized(TwoBranches(bn=True))
    with pytest.raises(PackError, match=r"^b \(BinaryConv2d -> BatchNorm2d -> add\): fusing failed: RuntimeError: boom"):
        pack(model)


def test_refusals_name_the_module():
    class Overrides(BinaryConv2d):
        def forward(self, x):
            return super().forward(x) * 2

    grouped = nn.Sequential()
    grouped.add_module("block", nn.Sequential(BinaryConv2d(4, 4, 3, groups=2)))
    cases = {
        r"block\.0: grouped convolution": grouped,
        r"0: dilation \(2, 2\)": nn.Sequential(BinaryConv2d(4, 4, 3, dilation=2)),
        r"0: stride \(1, 2\) differs": nn.Sequential(BinaryConv2d(4, 4, 3, stride=(1, 2))),
        r"0: padding \(0, 1\) differs": nn.Sequential(BinaryConv2d(4, 4, 3, padding=(0, 1))),
        r"0: Overrides overrides BinaryConv2d\.forward": nn.Sequential(Overrides(4, 4, 3)),
    }
    for message, model in cases.items():
        with pytest.raises(PackError, match=message):
            pack(model)
    with pytest.raises(PackError, match="already packed"):
        pack(pack(nn.Sequential(BinaryLinear(4, 4))).body)
    with pytest.raises(PackError, match=r"does not run on input shape \(3, 8, 8\)"):
        pack(nn.Sequential(BinaryConv2d(4, 4, 3)), input_shape=(3, 8, 8))


@pytest.mark.parametrize("name", models.list_models())
def test_created_zoo_models_save_without_being_told(name, tmp_path):
    """``pack(create(name)).save(d)``: the model remembers its zoo name, kwargs and input shape."""
    model = models.create(name).eval()
    assert models.zoo_architecture(model) == {"name": name, "kwargs": {}}
    packed = pack(model)
    assert packed.architecture == {"name": name, "kwargs": {}}
    assert packed.input_shape == models.model_info(name).input_shape
    packed.save(tmp_path / "a")
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["architecture"] == {"name": name, "kwargs": {}}  # provenance: the graph is stored
    assert load(tmp_path / "a").layers == packed.layers


def test_remembered_kwargs_are_used_and_a_changed_model_is_not_called_a_zoo_model():
    model = models.create("digits_mlp", hidden=48, depth=1).eval()
    assert pack(model).architecture == {"name": "digits_mlp", "kwargs": {"hidden": 48, "depth": 1}}
    model.blocks[0]["fc"] = BinaryLinear(48, 48, bias=True)  # a tensor the zoo model does not have
    assert pack(model).architecture is None
    with pytest.raises(ValueError, match="does not describe this model"):
        pack(model, architecture={"name": "digits_mlp", "kwargs": {"hidden": 48, "depth": 1}})
    estimator = models.create("digits_mlp", hidden=16, estimator=lambda x: torch.where(x >= 0, 1.0, -1.0))
    assert pack(estimator.eval()).architecture is None  # kwargs that JSON cannot hold
