"""The training kernels compile for sm_80 and sm_90 without register spills (one compile_many call).

Prints registers / spills / SASS counts per kernel and arch (run with ``-s`` to see them).
"""

import re

import pytest

pytest.importorskip("triton")

from bnnkit.kernels.binarize import (  # noqa: E402
    BINARIZE_BLOCK,
    BINARIZE_WARPS,
    _binarize_kernel,
    _binarize_pack_kernel,
    pack_tile,
)
from bnnkit.kernels.compile_check import CompileRequest, compile_many  # noqa: E402
from bnnkit.kernels.sign_grad import SIGN_GRAD_BLOCK, SIGN_GRAD_WARPS, EstimatorKind, _sign_grad_kernel  # noqa: E402
from bnnkit.kernels.weight_binarize import (  # noqa: E402
    GROUP_BLOCK,
    WEIGHT_WARPS,
    _group_partial_sum_kernel,
    _scaled_binarize_backward_kernel,
    _scaled_binarize_forward_kernel,
)

ARCHS = (80, 90)
ESTIMATOR_CONSTS = {"rectified": "fp32", "coef": "fp32", "exponent": "fp32", "t": "fp32", "m": "fp32"}


def _binarize(dtype, index_64):
    sig = {"x_ptr": f"*{dtype}", "out_ptr": f"*{dtype}", "n": "i64" if index_64 else "i32",
           "BLOCK": "constexpr", "INDEX_64": "constexpr"}
    return _binarize_kernel, sig, {"BLOCK": BINARIZE_BLOCK, "INDEX_64": index_64}, BINARIZE_WARPS


def _pack(dtype, n_words, write_values):
    block_r, block_w = pack_tile(4096, n_words)
    sig = {"x_ptr": f"*{dtype}", "out_ptr": f"*{dtype}", "words_ptr": "*i32", "rows": "i32", "k": "i32",
           "n_words": "i32", "stride_xr": "i32", "stride_xc": "i32", "BLOCK_R": "constexpr", "BLOCK_W": "constexpr",
           "WRITE_VALUES": "constexpr", "INDEX_64": "constexpr"}
    consts = {"BLOCK_R": block_r, "BLOCK_W": block_w, "WRITE_VALUES": write_values, "INDEX_64": False}
    return _binarize_pack_kernel, sig, consts, 4


def _sign_grad(dtype, kind, index_64):
    sig = {"x_ptr": f"*{dtype}", "grad_out_ptr": f"*{dtype}", "grad_in_ptr": f"*{dtype}",
           "n": "i64" if index_64 else "i32", **ESTIMATOR_CONSTS,
           "KIND": "constexpr", "BLOCK": "constexpr", "INDEX_64": "constexpr", "INTERPRET": "constexpr"}
    consts = {"KIND": kind.code, "BLOCK": SIGN_GRAD_BLOCK, "INDEX_64": index_64, "INTERPRET": False}
    return _sign_grad_kernel, sig, consts, SIGN_GRAD_WARPS


def _group_partial(dtype, with_grad):
    sig = {"w_ptr": f"*{dtype}", "grad_out_ptr": f"*{dtype}", "partial_ptr": "*fp32", "k": "i32", "chunk": "i32",
           "splits": "i32", "WITH_GRAD": "constexpr", "BLOCK": "constexpr", "INDEX_64": "constexpr"}
    return _group_partial_sum_kernel, sig, {"WITH_GRAD": with_grad, "BLOCK": GROUP_BLOCK, "INDEX_64": False}, \
        WEIGHT_WARPS


def _weight_forward(dtype, fused):
    sig = {"w_ptr": f"*{dtype}", "partial_ptr": "*fp32", "alpha_ptr": "*fp32", "out_ptr": f"*{dtype}", "k": "i32",
           "chunk": "i32", "splits": "i32", "FUSED": "constexpr", "SPLITS_BLOCK": "constexpr", "BLOCK": "constexpr",
           "INDEX_64": "constexpr"}
    consts = {"FUSED": fused, "SPLITS_BLOCK": 4096, "BLOCK": GROUP_BLOCK, "INDEX_64": False}
    return _scaled_binarize_forward_kernel, sig, consts, WEIGHT_WARPS


def _weight_backward(dtype, fused, index_64=False):
    sig = {"w_ptr": f"*{dtype}", "grad_out_ptr": f"*{dtype}", "alpha_ptr": "*fp32", "partial_ptr": "*fp32",
           "grad_w_ptr": f"*{dtype}", "k": "i64" if index_64 else "i32", "chunk": "i32", "splits": "i32",
           **ESTIMATOR_CONSTS, "KIND": "constexpr", "FUSED": "constexpr", "SPLITS_BLOCK": "constexpr",
           "BLOCK": "constexpr", "INDEX_64": "constexpr", "INTERPRET": "constexpr"}
    consts = {"KIND": EstimatorKind.RESTE.code, "FUSED": fused, "SPLITS_BLOCK": 4096, "BLOCK": GROUP_BLOCK,
              "INDEX_64": index_64, "INTERPRET": False}
    return _scaled_binarize_backward_kernel, sig, consts, WEIGHT_WARPS


CONFIGS = {
    "binarize fp32": _binarize("fp32", False),
    "binarize bf16 int64": _binarize("bf16", True),
    "binarize+pack fp16": _pack("fp16", 8, True),
    "pack bf16 1 word": _pack("bf16", 1, False),
    "pack int8 8 words": _pack("i8", 8, False),
    **{f"sign_grad {kind.name} fp32": _sign_grad("fp32", kind, False) for kind in EstimatorKind},
    "sign_grad RESTE bf16": _sign_grad("bf16", EstimatorKind.RESTE, False),
    "sign_grad RESTE fp16 int64": _sign_grad("fp16", EstimatorKind.RESTE, True),
    "weight partial |w| bf16": _group_partial("bf16", False),
    "weight partial grad fp32": _group_partial("fp32", True),
    "weight forward fused fp32": _weight_forward("fp32", True),
    "weight forward split bf16": _weight_forward("bf16", False),
    "weight backward fused fp32": _weight_backward("fp32", True),
    "weight backward split bf16 int64": _weight_backward("bf16", False, True),
}


def _aligned(signature):
    """Parameters the launcher sees 16-aligned / divisible by 16 for typical tensors (lets loads vectorize)."""
    return tuple(name for name, ty in signature.items() if ty.startswith("*") or name in ("n", "k", "chunk"))


@pytest.fixture(scope="module")
def reports():
    requests = [CompileRequest(fn, sig, consts, arch=arch, num_warps=warps, divisible_by_16=_aligned(sig))
                for fn, sig, consts, warps in CONFIGS.values() for arch in ARCHS]
    return dict(zip([(name, arch) for name in CONFIGS for arch in ARCHS], compile_many(requests)))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_compiles_without_spills(reports, name, arch):
    report = reports[(name, arch)]
    print(f"{name}: {report.summary()}")
    assert report.arch == arch
    assert report.spill_bytes == 0, report.summary()
    assert report.registers <= 128, report.summary()  # keeps >= 2 blocks of 8 warps resident per SM


def test_reste_slope_uses_hardware_exp2_log2(reports):
    """pow via exp2/log2 maps to MUFU.EX2 / MUFU.LG2, not a libdevice pow call."""
    for arch in ARCHS:
        sass = reports[("sign_grad RESTE fp32", arch)].sass
        assert "MUFU.EX2" in sass and "MUFU.LG2" in sass
        assert "CALL" not in sass
        report = reports[("sign_grad RESTE bf16", arch)]
        assert report.count("FFMA") < 64, report.summary()  # no inlined polynomial log2


def _block_index_width(ptx: str) -> int:
    """Bit width of the first instruction that computes with ``%ctaid.x`` (the program id)."""
    pid = re.search(r"mov\.u32\s+(%r\d+), %ctaid\.x;", ptx).group(1)
    use = next(line for line in ptx.splitlines() if re.search(rf"\S+.*,\s*{pid}\b", line) and "ctaid" not in line)
    return 64 if re.search(r"\.(wide|[usb]64)\b", use) else 32


@pytest.mark.parametrize("narrow,wide", [("binarize fp32", "binarize bf16 int64"),
                                         ("sign_grad RESTE fp32", "sign_grad RESTE fp16 int64")])
def test_int64_variants_compute_offsets_in_64_bits(reports, narrow, wide):
    """INDEX_64 takes the block start to 64 bits before multiplying (no int32 overflow past 2^31)."""
    for arch in ARCHS:
        assert _block_index_width(reports[(narrow, arch)].ptx) == 32
        assert _block_index_width(reports[(wide, arch)].ptx) == 64
