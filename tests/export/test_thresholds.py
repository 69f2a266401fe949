"""Sign thresholds are derived in float64: a packed layer's output bits are the signs of the
trained model evaluated in float64, also where float32 rounding would flip one."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from bnnkit.backend import use_backend
from bnnkit.export import pack
from bnnkit.export.validation import Float64Reference
from bnnkit.kernels.epilogue import Epilogue, sign_thresholds, threshold_sign_reference
from bnnkit.nn.layers import BinaryLinear

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None)
value = st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False)


def float64_epilogue(scale, bias, post_scale, post_bias, relu) -> Epilogue:
    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    return Epilogue(scale=t(scale), bias=t(bias), relu=relu, post_scale=t(post_scale), post_bias=t(post_bias))


@PROPERTY
@given(k=st.integers(0, 5000), scale=value, bias=value, post_scale=value, post_bias=value, relu=st.booleans(),
       tie=st.booleans())
def test_float64_bisection_equals_evaluating_every_accumulator(k, scale, bias, post_scale, post_bias, relu, tie):
    if tie and scale != 0:  # put the sign change right at an integer, up to float64 rounding
        bias = -scale * round(k / 3)
    ep = float64_epilogue(scale, bias, post_scale, post_bias, relu)
    thr = sign_thresholds(ep, 1, k)
    acc = torch.arange(-k, k + 1, dtype=torch.int32)[:, None]
    y = acc.double() * scale + bias
    y = torch.relu(y) if relu else y
    assert torch.equal(threshold_sign_reference(acc, thr), y * post_scale + post_bias >= 0)


def tie_case():
    """Four latent weights and a bias where ``2 * alpha + bias`` is 0 after float32 rounding
    but not in float64 (alpha = mean |w| is not a float32 number)."""
    g = torch.Generator().manual_seed(0)
    for _ in range(1000):
        w = torch.rand(4, generator=g) + 0.05
        alpha64 = w.double().mean()
        bias = (-2 * alpha64).float()
        y64 = 2 * alpha64 + bias.double()
        y32 = 2 * w.mean() + bias
        if (y64 >= 0) != (y32 >= 0):
            return w, bias
    raise AssertionError("no float32 tie found")


def test_a_float32_tie_is_binarized_as_float64_says():
    w, bias = tie_case()
    model = torch.nn.Sequential(BinaryLinear(4, 1), BinaryLinear(1, 2, bias=False)).eval()
    with torch.no_grad():
        model[0].weight.copy_(w[None])  # all positive: acc = sum of the input signs
        model[0].bias.copy_(bias[None])
        model[1].weight.copy_(torch.tensor([[1.0], [-1.0]]))
    x = torch.tensor([[1.0, 1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0], [-1.0, -1.0, -1.0, -1.0]])  # acc 2, 0, -4
    packed = pack(model)
    assert packed.layers["0"]["output"] == "packed"
    thr = packed.body.get_submodule("0").thresholds
    float32_form = sign_thresholds(Epilogue(scale=w.mean()[None], bias=bias[None]), 1, 4)
    assert thr[0].item() != float32_form.lo.item()  # float32 folding would put the sign change elsewhere
    reference = Float64Reference(model)
    with torch.no_grad(), use_backend("torch"):
        assert torch.equal(packed(x).double(), reference.run(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_precision_follows_the_parameters(dtype):
    ep = Epilogue(scale=torch.tensor([0.1], dtype=dtype), bias=torch.tensor([-0.3], dtype=dtype))
    acc = torch.arange(-10, 11, dtype=torch.int32)[:, None]
    y = acc.to(dtype) * ep.scale + ep.bias
    assert torch.equal(threshold_sign_reference(acc, sign_thresholds(ep, 1, 10)), y >= 0)
