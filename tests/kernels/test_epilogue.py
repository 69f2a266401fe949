"""The epilogue references: the integer threshold form is exactly the float epilogue's sign."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from bnnkit.kernels.epilogue import INT32_MAX, INT32_MIN, Epilogue, SignThreshold, epilogue_reference, \
    finish_reference, sign_thresholds, threshold_sign_reference

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None)
finite = st.floats(-4.0, 4.0, allow_nan=False, width=32)


@PROPERTY
@given(k=st.integers(1, 300), scale=finite, bias=finite, post_scale=finite, post_bias=finite, relu=st.booleans(),
       zero=st.sampled_from([None, "scale", "post_scale", "both"]))
def test_threshold_form_equals_float_sign(k, scale, bias, post_scale, post_bias, relu, zero):
    """Every accumulator value in [-k, k], negative and zero folded scales included."""
    if zero in ("scale", "both"):
        scale = 0.0
    if zero in ("post_scale", "both"):
        post_scale = 0.0
    ep = Epilogue(scale=torch.tensor([scale]), bias=torch.tensor([bias]), relu=relu,
                  post_scale=torch.tensor([post_scale]), post_bias=torch.tensor([post_bias]))
    thr = sign_thresholds(ep, 1, k)
    acc = torch.arange(-k, k + 1, dtype=torch.int32)[:, None]
    assert torch.equal(threshold_sign_reference(acc, thr), epilogue_reference(acc, ep) >= 0)


def test_threshold_shapes_per_channel_kind():
    # channel 0: increasing (acc >= 3); 1: decreasing (acc <= -2); 2: always; 3: never
    ep = Epilogue(scale=torch.tensor([1.0, -1.0, 0.0, 0.0]), bias=torch.tensor([-2.5, -1.5, 1.0, -1.0]))
    thr = sign_thresholds(ep, 4, 10)
    assert thr.lo.tolist() == [3, INT32_MIN, INT32_MIN, INT32_MAX]
    assert thr.hi.tolist() == [INT32_MAX, -2, INT32_MAX, INT32_MIN]


def test_relu_then_negative_bn_scale():
    """conv -> ReLU -> BN with a negative BN scale: y >= 0 exactly where relu(acc*s + b) <= t."""
    ep = Epilogue(scale=torch.tensor([0.5]), bias=torch.tensor([0.0]), relu=True, post_scale=torch.tensor([-2.0]),
                  post_bias=torch.tensor([3.0]))
    thr = sign_thresholds(ep, 1, 20)
    assert (thr.lo.item(), thr.hi.item()) == (INT32_MIN, 3)  # 0.5 * acc <= 1.5


def test_finish_reference_outputs():
    acc = torch.tensor([[-3, 0, 5]], dtype=torch.int32)
    ep = Epilogue(scale=torch.tensor([1.0, 1.0, -1.0]))
    assert finish_reference(acc, out_kind="sign_int8", epilogue=ep).tolist() == [[-1, 1, -1]]
    assert finish_reference(acc, out_kind="packed", epilogue=ep).tolist() == [[0b010]]
    assert finish_reference(acc, out_kind="acc").tolist() == acc.tolist()
    y = finish_reference(acc, out_kind="float", epilogue=ep, residual=torch.ones(1, 3), out_dtype=torch.float16)
    assert y.dtype == torch.float16 and y.tolist() == [[-2.0, 1.0, -4.0]]


def test_nan_epilogue_output_is_minus_one():
    acc = torch.tensor([[1]], dtype=torch.int32)
    ep = Epilogue(bias=torch.tensor([float("nan")]))
    assert finish_reference(acc, out_kind="sign_int8", epilogue=ep).item() == -1


def test_errors():
    with pytest.raises(ValueError, match="finite"):
        sign_thresholds(Epilogue(bias=torch.tensor([float("inf")])), 1, 3)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        Epilogue(scale=torch.ones(3)).params(2, "cpu")
    with pytest.raises(TypeError, match="int32"):
        SignThreshold(torch.zeros(2), torch.zeros(2)).packed(2, "cpu")
