"""Binary convolution kernel against the integer reference (interpreter on CPU, real kernel on CUDA)."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")
from hypothesis import given, settings, strategies as st  # noqa: E402

from bnnkit.kernels.binary_conv import binary_conv2d, binary_conv2d_reference  # noqa: E402
from bnnkit.kernels.epilogue import Epilogue, sign_thresholds  # noqa: E402
from bnnkit.kernels.weight_pack import expand_weight_int8, pack_conv_weight  # noqa: E402
from kernel_testing import (  # noqa: E402
    FLOAT_OUT_TOL, assert_close, assert_equal, encode_activation, kernel_device, poisoned, sign_edge_values)

DEVICE = kernel_device()
PROPERTY = settings(max_examples=15, deadline=None, derandomize=True, database=None)


def _inputs(n, h, w, c, co, k, seed, zero_fraction=0.2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, w, c, generator=g)
    x[torch.rand(n, h, w, c, generator=g) < zero_fraction] = 0.0
    wt = torch.randn(co, c, k, k, generator=g)
    return x.to(DEVICE), wt.to(DEVICE)


def _int_reference(x, w, stride, padding):
    """Independent of the reference under test: unfold with zero padding, int64 products."""
    a = torch.where(x >= 0, 1, -1).to(torch.float64).permute(0, 3, 1, 2).cpu()  # NCHW
    cols = F.unfold(a, w.shape[-1], padding=padding, stride=stride).to(torch.int64)  # [N, C*k*k, L], pads are 0
    b = torch.where(w >= 0, 1, -1).to(torch.int64).reshape(w.shape[0], -1).cpu()
    out = torch.einsum("ok,nkl->nol", b, cols)
    oh = (x.shape[1] + 2 * padding - w.shape[-1]) // stride + 1
    return out.reshape(x.shape[0], w.shape[0], oh, -1).permute(0, 2, 3, 1).to(torch.int32).contiguous()


@PROPERTY
@given(n=st.integers(1, 2), h=st.integers(1, 7), w=st.integers(1, 7), c=st.integers(1, 70),
       co=st.integers(1, 40), k=st.sampled_from([1, 3]), stride=st.sampled_from([1, 2]), seed=st.integers(0, 2**16),
       encoding=st.sampled_from(["float", "half", "int8", "packed"]), weight_int8=st.booleans())
def test_accumulator_is_exact(n, h, w, c, co, k, stride, seed, encoding, weight_int8):
    padding = k // 2
    x, wt = _inputs(n, h, w, c, co, k, seed)
    weight = pack_conv_weight(wt)
    if weight_int8:
        weight = expand_weight_int8(weight, c)
    a = encode_activation(x, encoding)
    oh, ow = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    got = binary_conv2d(a, weight, c, stride=stride, padding=padding, out_kind="acc",
                        out=poisoned((n, oh, ow, co), torch.int32, DEVICE))
    want = binary_conv2d_reference(a, weight, c, stride=stride, padding=padding, out_kind="acc")
    assert_equal(got.cpu(), want.cpu(), f"conv acc {(n, h, w, c, co, k, stride)} {encoding}")
    assert_equal(want.cpu(), _int_reference(x, wt, stride, padding), "reference vs unfold")


def test_zero_padding_is_not_minus_one():
    """All-negative input: padded taps must add 0, so border outputs differ from the interior."""
    x = -torch.ones(1, 4, 4, 8, device=DEVICE)
    wt = torch.ones(3, 8, 3, 3, device=DEVICE)
    got = binary_conv2d(x, pack_conv_weight(wt), 8, padding=1, out_kind="acc").cpu()
    assert got[0, 0, 0, 0].item() == -8 * 4  # corner: 4 valid taps
    assert got[0, 0, 1, 0].item() == -8 * 6  # edge: 6 valid taps
    assert got[0, 1, 1, 0].item() == -8 * 9  # interior


def _epilogue(co, seed, relu):
    g = torch.Generator().manual_seed(seed)
    scale = torch.randn(co, generator=g)
    post = torch.randn(co, generator=g)
    if co > 2:
        scale[0], post[1] = 0.0, 0.0
    return Epilogue(scale=scale.to(DEVICE), bias=torch.randn(co, generator=g).to(DEVICE), relu=relu,
                    post_scale=post.to(DEVICE), post_bias=torch.randn(co, generator=g).to(DEVICE))


@PROPERTY
@given(h=st.integers(2, 6), c=st.integers(1, 40), co=st.integers(1, 70), stride=st.sampled_from([1, 2]),
       seed=st.integers(0, 2**16), relu=st.booleans(), residual=st.booleans(),
       out_dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_float_epilogue(h, c, co, stride, seed, relu, residual, out_dtype):
    x, wt = _inputs(1, h, h, c, co, 3, seed)
    ep = _epilogue(co, seed, relu)
    oh = (h + 2 - 3) // stride + 1
    res = torch.randn(1, oh, oh, co, generator=torch.Generator().manual_seed(seed)).to(DEVICE) if residual else None
    weight = pack_conv_weight(wt)
    got = binary_conv2d(x, weight, c, stride=stride, padding=1, epilogue=ep, residual=res, out_dtype=out_dtype,
                        out=poisoned((1, oh, oh, co), out_dtype, DEVICE))
    want = binary_conv2d_reference(x, weight, c, stride=stride, padding=1, epilogue=ep, residual=res,
                                   out_dtype=out_dtype)
    rtol, atol = FLOAT_OUT_TOL[out_dtype]
    assert_close(got.cpu(), want.cpu(), rtol, atol, f"conv float epilogue {out_dtype}")


@PROPERTY
@given(h=st.integers(2, 6), c=st.integers(1, 40), co=st.integers(1, 70), stride=st.sampled_from([1, 2]),
       seed=st.integers(0, 2**16), relu=st.booleans(), kind=st.sampled_from(["sign_int8", "packed"]))
def test_sign_outputs_from_thresholds_are_exact(h, c, co, stride, seed, relu, kind):
    x, wt = _inputs(1, h, h, c, co, 3, seed)
    ep = _epilogue(co, seed, relu)
    thr = sign_thresholds(ep, co, 9 * c)
    weight = pack_conv_weight(wt)
    got = binary_conv2d(x, weight, c, stride=stride, padding=1, out_kind=kind, threshold=thr)
    want = binary_conv2d_reference(x, weight, c, stride=stride, padding=1, out_kind=kind, epilogue=ep)
    assert_equal(got.cpu(), want.cpu(), f"conv {kind} from thresholds")


def test_packed_output_feeds_the_next_conv():
    """conv1 writes packed bits, conv2 reads them: the block layout of the packed model."""
    x, w1 = _inputs(2, 5, 5, 20, 36, 3, 3)
    _, w2 = _inputs(1, 1, 1, 36, 17, 3, 4)
    ep = _epilogue(36, 5, relu=True)
    bits = binary_conv2d(x, pack_conv_weight(w1), 20, padding=1, out_kind="packed",
                         threshold=sign_thresholds(ep, 36, 180))
    assert bits.shape == (2, 5, 5, 2) and bits.dtype == torch.int32
    got = binary_conv2d(bits, pack_conv_weight(w2), 36, padding=1, out_kind="acc")
    y = binary_conv2d_reference(x, pack_conv_weight(w1), 20, padding=1, epilogue=ep)
    assert_equal(got.cpu(), _int_reference(y, w2, 1, 1), "two convs through packed bits")


@pytest.mark.parametrize("in_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_w1a16_real_input(in_dtype):
    x, wt = _inputs(2, 5, 4, 19, 24, 3, 9)
    x = x.to(in_dtype)
    weight = pack_conv_weight(wt)
    got = binary_conv2d(x, weight, 19, stride=2, padding=1, real_input=True, out_kind="acc")
    want = binary_conv2d_reference(x, weight, 19, stride=2, padding=1, real_input=True, out_kind="acc")
    sign_w = torch.where(wt >= 0, 1.0, -1.0).double().cpu()
    exact = F.conv2d(x.double().cpu().permute(0, 3, 1, 2), sign_w, stride=2, padding=1).permute(0, 2, 3, 1)
    bound = 2e-6 * F.conv2d(x.double().abs().cpu().permute(0, 3, 1, 2), sign_w.abs(), stride=2,
                            padding=1).permute(0, 2, 3, 1) + 1e-6
    assert ((got.cpu().double() - exact).abs() <= bound).all()
    assert ((want.cpu().double() - exact).abs() <= bound).all()


def test_clear_errors():
    x, wt = _inputs(1, 4, 4, 10, 6, 3, 0)
    weight = pack_conv_weight(wt)
    with pytest.raises(ValueError, match="NHWC"):
        binary_conv2d(x[0], weight, 10)
    with pytest.raises(ValueError, match="expected C=10"):
        binary_conv2d(x[..., :9], weight, 10)
    with pytest.raises(ValueError, match="stride must be a positive int"):
        binary_conv2d(x, weight, 10, stride=0)
    with pytest.raises(ValueError, match="one int"):
        binary_conv2d(x, weight, 10, stride=(1, 2))
    with pytest.raises(ValueError, match="smaller than the 3x3 kernel"):
        binary_conv2d(x[:, :1, :1], weight, 10)
    with pytest.raises(TypeError, match="packed OHWI"):
        binary_conv2d(x, weight.float(), 10)
    with pytest.raises(ValueError, match="residual must have shape"):
        binary_conv2d(x, weight, 10, padding=1, residual=torch.zeros(1, 4, 4, 5, device=DEVICE))
    with pytest.raises(ValueError, match="words per tap"):
        binary_conv2d(torch.zeros(1, 4, 4, 40, device=DEVICE), weight, 40)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("c,stride", [(40, 1), (13, 2)])
def test_half_inputs_binarize_exactly(dtype, c, stride):
    """bf16 / fp16 NHWC activations binarized on load: the exact accumulator and exact
    threshold bits, zeros, -0.0, subnormals, infinities and NaN included."""
    x = sign_edge_values((2, 5, 6, c), dtype, seed=c)
    _, wt = _inputs(1, 1, 1, c, 24, 3, c)
    weight = pack_conv_weight(wt.cpu())
    got = binary_conv2d(x.to(DEVICE), weight.to(DEVICE), c, stride=stride, padding=1, out_kind="acc")
    assert_equal(got.cpu(), binary_conv2d_reference(x, weight, c, stride=stride, padding=1, out_kind="acc"), "acc")
    assert_equal(got.cpu(), _int_reference(x, wt, stride, 1), "acc vs unfold")
    ep = _epilogue(24, c, relu=True)
    thr = sign_thresholds(Epilogue(scale=ep.scale.cpu(), bias=ep.bias.cpu(), relu=True), 24, 9 * c)
    bits = binary_conv2d(x.to(DEVICE), weight.to(DEVICE), c, stride=stride, padding=1, out_kind="packed",
                         threshold=thr)
    assert_equal(bits.cpu(), binary_conv2d_reference(x, weight, c, stride=stride, padding=1, out_kind="packed",
                                                     threshold=thr), "packed bits")


@pytest.mark.parametrize("kind", ["float", "sign_int8", "packed", "acc"])
@pytest.mark.parametrize("encoding", ["float", "packed"])
def test_empty_batch_gives_an_empty_output_of_the_right_shape(kind, encoding):
    x = encode_activation(torch.zeros(0, 5, 5, 20, device=DEVICE), encoding)
    weight = pack_conv_weight(torch.randn(36, 20, 3, 3)).to(DEVICE)
    width = 2 if kind == "packed" else 36
    for fn in (binary_conv2d, binary_conv2d_reference):
        got = fn(x, weight, 20, stride=2, padding=1, out_kind=kind)
        assert got.shape == (0, 3, 3, width), f"{fn.__name__} {kind}"
