"""The native CPU binary GEMM (numba) against the PyTorch reference: bit for bit, float outputs
included, on every activation encoding, output kind, epilogue form, thread split and route
(dot form, transposed form)."""

import threading

import pytest
import torch

pytest.importorskip("numba")
from hypothesis import given, settings, strategies as st  # noqa: E402

from bnnkit.kernels.binary_gemm import binary_gemm_reference  # noqa: E402
from bnnkit.kernels.cpu_binary_gemm import cpu_binary_gemm, prepare_linear_weight  # noqa: E402
from bnnkit.kernels.cpu_kernels import TRANSPOSED_MAX_WORDS  # noqa: E402
from bnnkit.kernels.epilogue import Epilogue, SignThreshold, sign_thresholds  # noqa: E402
from bnnkit.kernels.weight_pack import expand_weight_int8, pack_linear_weight  # noqa: E402
from cpu_testing import EXAMPLES, assert_bitwise, dirty_packed, task_split  # noqa: E402
from kernel_testing import poisoned, sign_edge_values  # noqa: E402

PROPERTY = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None)
ENCODINGS = ["float32", "float16", "bfloat16", "packed", "strided"]


def _activation(x: torch.Tensor, encoding: str, seed: int) -> torch.Tensor:
    if encoding in ("float16", "bfloat16"):
        return x.to(getattr(torch, encoding))
    if encoding == "packed":
        return dirty_packed(x, seed)
    if encoding == "strided":  # rows and columns not contiguous
        wide = torch.zeros(x.shape[0], 2 * x.shape[1])
        wide[:, ::2] = x
        return wide[:, ::2]
    return x


def _int_reference(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    a = torch.where(x >= 0, 1, -1).to(torch.int64)
    b = torch.where(w >= 0, 1, -1).to(torch.int64)
    return (a @ b.T).to(torch.int32)


def _epilogue(n: int, g: torch.Generator, relu: bool) -> Epilogue:
    scale, post = torch.randn(n, generator=g), torch.randn(n, generator=g)
    if n > 2:
        scale[0], post[1] = 0.0, 0.0  # constant channels
    return Epilogue(scale=scale, bias=torch.randn(n, generator=g), relu=relu, post_scale=post,
                    post_bias=torch.randn(n, generator=g))


@PROPERTY
@given(m=st.integers(0, 40), n=st.integers(1, 70), k=st.integers(1, 300), seed=st.integers(0, 2**16),
       encoding=st.sampled_from(ENCODINGS), kind=st.sampled_from(["acc", "float", "sign_int8", "packed"]),
       stage=st.sampled_from(["epilogue", "relu", "residual", "threshold", "none"]),
       out_dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), split=st.booleans())
def test_bitwise_equal_to_the_reference(m, n, k, seed, encoding, kind, stage, out_dtype, split):
    g = torch.Generator().manual_seed(seed)
    x = sign_edge_values((m, k), torch.float32, seed) if m else torch.zeros(0, k)
    w = torch.randn(n, k, generator=g)
    w[torch.rand(n, k, generator=g) < 0.1] = 0.0
    a, weight = _activation(x, encoding, seed), pack_linear_weight(w)
    args = {}
    if kind == "acc":
        pass
    elif stage == "threshold" and kind in ("sign_int8", "packed"):
        args["threshold"] = sign_thresholds(_epilogue(n, g, relu=True), n, k)
    elif stage != "none":
        args["epilogue"] = _epilogue(n, g, relu=stage != "epilogue")
        if stage == "residual":
            args["residual"] = torch.randn(m, n, generator=g)
    width = (n + 31) // 32 if kind == "packed" else n
    dtype = {"acc": torch.int32, "float": out_dtype, "sign_int8": torch.int8, "packed": torch.int32}[kind]
    with task_split(split):
        got = cpu_binary_gemm(a, weight, k, out_kind=kind, out_dtype=out_dtype, out=poisoned((m, width), dtype, "cpu"),
                              **args)
    want = binary_gemm_reference(a, weight, k, out_kind=kind, out_dtype=out_dtype, **args)
    assert_bitwise(got, want, f"m={m} n={n} k={k} {encoding} {kind} {stage}")
    if kind == "acc":  # and both against an independent sum (of the values in the encoding's dtype)
        assert_bitwise(got, _int_reference(a.float() if a.is_floating_point() else x, w), "acc vs int64 sum")


@pytest.mark.parametrize("m", [1, 3, 9, 17])
@pytest.mark.parametrize("k", [64 * TRANSPOSED_MAX_WORDS, 64 * TRANSPOSED_MAX_WORDS + 37])
def test_long_rows_take_the_dot_form_and_few_rows_the_transposed_form(m, k):
    """Rows longer than TRANSPOSED_MAX_WORDS words: groups of four rows use the dot form, the
    rest (and rows at or below the limit) the transposed form; both exact."""
    g = torch.Generator().manual_seed(k + m)
    x, w = torch.randn(m, k, generator=g), torch.randn(45, k, generator=g)
    weight = pack_linear_weight(w)
    for split in (False, True):
        with task_split(split):
            got = cpu_binary_gemm(x, weight, k, out_kind="acc")
        assert_bitwise(got, _int_reference(x, w), f"m={m} k={k} split={split}")


def test_leading_dims_prepared_stage_and_reference_fallbacks():
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(2, 3, 45, generator=g), torch.randn(10, 45, generator=g)
    weight = pack_linear_weight(w)
    got = cpu_binary_gemm(x, weight, 45, out_kind="acc")
    assert got.shape == (2, 3, 10)
    assert_bitwise(got.reshape(6, 10), _int_reference(x.reshape(6, 45), w), "3-D input")
    # int8 operands and W1A16 run the reference, with the same results
    for a, wt, real in ((torch.where(x >= 0, 1, -1).to(torch.int8), weight, False),
                        (x, expand_weight_int8(weight, 45), False), (x, weight, True)):
        assert_bitwise(cpu_binary_gemm(a, wt, 45, out_kind="acc", real_input=real),
                       binary_gemm_reference(a, wt, 45, out_kind="acc", real_input=real), "fallback")


def test_packed_output_padding_bits_are_zero():
    x = torch.randn(5, 64)
    ep = Epilogue(bias=torch.full((37,), 1000.0))  # every output positive
    got = cpu_binary_gemm(x, pack_linear_weight(torch.randn(37, 64)), 64, out_kind="packed", epilogue=ep)
    assert got.shape == (5, 2) and (got[:, 0] == -1).all() and (got[:, 1] == 0b11111).all()


def test_errors_are_the_references():
    x = torch.randn(4, 40)
    weight = pack_linear_weight(torch.randn(8, 40))
    for fn in (cpu_binary_gemm, binary_gemm_reference):
        with pytest.raises(ValueError, match="expected K=40"):
            fn(x[:, :39], weight, 40)
        with pytest.raises(ValueError, match="sign_int8 or packed"):
            fn(x, weight, 40, threshold=SignThreshold(torch.zeros(8, dtype=torch.int32),
                                                      torch.zeros(8, dtype=torch.int32)))
        with pytest.raises(TypeError, match="activations must be"):
            fn(x.double(), weight, 40)
    with pytest.raises(ValueError, match="out must be"):
        cpu_binary_gemm(x, weight, 40, out=torch.empty(4, 8, dtype=torch.float16))


def test_prepared_weight_layout():
    """Rows of uint64 words with zero bits past K, and their transpose."""
    w = torch.randn(3, 70)
    rows, rows_t = prepare_linear_weight(pack_linear_weight(w), 70)
    assert rows.shape == (3, 2) and rows_t.shape == (2, 3)
    bits = [[(int(rows[n, i // 64]) >> (i % 64)) & 1 for i in range(128)] for n in range(3)]
    assert bits == [[int(v >= 0) for v in w[n].tolist()] + [0] * 58 for n in range(3)]
    assert (rows_t == rows.T).all()


def test_concurrent_calls_from_python_threads():
    """Several Python threads call the kernels at once (each split into tasks on the shared
    pool): every result is exact."""
    g = torch.Generator().manual_seed(8)
    cases = [(torch.randn(13, 200, generator=g), torch.randn(50, 200, generator=g)) for _ in range(6)]
    results: dict[int, torch.Tensor] = {}

    def work(i):
        x, w = cases[i]
        for _ in range(5):
            results[i] = cpu_binary_gemm(x, pack_linear_weight(w), 200, out_kind="acc")

    with task_split(True):
        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cases))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for i, (x, w) in enumerate(cases):
        assert_bitwise(results[i], _int_reference(x, w), f"thread {i}")
