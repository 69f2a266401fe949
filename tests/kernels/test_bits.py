"""The shared Triton bit helpers against the PyTorch packing reference (interpreter) and on sm_80/sm_90."""

import os

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from bnnkit.kernels.binary_operands import unpack_rows_pm1  # noqa: E402
from bnnkit.kernels.bits import interpreting, nonnegative, pack_rows, popcount32  # noqa: E402
from bnnkit.kernels.bitpack import pack_signs_reference  # noqa: E402
from bnnkit.kernels.compile_check import CompileRequest, compile_many  # noqa: E402


@triton.jit
def _roundtrip_kernel(x_ptr, words_ptr, bits_ptr, count_ptr, ROWS: tl.constexpr, WORDS: tl.constexpr,
                      INTERPRET: tl.constexpr):
    r = tl.arange(0, ROWS)[:, None]
    c = tl.arange(0, WORDS * 32)[None, :]
    x = tl.load(x_ptr + r * (WORDS * 32) + c)
    words = pack_rows(nonnegative(x).to(tl.int32), ROWS, WORDS)
    w = tl.arange(0, WORDS)[None, :]
    tl.store(words_ptr + r * WORDS + w, words)
    tl.store(bits_ptr + r * (WORDS * 32) + c, unpack_rows_pm1(words, ROWS, WORDS * 32))
    tl.store(count_ptr + r * WORDS + w, popcount32(words, INTERPRET))


@triton.jit
def _nonnegative_kernel(x_ptr, out_ptr, N: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(out_ptr + offs, nonnegative(tl.load(x_ptr + offs)).to(tl.int8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int8])
def test_nonnegative_is_the_binarization_rule(dtype):
    """The one sign test of every kernel: x >= 0 exactly, in every input dtype (the
    interpreter's own bf16 comparison says True for every value)."""
    device = "cpu" if interpreting() else "cuda"
    if dtype == torch.int8:
        x = torch.tensor([-128, -1, 0, 1, 127] * 13, dtype=dtype)[:64]
    else:
        info = torch.finfo(dtype)
        special = [0.0, -0.0, info.tiny, -info.tiny, info.smallest_normal / 4, -info.smallest_normal / 4,
                   info.max, -info.max, float("inf"), float("-inf"), float("nan"), -1.0, 1.0, -0.5]
        rest = torch.randn(64 - len(special), generator=torch.Generator().manual_seed(3))
        x = torch.cat([torch.tensor(special), rest]).to(dtype)
    out = torch.full((64,), 7, dtype=torch.int8, device=device)
    _nonnegative_kernel[(1,)](x.to(device), out, N=64)
    assert torch.equal(out.cpu(), (x >= 0).to(torch.int8)), f"{dtype}: {x[out.cpu() != (x >= 0).to(torch.int8)]}"



def test_pack_unpack_popcount_interpreter():
    rows, words = 4, 2
    device = "cpu" if interpreting() else "cuda"
    torch.manual_seed(0)
    x = torch.randn(rows, words * 32, device=device)
    x[0, :32] = 0.0  # all +1: the word with bit 31 set
    out_words = torch.full((rows, words), 7, dtype=torch.int32, device=device)
    out_bits = torch.full((rows, words * 32), 7, dtype=torch.int32, device=device)
    out_count = torch.full((rows, words), 7, dtype=torch.int32, device=device)
    _roundtrip_kernel[(1,)](x, out_words, out_bits, out_count, ROWS=rows, WORDS=words, INTERPRET=interpreting())
    ref = pack_signs_reference(x)
    assert torch.equal(out_words, ref)
    assert torch.equal(out_bits, torch.where(x >= 0, 1, -1).to(torch.int32))
    assert torch.equal(out_count, (x >= 0).reshape(rows, words, 32).sum(-1).to(torch.int32))
    assert out_words[0, 0].item() == -1


def test_bit_helpers_compile_for_gpu():
    sig = {"x_ptr": "*fp32", "words_ptr": "*i32", "bits_ptr": "*i32", "count_ptr": "*i32",
           "ROWS": "constexpr", "WORDS": "constexpr", "INTERPRET": "constexpr"}
    consts = {"ROWS": 16, "WORDS": 4, "INTERPRET": False}
    reports = compile_many([CompileRequest(_roundtrip_kernel, sig, consts, arch=a) for a in (80, 90)])
    for report in reports:
        print(report.summary())
        assert report.spill_bytes == 0
        assert report.count("POPC") > 0
    assert [r.arch for r in reports] == [80, 90]
