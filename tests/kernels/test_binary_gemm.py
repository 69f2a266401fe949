"""Binary GEMM kernels against the integer reference (interpreter on CPU, real kernels on CUDA).

Integer accumulators, signs and bits are compared exactly; float outputs with the per-dtype
tolerances of kernel_testing.FLOAT_OUT_TOL; W1A16 with a bound on float32 summation error.
"""

import pytest
import torch

pytest.importorskip("triton")
from hypothesis import given, settings, strategies as st  # noqa: E402

from bnnkit.kernels.binary_gemm import GEMV_MAX_M, binary_gemm, binary_gemm_reference  # noqa: E402
from bnnkit.kernels.epilogue import Epilogue, KernelStage, OutputKind, SignThreshold, sign_thresholds  # noqa: E402
from bnnkit.kernels.bitpack import pack_signs_reference  # noqa: E402
from bnnkit.kernels.weight_pack import aligned_words, expand_weight_int8, pack_linear_weight  # noqa: E402
from kernel_testing import (  # noqa: E402
    FLOAT_OUT_TOL, assert_close, assert_equal, encode_activation, kernel_device, poisoned, sign_edge_values)

DEVICE = kernel_device()
PROPERTY = settings(max_examples=20, deadline=None, derandomize=True, database=None)


def _inputs(m: int, n: int, k: int, seed: int, zero_fraction: float = 0.2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    x[torch.rand(m, k, generator=g) < zero_fraction] = 0.0  # exact zeros binarize to +1
    w = torch.randn(n, k, generator=g)
    w[torch.rand(n, k, generator=g) < zero_fraction] = 0.0
    return x.to(DEVICE), w.to(DEVICE)


def _int_reference(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Independent of the reference under test: int64 sum of products of ±1."""
    a = torch.where(x >= 0, 1, -1).to(torch.int64).cpu()
    b = torch.where(w >= 0, 1, -1).to(torch.int64).cpu()
    return (a[:, None, :] * b[None, :, :]).sum(-1).to(torch.int32)


@PROPERTY
@given(m=st.integers(1, 40), n=st.integers(1, 70), k=st.integers(1, 200), seed=st.integers(0, 2**16),
       encoding=st.sampled_from(["float", "half", "int8", "packed"]), weight_int8=st.booleans(),
       route=st.sampled_from([None, "mma", "gemv"]))
def test_accumulator_is_exact(m, n, k, seed, encoding, weight_int8, route):
    x, w = _inputs(m, n, k, seed)
    if route == "gemv" and (m > GEMV_MAX_M or weight_int8 or encoding == "int8"):
        route = "mma"
    a = encode_activation(x, encoding)
    weight = expand_weight_int8(pack_linear_weight(w), k) if weight_int8 else pack_linear_weight(w)
    out = poisoned((m, n), torch.int32, DEVICE)
    got = binary_gemm(a, weight, k, out_kind="acc", out=out, route=route)
    want = binary_gemm_reference(a, weight, k, out_kind="acc")
    assert got is out
    assert_equal(got.cpu(), want.cpu(), f"acc m={m} n={n} k={k} {encoding} route={route}")
    assert_equal(want.cpu(), _int_reference(x, w), "reference vs int64 sum")


@pytest.mark.parametrize("m,n,k", [(1, 96, 256), (16, 64, 208), (70, 96, 128)])
@pytest.mark.parametrize("encoding", ["int8", "packed", "float"])
def test_tma_descriptor_path(m, n, k, encoding):
    """The TMA path (sm_90) under the interpreter: 16-byte aligned rows; K = 208 has a K tail."""
    if DEVICE == "cuda" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("TMA descriptors need sm_90+")
    x, w = _inputs(m, n, k, 7)
    weight = aligned_words(pack_linear_weight(w))
    a = encode_activation(x, encoding)
    if encoding == "packed":
        a = aligned_words(a)
    got = binary_gemm(a, weight, k, out_kind="acc", route="mma", use_descriptors=True)
    assert_equal(got.cpu(), _int_reference(x, w), f"tma acc {encoding}")


def test_descriptor_request_on_misaligned_rows_is_an_error():
    x, w = _inputs(4, 8, 33, 0)
    with pytest.raises(ValueError, match="16-byte aligned"):
        binary_gemm(x, pack_linear_weight(w), 33, route="mma", use_descriptors=True)


def _epilogue(n: int, seed: int, relu: bool, zero_scales: bool = True) -> Epilogue:
    g = torch.Generator().manual_seed(seed)
    scale = torch.randn(n, generator=g)
    post = torch.randn(n, generator=g)
    if zero_scales and n > 2:
        scale[0] = 0.0  # constant channel
        post[1] = 0.0
    return Epilogue(scale=scale.to(DEVICE), bias=torch.randn(n, generator=g).to(DEVICE), relu=relu,
                    post_scale=post.to(DEVICE), post_bias=torch.randn(n, generator=g).to(DEVICE))


@PROPERTY
@given(m=st.integers(1, 24), n=st.integers(1, 80), k=st.integers(1, 150), seed=st.integers(0, 2**16),
       relu=st.booleans(), residual=st.booleans(), out_dtype=st.sampled_from([torch.float32, torch.float16,
                                                                               torch.bfloat16]),
       route=st.sampled_from(["mma", "gemv"]))
def test_float_epilogue(m, n, k, seed, relu, residual, out_dtype, route):
    route = route if m <= GEMV_MAX_M else "mma"
    x, w = _inputs(m, n, k, seed)
    ep = _epilogue(n, seed, relu)
    res = torch.randn(m, n, generator=torch.Generator().manual_seed(seed)).to(DEVICE) if residual else None
    weight = pack_linear_weight(w)
    got = binary_gemm(x, weight, k, epilogue=ep, residual=res, out_dtype=out_dtype, route=route,
                      out=poisoned((m, n), out_dtype, DEVICE))
    want = binary_gemm_reference(x, weight, k, epilogue=ep, residual=res, out_dtype=out_dtype)
    rtol, atol = FLOAT_OUT_TOL[out_dtype]
    assert_close(got.cpu(), want.cpu(), rtol, atol, f"float epilogue {out_dtype}")


@PROPERTY
@given(m=st.integers(1, 24), n=st.integers(1, 80), k=st.integers(1, 150), seed=st.integers(0, 2**16),
       relu=st.booleans(), kind=st.sampled_from(["sign_int8", "packed"]), route=st.sampled_from(["mma", "gemv"]))
def test_sign_outputs_from_thresholds_are_exact(m, n, k, seed, relu, kind, route):
    """The integer threshold form gives exactly the sign of the reference float epilogue."""
    route = route if m <= GEMV_MAX_M else "mma"
    x, w = _inputs(m, n, k, seed)
    ep = _epilogue(n, seed, relu)
    thr = sign_thresholds(ep, n, k)
    weight = pack_linear_weight(w)
    words = (n + 31) // 32
    shape = (m, words) if kind == "packed" else (m, n)
    got = binary_gemm(x, weight, k, out_kind=kind, threshold=thr, route=route,
                      out=poisoned(shape, torch.int32 if kind == "packed" else torch.int8, DEVICE))
    want = binary_gemm_reference(x, weight, k, out_kind=kind, epilogue=ep)
    assert_equal(got.cpu(), want.cpu(), f"{kind} from thresholds")


@PROPERTY
@given(m=st.integers(1, 24), n=st.integers(1, 80), k=st.integers(1, 150), seed=st.integers(0, 2**16),
       residual=st.booleans(), kind=st.sampled_from(["sign_int8", "packed"]))
def test_sign_outputs_from_float_epilogue(m, n, k, seed, residual, kind):
    """Signs of the float epilogue (with a residual the threshold form does not apply).

    Tolerance: where the reference ``|y|`` is below 1e-4 the float32 rounding of the two
    implementations (FMA or not) may decide the sign; everywhere else the bits agree.
    """
    x, w = _inputs(m, n, k, seed)
    ep = _epilogue(n, seed, relu=True)
    res = torch.randn(m, n, generator=torch.Generator().manual_seed(seed)).to(DEVICE) if residual else None
    weight = pack_linear_weight(w)
    got = binary_gemm(x, weight, k, out_kind=kind, epilogue=ep, residual=res)
    want = binary_gemm_reference(x, weight, k, out_kind=kind, epilogue=ep, residual=res)
    y = binary_gemm_reference(x, weight, k, epilogue=ep, residual=res).cpu()
    if kind == "packed":
        got, want = _unpack_bits(got.cpu(), n), _unpack_bits(want.cpu(), n)
    differ = got.cpu() != want.cpu()
    assert not (differ & (y.abs() >= 1e-4)).any(), f"{int(differ.sum())} signs differ away from y = 0"


def _unpack_bits(words: torch.Tensor, n: int) -> torch.Tensor:
    shifts = torch.arange(32, dtype=torch.int32)
    return ((words.unsqueeze(-1) >> shifts) & 1).reshape(*words.shape[:-1], -1)[..., :n]


def test_packed_output_padding_bits_are_zero():
    x, w = _inputs(5, 37, 64, 1)
    ep = Epilogue(bias=torch.ones(37, device=DEVICE) * 1000.0)  # every output positive: all valid bits 1
    got = binary_gemm(x, pack_linear_weight(w), 64, out_kind="packed", epilogue=ep).cpu()
    assert got.shape == (5, 2)
    assert (got[:, 0] == -1).all()  # 32 ones
    assert (got[:, 1] == 0b11111).all()  # 5 ones, 27 zero padding bits


@pytest.mark.parametrize("in_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m,n,k", [(1, 8, 5), (20, 33, 70), (65, 40, 130)])
def test_w1a16_real_input(in_dtype, m, n, k):
    x, w = _inputs(m, n, k, 11)
    x = x.to(in_dtype)
    weight = pack_linear_weight(w)
    got = binary_gemm(x, weight, k, real_input=True, out_kind="acc", out=poisoned((m, n), torch.float32, DEVICE))
    want = binary_gemm_reference(x, weight, k, real_input=True, out_kind="acc")
    # fp32 accumulation of exact products (x * ±1); fp32 inputs as 3xTF32 on GPU (~2^-21 relative)
    bound = 2e-6 * x.float().abs().sum(-1, keepdim=True).cpu() + 1e-6
    assert ((got.cpu() - want.cpu()).abs() <= bound).all()
    sign_w = torch.where(w >= 0, 1.0, -1.0).double().cpu()
    assert_close(want.cpu(), (x.double().cpu() @ sign_w.T).float(), 1e-6, 1e-5, "reference vs float64")


def test_leading_dims_and_int8_weights():
    x, w = _inputs(6, 10, 45, 2)
    x3 = x.reshape(2, 3, 45)
    weight = pack_linear_weight(w)
    got = binary_gemm(x3, expand_weight_int8(weight, 45), 45, out_kind="acc")
    assert got.shape == (2, 3, 10)
    assert_equal(got.reshape(6, 10).cpu(), _int_reference(x, w), "3-D input")


def test_garbage_padding_bits_in_packed_input_are_ignored_by_popcount():
    x, w = _inputs(3, 16, 40, 5)
    a = pack_signs_reference(x)
    a[:, 1] |= ~((1 << 8) - 1)  # set the 24 padding bits of the last word
    got = binary_gemm(a, pack_linear_weight(w), 40, out_kind="acc", route="gemv")
    assert_equal(got.cpu(), _int_reference(x, w), "popcount with dirty padding")


def test_clear_errors():
    x, w = _inputs(4, 8, 40, 0)
    weight = pack_linear_weight(w)
    with pytest.raises(ValueError, match="expected K=40"):
        binary_gemm(x[:, :39], weight, 40)
    with pytest.raises(ValueError, match="needs 2"):
        binary_gemm(x, weight[:, :1], 40)
    with pytest.raises(TypeError, match="int32 .packed bits. or int8"):
        binary_gemm(x, weight.float(), 40)
    with pytest.raises(TypeError, match="activations must be"):
        binary_gemm(x.double(), weight, 40)
    with pytest.raises(ValueError, match="unknown output kind"):
        binary_gemm(x, weight, 40, out_kind="bits")
    with pytest.raises(ValueError, match="residual must have shape"):
        binary_gemm(x, weight, 40, residual=torch.zeros(4, 7, device=DEVICE))
    with pytest.raises(ValueError, match="sign_int8 or packed"):
        binary_gemm(x, weight, 40, threshold=SignThreshold(torch.zeros(8, dtype=torch.int32),
                                                           torch.zeros(8, dtype=torch.int32)))
    with pytest.raises(ValueError, match="epilogue scale must have shape"):
        binary_gemm(x, weight, 40, epilogue=Epilogue(scale=torch.ones(3, device=DEVICE)))
    with pytest.raises(ValueError, match="popcount route"):
        binary_gemm(x, weight, 40, real_input=True, route="gemv")
    with pytest.raises(ValueError, match="out must be"):
        binary_gemm(x, weight, 40, out=torch.empty(4, 8, dtype=torch.float16, device=DEVICE))
    with pytest.raises(ValueError, match="reduction length"):
        binary_gemm(x, weight, 0)
    for fn in (binary_gemm, binary_gemm_reference):
        with pytest.raises(TypeError, match="W1A16"):
            fn(pack_signs_reference(x), weight, 40, real_input=True)
    assert OutputKind("packed").code == 3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("route,use_descriptors,m", [("mma", False, 33), ("mma", True, 33), ("gemv", None, 5),
                                                     ("gemv", None, 16)])
def test_half_inputs_binarize_exactly_on_every_route(dtype, route, use_descriptors, m):
    """bf16 / fp16 activations binarized on load: every route gives the exact accumulator,
    zeros, -0.0, subnormals, infinities and NaN included (the interpreter's own bf16 compare
    is wrong; the kernels compare through bnnkit.kernels.bits.nonnegative)."""
    if use_descriptors and DEVICE == "cuda" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("TMA descriptors need sm_90+")
    k = 256 if use_descriptors else 200
    x = sign_edge_values((m, k), dtype, seed=m + k)
    w = torch.randn(24, k, generator=torch.Generator().manual_seed(1))
    weight = aligned_words(pack_linear_weight(w)) if use_descriptors else pack_linear_weight(w)
    got = binary_gemm(x.to(DEVICE), weight.to(DEVICE), k, out_kind="acc", route=route,
                      use_descriptors=use_descriptors, out=poisoned((m, 24), torch.int32, DEVICE))
    assert_equal(got.cpu(), binary_gemm_reference(x, weight, k, out_kind="acc"), f"{dtype} {route}")
    assert_equal(got.cpu(), _int_reference(x, w), f"{dtype} {route} vs int64 sum")
    ep = _epilogue(24, m, relu=True)
    thr = sign_thresholds(Epilogue(**{f: getattr(ep, f).cpu() for f in ("scale", "bias", "post_scale", "post_bias")},
                                   relu=True), 24, k)
    bits = binary_gemm(x.to(DEVICE), weight.to(DEVICE), k, out_kind="packed", threshold=thr, route=route,
                       use_descriptors=use_descriptors)
    assert_equal(bits.cpu(), binary_gemm_reference(x, weight, k, out_kind="packed", threshold=thr), "packed bits")


@pytest.mark.parametrize("kind", ["float", "sign_int8", "packed", "acc"])
@pytest.mark.parametrize("encoding", ["float", "packed"])
@pytest.mark.parametrize("lead", [(0,), (3, 0)])
def test_empty_batch_gives_an_empty_output_of_the_right_shape(kind, encoding, lead):
    k, n = 45, 37
    x = encode_activation(torch.zeros(*lead, k, device=DEVICE), encoding)
    weight = pack_linear_weight(torch.randn(n, k)).to(DEVICE)
    width = (n + 31) // 32 if kind == "packed" else n
    for fn in (binary_gemm, binary_gemm_reference):
        got = fn(x, weight, k, out_kind=kind)
        assert got.shape == (*lead, width), f"{fn.__name__} {kind}"
        assert got.dtype == {"float": torch.float32, "sign_int8": torch.int8, "packed": torch.int32,
                             "acc": torch.int32}[kind]


def test_prepared_stage_equals_the_dataclass_forms():
    """stage= (the (4, C) / (2, C) layout packed layers hold) gives what epilogue= / threshold= give."""
    m, n, k = 7, 40, 90
    x, w = _inputs(m, n, k, 4)
    weight = pack_linear_weight(w)
    ep = _epilogue(n, 4, relu=True)
    stage = KernelStage(ep.params(n, DEVICE), torch.empty(0, dtype=torch.int32, device=DEVICE), relu=True)
    for route in ("mma", "gemv"):
        assert_equal(binary_gemm(x, weight, k, stage=stage, route=route),
                     binary_gemm(x, weight, k, epilogue=ep, route=route), f"float stage {route}")
    thr = sign_thresholds(Epilogue(scale=ep.scale.cpu(), bias=ep.bias.cpu(), relu=True), n, k)
    stage = KernelStage(torch.empty(0, device=DEVICE), torch.stack([thr.lo, thr.hi]).to(DEVICE))
    assert_equal(binary_gemm(x, weight, k, out_kind="packed", stage=stage),
                 binary_gemm_reference(x, weight, k, out_kind="packed", threshold=thr), "threshold stage")
    with pytest.raises(ValueError, match="either stage="):
        binary_gemm(x, weight, k, stage=stage, epilogue=ep)
    with pytest.raises(ValueError, match=r"params must be a contiguous torch.float32 tensor of shape \(4, 40\)"):
        binary_gemm(x, weight, k, stage=KernelStage(ep.params(n, DEVICE).double(), stage.thresholds[:0]))
    with pytest.raises(ValueError, match="needs epilogue parameters"):
        binary_gemm(x, weight, k, stage=KernelStage(stage.params, stage.thresholds[:0]))
