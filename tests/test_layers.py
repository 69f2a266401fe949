"""BinaryConv2d / BinaryLinear: forward semantics, exact gradients, gradcheck, drop-in behaviour."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnnkit.kernels.binarize import binarize_reference
from bnnkit.kernels.sign_grad import EstimatorKind, sign_grad_reference
from bnnkit.kernels.weight_binarize import scaled_binarize_backward_reference
from bnnkit.nn import BinaryConv2d, BinaryLinear, binary_layers


def test_conv_forward_matches_reference_expression():
    torch.manual_seed(0)
    conv = BinaryConv2d(5, 7, 3, stride=2, padding=1, bias=True)
    x = torch.randn(2, 5, 9, 9)
    x[0, 0, 0, :3] = 0.0
    wb = binarize_reference(conv.weight) * conv.weight.abs().mean()
    want = F.conv2d(binarize_reference(x), wb, conv.bias, stride=2, padding=1)
    torch.testing.assert_close(conv(x), want, rtol=0, atol=0)


def test_zero_padding_contributes_zero_not_minus_one():
    conv = BinaryConv2d(1, 1, 3, padding=1, bias=False, scale="none")
    with torch.no_grad():
        conv.weight.fill_(1.0)
    y = conv(torch.ones(1, 1, 4, 4))
    assert y[0, 0, 0, 0].item() == 4.0  # corner: 4 real taps, 5 padded taps that add nothing
    assert y[0, 0, 1, 1].item() == 9.0


@pytest.mark.parametrize("scale", ["tensor", "channel", "none"])
def test_linear_gradients_equal_explicit_formula(scale):
    torch.manual_seed(1)
    layer = BinaryLinear(6, 4, bias=True, scale=scale, o=2.2, t=1.5).double()
    x = (torch.randn(3, 6, dtype=torch.float64) * 1.2).requires_grad_(True)
    grad_y = torch.randn(3, 4, dtype=torch.float64)
    layer(x).backward(grad_y)

    w = layer.weight.detach()
    xb = binarize_reference(x.detach())
    alpha = None if scale == "none" else w.abs().mean(dim=None if scale == "tensor" else 1, keepdim=scale != "tensor")
    wb = binarize_reference(w) * (1.0 if alpha is None else alpha)
    grad_xb = grad_y @ wb
    torch.testing.assert_close(x.grad, sign_grad_reference(x.detach(), grad_xb, EstimatorKind.RESTE, 2.2, 1.5))
    grad_wb = grad_y.T @ xb
    torch.testing.assert_close(layer.weight.grad,
                               scaled_binarize_backward_reference(w, alpha, grad_wb, scale, EstimatorKind.RESTE, 2.2, 1.5))
    torch.testing.assert_close(layer.bias.grad, grad_y.sum(0))


@pytest.mark.parametrize("scale", ["tensor", "channel"])
def test_gradcheck_with_smooth_estimator(scale):
    # With a differentiable estimator the layer is a smooth function, so gradcheck verifies its
    # plumbing in float64: estimator on inputs and weights, the scale alpha (not detached), conv.
    torch.manual_seed(2)
    conv = BinaryConv2d(2, 3, 3, padding=1, bias=True, weight_estimator=torch.tanh, input_estimator=torch.tanh,
                        scale=scale).double()
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):
        return torch.func.functional_call(conv, {"weight": w, "bias": b}, (x,))

    w = conv.weight.detach().clone().requires_grad_(True)
    b = conv.bias.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (x, w, b))


def test_gradcheck_real_input_path_of_a32_layer():
    torch.manual_seed(3)
    layer = BinaryLinear(5, 3, input_estimator=None).double()
    x = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


def test_drop_in_subclass_and_state_dict():
    conv = BinaryConv2d(3, 4, 3)
    assert isinstance(conv, nn.Conv2d)
    plain = nn.Conv2d(3, 4, 3)
    plain.load_state_dict(conv.state_dict())  # same keys, so float checkpoints load both ways
    conv.load_state_dict(plain.state_dict())
    lin = BinaryLinear(3, 2, bias=False)
    assert isinstance(lin, nn.Linear) and set(lin.state_dict()) == {"weight"}
    assert "reste" in repr(conv) and "scale=tensor" in repr(conv)


def test_binary_layers_lists_in_order():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), BinaryConv2d(2, 2, 1), nn.Flatten(), BinaryLinear(2, 2))
    assert [n for n, _ in binary_layers(model)] == ["1", "3"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="padding_mode='zeros'"):
        BinaryConv2d(1, 1, 3, padding=1, padding_mode="reflect")
    with pytest.raises(ValueError, match="unknown estimator 'sgn'"):
        BinaryLinear(2, 2, weight_estimator="sgn")
    with pytest.raises(ValueError, match="unknown weight scale"):
        BinaryLinear(2, 2, scale="layer")
    with pytest.raises(ValueError, match="weight_estimator must be"):
        BinaryLinear(2, 2, weight_estimator=None)
