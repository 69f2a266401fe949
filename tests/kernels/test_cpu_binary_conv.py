"""The native CPU binary convolution (numba) against the PyTorch reference: bit for bit, float
outputs included, for the direct form (C <= 64: uint16 / uint32 / uint64 lanes) and the im2col
form, any channel count, kernel size, stride and zero padding, every input layout and
encoding, output kind, epilogue form and thread split."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("numba")
from hypothesis import given, settings, strategies as st  # noqa: E402

from bnnkit.kernels.binary_conv import binary_conv2d_reference  # noqa: E402
from bnnkit.kernels.bitpack import pack_signs_reference  # noqa: E402
from bnnkit.kernels.cpu_binary_conv import cpu_binary_conv2d, cpu_pack_signs, lane_bytes_for  # noqa: E402
from bnnkit.kernels.epilogue import Epilogue, sign_thresholds  # noqa: E402
from bnnkit.kernels.weight_pack import pack_conv_weight  # noqa: E402
from cpu_testing import EXAMPLES, assert_bitwise, dirty_packed, task_split  # noqa: E402
from kernel_testing import poisoned, sign_edge_values  # noqa: E402

PROPERTY = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None)
LAYOUTS = ["nhwc", "nchw", "float16", "bfloat16", "packed"]


def _activation(x: torch.Tensor, layout: str, seed: int) -> torch.Tensor:
    """NHWC values ``x`` in one of the layouts a packed layer receives."""
    if layout == "nchw":  # a contiguous NCHW tensor seen as NHWC (what PackedConv2d gets on CPU)
        return x.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    if layout in ("float16", "bfloat16"):
        return x.to(getattr(torch, layout))
    if layout == "packed":
        return dirty_packed(x, seed)
    return x


def _int_reference(x: torch.Tensor, w: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """Independent of the reference: unfold with zero padding, int64 products."""
    a = torch.where(x >= 0, 1.0, -1.0).double().permute(0, 3, 1, 2)
    cols = F.unfold(a, w.shape[-2:], padding=padding, stride=stride).to(torch.int64)
    b = torch.where(w >= 0, 1, -1).to(torch.int64).reshape(w.shape[0], -1)
    out = torch.einsum("ok,nkl->nol", b, cols)
    oh = (x.shape[1] + 2 * padding - w.shape[-2]) // stride + 1
    ow = (x.shape[2] + 2 * padding - w.shape[-1]) // stride + 1
    return out.reshape(x.shape[0], w.shape[0], oh, ow).permute(0, 2, 3, 1).to(torch.int32).contiguous()


def _epilogue(co: int, g: torch.Generator, relu: bool) -> Epilogue:
    scale, post = torch.randn(co, generator=g), torch.randn(co, generator=g)
    if co > 2:
        scale[0], post[1] = 0.0, 0.0
    return Epilogue(scale=scale, bias=torch.randn(co, generator=g), relu=relu, post_scale=post,
                    post_bias=torch.randn(co, generator=g))


@PROPERTY
@given(n=st.integers(0, 2), h=st.integers(1, 9), w=st.integers(1, 9), c=st.integers(1, 80), co=st.integers(1, 70),
       k=st.sampled_from([1, 2, 3, 5]), stride=st.sampled_from([1, 2]), pad=st.integers(0, 2),
       seed=st.integers(0, 2**16), layout=st.sampled_from(LAYOUTS),
       kind=st.sampled_from(["acc", "float", "sign_int8", "packed"]),
       stage=st.sampled_from(["epilogue", "relu", "residual", "residual_nchw", "threshold"]),
       out_dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), split=st.booleans())
def test_bitwise_equal_to_the_reference(n, h, w, c, co, k, stride, pad, seed, layout, kind, stage, out_dtype, split):
    pad = min(pad, k - 1)
    h, w = max(h, k - 2 * pad), max(w, k - 2 * pad)
    g = torch.Generator().manual_seed(seed)
    x = sign_edge_values((n, h, w, c), torch.float32, seed)
    wt = torch.randn(co, c, k, k, generator=g)
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    a, weight = _activation(x, layout, seed), pack_conv_weight(wt)
    args = {}
    if kind != "acc":
        if stage == "threshold" and kind in ("sign_int8", "packed"):
            args["threshold"] = sign_thresholds(_epilogue(co, g, relu=True), co, k * k * c)
        else:
            args["epilogue"] = _epilogue(co, g, relu=stage != "epilogue")
            if stage.startswith("residual"):
                res = torch.randn(n, oh, ow, co, generator=g)
                args["residual"] = res.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1) \
                    if stage == "residual_nchw" else res
    width = (co + 31) // 32 if kind == "packed" else co
    dtype = {"acc": torch.int32, "float": out_dtype, "sign_int8": torch.int8, "packed": torch.int32}[kind]
    conv = dict(stride=stride, padding=pad, out_kind=kind, out_dtype=out_dtype, **args)
    with task_split(split):
        got = cpu_binary_conv2d(a, weight, c, out=poisoned((n, oh, ow, width), dtype, "cpu"), **conv)
    want = binary_conv2d_reference(a, weight, c, **conv)
    what = f"n={n} {h}x{w} c={c} co={co} k={k} s={stride} p={pad} {layout} {kind} {stage}"
    assert_bitwise(got, want, what)
    if kind == "acc":
        assert_bitwise(got, _int_reference(a.float() if a.is_floating_point() else x, wt, stride, pad),
                       f"{what} vs unfold")


@pytest.mark.parametrize("c", [16, 24, 32, 48, 64, 96, 128])
def test_every_form_pads_with_zero_not_minus_one(c):
    """All-negative input: padded taps add 0, so border outputs differ from the interior
    (direct form for C <= 64 with 2/4/8-byte lanes, im2col above)."""
    x = -torch.ones(2, 4, 5, c)
    got = cpu_binary_conv2d(x, pack_conv_weight(torch.ones(3, c, 3, 3)), c, padding=1, out_kind="acc")
    assert got[0, 0, 0, 0].item() == -c * 4 and got[1, 0, 1, 2].item() == -c * 6
    assert got[0, 1, 1, 1].item() == -c * 9
    assert lane_bytes_for(c, 9) == {16: 2, 24: 4, 32: 4, 48: 8, 64: 8}.get(c, 0)


@pytest.mark.parametrize("c,co,hw,stride", [(64, 64, 14, 1), (128, 96, 9, 2), (256, 256, 5, 1), (512, 64, 3, 1)])
def test_resnet_shapes(c, co, hw, stride):
    g = torch.Generator().manual_seed(c)
    x, wt = torch.randn(2, hw, hw, c, generator=g), torch.randn(co, c, 3, 3, generator=g)
    ep = _epilogue(co, g, relu=True)
    res = torch.randn(2, (hw - 1) // stride + 1, (hw - 1) // stride + 1, co, generator=g)
    for split in (False, True):
        with task_split(split):
            for args in ({"out_kind": "acc"}, {"epilogue": ep, "residual": res},
                         {"out_kind": "packed", "threshold": sign_thresholds(ep, co, 9 * c)}):
                got = cpu_binary_conv2d(x, pack_conv_weight(wt), c, stride=stride, padding=1, **args)
                want = binary_conv2d_reference(x, pack_conv_weight(wt), c, stride=stride, padding=1, **args)
                assert_bitwise(got, want, f"c={c} {args.get('out_kind', 'float')} split={split}")


@PROPERTY
@given(n=st.integers(0, 3), h=st.integers(1, 6), w=st.integers(1, 6), c=st.integers(1, 100),
       layout=st.sampled_from(["nhwc", "nchw", "sliced", "bfloat16"]), split=st.booleans(), seed=st.integers(0, 99))
def test_pack_signs_of_any_layout(n, h, w, c, layout, split, seed):
    x = sign_edge_values((n, 2 * h, 2 * w, c), torch.float32, seed)
    if layout == "sliced":
        x = x[:, ::2, 1::2]
    else:
        x = _activation(x[:, :h, :w].contiguous(), layout, seed)
    with task_split(split):
        got = cpu_pack_signs(x)
    assert got.is_contiguous()
    assert_bitwise(got, pack_signs_reference(x.float()), f"{layout} {tuple(x.shape)}")


def test_packed_output_feeds_the_next_conv():
    g = torch.Generator().manual_seed(5)
    x, w1, w2 = torch.randn(2, 5, 5, 20, generator=g), torch.randn(36, 20, 3, 3, generator=g), \
        torch.randn(17, 36, 3, 3, generator=g)
    ep = _epilogue(36, g, relu=True)
    bits = cpu_binary_conv2d(x, pack_conv_weight(w1), 20, padding=1, out_kind="packed",
                             threshold=sign_thresholds(ep, 36, 180))
    assert bits.shape == (2, 5, 5, 2) and bits.dtype == torch.int32
    got = cpu_binary_conv2d(bits, pack_conv_weight(w2), 36, padding=1, out_kind="acc")
    y = binary_conv2d_reference(x, pack_conv_weight(w1), 20, padding=1, epilogue=ep)
    assert_bitwise(got, _int_reference(y, w2, 1, 1), "two convs through packed bits")


def test_fallbacks_and_errors_are_the_references():
    x = torch.randn(1, 4, 4, 10)
    weight = pack_conv_weight(torch.randn(6, 10, 3, 3))
    assert_bitwise(cpu_binary_conv2d(x, weight, 10, real_input=True, out_kind="acc"),
                   binary_conv2d_reference(x, weight, 10, real_input=True, out_kind="acc"), "W1A16")
    for fn in (cpu_binary_conv2d, binary_conv2d_reference):
        with pytest.raises(ValueError, match="NHWC"):
            fn(x[0], weight, 10)
        with pytest.raises(ValueError, match="smaller than the 3x3 kernel"):
            fn(x[:, :1, :1], weight, 10)
        with pytest.raises(ValueError, match="residual must have shape"):
            fn(x, weight, 10, padding=1, residual=torch.zeros(1, 4, 4, 5))
    with pytest.raises(ValueError, match="4-D float CPU tensor"):
        cpu_pack_signs(torch.zeros(3, 4, dtype=torch.int32))
