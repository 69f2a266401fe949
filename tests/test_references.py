"""The PyTorch references that define bnnkit's semantics (and are the CPU fallback)."""

import math

import pytest
import torch

from bnnkit.kernels.binarize import binarize_reference
from bnnkit.kernels.bitpack import num_words, pack_signs_reference, unpack_signs_reference
from bnnkit.kernels.sign_grad import RESTE_M, EstimatorKind, estimator_slope_reference, sign_grad_reference
from bnnkit.kernels.weight_binarize import (
    scaled_binarize_backward_reference,
    scaled_binarize_forward_reference,
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_binarize_zero_is_plus_one(dtype):
    x = torch.tensor([-2.0, -0.0, 0.0, 1e-3, -1e-3, 3.0, float("nan")], dtype=dtype)
    y = binarize_reference(x)
    assert y.dtype == dtype
    assert y.tolist()[:6] == [-1, 1, 1, 1, -1, 1]
    assert y[6].item() == -1  # NaN -> -1, as `x >= 0` is false


def test_reste_slope_matches_paper_formula():
    o, t = 3.0, 1.5
    xs = [0.0, 0.05, RESTE_M, -RESTE_M, 0.1000001, 0.5, -0.5, t, -t, 1.5000001, 4.0, -4.0]
    g = estimator_slope_reference(torch.tensor(xs, dtype=torch.float64), EstimatorKind.RESTE, o, t)
    for x, gi in zip(xs, g.tolist()):
        a = abs(x)
        if a <= RESTE_M:
            want = RESTE_M ** (1 / o) / RESTE_M
        elif a <= t:
            want = (1 / o) * a ** ((1 - o) / o)
        else:
            want = 0.0
        assert gi == pytest.approx(want, rel=1e-12), x
    # the jump at |x| = m is intended: 4.642 inside, 1.547 just outside for o = 3
    assert g[2].item() == pytest.approx(4.6416, abs=1e-4)
    assert g[4].item() == pytest.approx(1.5472, abs=1e-4)


def test_reste_with_o_one_is_clipped_ste():
    x = torch.linspace(-3, 3, 601, dtype=torch.float64)
    a = estimator_slope_reference(x, EstimatorKind.RESTE, 1.0, 1.5)
    b = estimator_slope_reference(x, EstimatorKind.CLIPPED_STE, 1.0, 1.5)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-15)


@pytest.mark.parametrize("kind", list(EstimatorKind))
def test_nan_gradient(kind):
    g = sign_grad_reference(torch.tensor([float("nan")]), torch.ones(1), kind, 2.0, 1.5)
    assert g.item() == (1.0 if kind == EstimatorKind.IDENTITY_STE else 0.0)


@pytest.mark.parametrize("scale", ["tensor", "channel", "none"])
@pytest.mark.parametrize("kind", list(EstimatorKind))
def test_scaled_binarize_backward_equals_autograd(scale, kind):
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3, dtype=torch.float64)
    w[0, 0, 0, 0] = 0.0
    grad_out = torch.randn_like(w)
    o, t = 2.3, 1.5

    class Est(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return binarize_reference(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return sign_grad_reference(x, g, kind, o, t)

    wr = w.clone().requires_grad_(True)
    if scale == "none":
        expr = Est.apply(wr)
    else:
        dims = (0, 1, 2, 3) if scale == "tensor" else (1, 2, 3)
        expr = Est.apply(wr) * wr.abs().mean(dim=dims, keepdim=True)
    expr.backward(grad_out)

    out, alpha = scaled_binarize_forward_reference(w, scale)
    torch.testing.assert_close(out, expr.detach(), rtol=0, atol=0)
    grad = scaled_binarize_backward_reference(w, alpha, grad_out, scale, kind, o, t)
    torch.testing.assert_close(grad, wr.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("k", [1, 7, 31, 32, 33, 64, 100])
def test_pack_roundtrip_and_bit_order(k):
    torch.manual_seed(k)
    x = torch.randn(3, k)
    x[0, 0] = 0.0
    words = pack_signs_reference(x)
    assert words.dtype == torch.int32 and words.shape == (3, num_words(k))
    torch.testing.assert_close(unpack_signs_reference(words, k), binarize_reference(x), rtol=0, atol=0)
    # LSB first: element i is bit i of its word
    assert int(words[0, 0]) & 1 == 1
    for i in range(min(k, 32)):
        assert ((int(words[1, 0]) >> i) & 1) == int(x[1, i] >= 0)
    # padding bits are zero
    if k % 32:
        last = int(words[2, -1]) & 0xFFFFFFFF
        assert last >> (k % 32) == 0


def test_pack_all_ones_word_is_minus_one_int32():
    assert pack_signs_reference(torch.ones(32)).item() == -1
    assert math.isclose(unpack_signs_reference(torch.tensor([-1], dtype=torch.int32), 32).sum().item(), 32)
