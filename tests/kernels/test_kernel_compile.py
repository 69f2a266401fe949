"""Every binary kernel compiles for sm_80 and sm_90 on this CPU machine: no register spills,
tensor-core instructions in the GEMM / conv kernels (IGMMA / HGMMA on sm_90, IMMA / HMMA on
sm_80), POPC in the popcount GEMV. The summaries are printed (``pytest -s``) to guide tuning.

By default each config list's first config (the one used with ``BNNKIT_AUTOTUNE=0``) is
compiled with the heaviest epilogue it serves, in one subprocess. ``BNNKIT_COMPILE_SWEEP=1``
also compiles every config of every list with every activation mode, weight format and
epilogue (a few hundred kernels; minutes).
"""

import itertools
import os

import pytest

pytest.importorskip("triton")
from bnnkit.kernels import binary_conv as conv  # noqa: E402
from bnnkit.kernels import binary_gemm as gemm  # noqa: E402
from bnnkit.kernels.compile_check import CompileRequest, compile_many  # noqa: E402
from bnnkit.kernels.pack_signs import _pack_signs_kernel  # noqa: E402

A_TYPES = {0: "*i8", 1: "*fp16", 2: "*i32", 3: "*fp16"}
# (OUT_MODE, HAS_RESIDUAL, SIGN_FROM_THRESHOLD): float out + residual, packed out from thresholds
EPILOGUES = [(1, True, False), (3, False, True)]
TENSOR_CORE = {(90, False): "IGMMA", (90, True): "HGMMA", (80, False): "IMMA", (80, True): "HMMA"}


def _gemm_request(cfg, arch, a_mode, w_packed, epilogue, use_desc, a_type=None):
    out_mode, residual, threshold = epilogue
    consts = dict(A_MODE=a_mode, W_PACKED=w_packed, OUT_MODE=out_mode, SIGN_FROM_THRESHOLD=threshold, RELU=True,
                  HAS_RESIDUAL=residual, USE_DESC=use_desc, EVEN_K=False, INTERPRET=False, **cfg.kwargs)
    sig = gemm.mma_signature(a_type or A_TYPES[a_mode], "*i32" if w_packed else "*i8",
                             "*fp16" if out_mode == 1 else "*i32")
    return CompileRequest(gemm._binary_gemm_mma_kernel, sig, consts, arch, cfg.num_warps, cfg.num_stages)


def _conv_request(cfg, arch, a_mode, w_packed, epilogue, a_type=None):
    out_mode, residual, threshold = epilogue
    consts = dict(KH=3, KW=3, STRIDE=1, PAD=1, A_MODE=a_mode, W_PACKED=w_packed, OUT_MODE=out_mode,
                  SIGN_FROM_THRESHOLD=threshold, RELU=True, HAS_RESIDUAL=residual, EVEN_C=False, INTERPRET=False,
                  **cfg.kwargs)
    sig = conv.conv_signature(a_type or A_TYPES[a_mode], "*i32" if w_packed else "*i8",
                              "*fp16" if out_mode == 1 else "*i32")
    return CompileRequest(conv._binary_conv_kernel, sig, consts, arch, cfg.num_warps, cfg.num_stages)


def _gemv_request(arch, bm):
    cfg = gemm._prune_gemv(gemm.GEMV_CONFIGS, {}, BM=bm)[0]
    consts = dict(OUT_MODE=1, SIGN_FROM_THRESHOLD=False, RELU=True, HAS_RESIDUAL=True, BM=bm, INTERPRET=False,
                  **cfg.kwargs)
    return CompileRequest(gemm._binary_gemv_popcount_kernel, gemm.gemv_signature("*fp16"), consts, arch,
                          cfg.num_warps, cfg.num_stages)


def _pack_request(arch):
    sig = {"x_ptr": "*fp16", "out_ptr": "*i32", "R": "i32", "K": "i32", "stride_xr": "i32", "stride_or": "i32",
           "BR": "constexpr", "BKW": "constexpr"}
    return CompileRequest(_pack_signs_kernel, sig, {"BR": 16, "BKW": 8}, arch)


def _default_requests():
    """(label, request, expected tensor-core mnemonic or 'POPC' or None)."""
    reqs = []
    for arch in (80, 90):
        lists = gemm.mma_config_lists(arch)
        for (real, desc), configs in lists.items():
            cfg = configs[0]
            a_mode, a_type = (3, "*bf16" if arch == 80 else "*fp16") if real else (2 if desc else 1, None)
            reqs.append((f"gemm real={real} desc={desc}", _gemm_request(cfg, arch, a_mode, True, EPILOGUES[0], desc,
                                                                         a_type), TENSOR_CORE[(arch, real)]))
        reqs.append(("gemm threshold", _gemm_request(lists[(False, arch >= 90)][0], arch, 0, True, EPILOGUES[1],
                                                     arch >= 90), TENSOR_CORE[(arch, False)]))
        for real, configs in conv.conv_config_lists(arch).items():
            a_mode = 3 if real else 2
            reqs.append((f"conv real={real}", _conv_request(configs[0], arch, a_mode, True, EPILOGUES[0]),
                         TENSOR_CORE[(arch, real)]))
        reqs.append(("conv threshold", _conv_request(conv.conv_config_lists(arch)[False][0], arch, 1, True,
                                                     EPILOGUES[1]), TENSOR_CORE[(arch, False)]))
        reqs.append(("gemv M=1", _gemv_request(arch, 1), "POPC"))
        reqs.append(("gemv M=16", _gemv_request(arch, 16), "POPC"))
        reqs.append(("pack_signs", _pack_request(arch), None))
    return reqs


@pytest.fixture(scope="module")
def default_reports():
    reqs = _default_requests()
    return list(zip(reqs, compile_many([r for _, r, _ in reqs])))


def test_kernels_compile_without_spills(default_reports):
    for (label, request, _), report in default_reports:
        print(f"{label}: {report.summary()}")
    spilled = [f"{label} sm_{r.arch}: {r.spill_bytes}B" for (label, _, _), r in default_reports if r.spill_bytes]
    assert not spilled, f"register spills: {spilled}"
    assert {r.arch for _, r in default_reports} == {80, 90}


def test_gemm_and_conv_use_tensor_cores_and_gemv_popcount(default_reports):
    for (label, _, expected), report in default_reports:
        if expected is not None:
            assert report.count(expected) > 0, f"{label} sm_{report.arch}: no {expected} in {report.summary()}"


def _sweep_requests():
    reqs = []
    for arch in (80, 90):
        for (real, desc), configs in gemm.mma_config_lists(arch).items():
            for cfg, a_mode, w_packed, ep in itertools.product(configs, (3,) if real else (0, 1, 2), (True, False),
                                                               EPILOGUES):
                if real and ep[2]:
                    continue
                if cfg not in gemm._prune_mma(configs, {"M": 1 << 20}, A_MODE=a_mode, W_PACKED=w_packed,
                                              OUT_MODE=ep[0], HAS_RESIDUAL=ep[1]):
                    continue  # the launcher never uses this config for this combination
                reqs.append(_gemm_request(cfg, arch, a_mode, w_packed, ep, desc))
        for real, configs in conv.conv_config_lists(arch).items():
            for cfg, a_mode, w_packed, ep in itertools.product(configs, (3,) if real else (0, 1, 2), (True, False),
                                                               EPILOGUES):
                if real and ep[2]:
                    continue
                if cfg not in conv._prune(configs, {"M": 1 << 20, "C": 1 << 10}, A_MODE=a_mode, W_PACKED=w_packed,
                                          OUT_MODE=ep[0], HAS_RESIDUAL=ep[1]):
                    continue  # the launcher never uses this config for this combination
                reqs.append(_conv_request(cfg, arch, a_mode, w_packed, ep))
    return reqs


@pytest.mark.skipif(os.environ.get("BNNKIT_COMPILE_SWEEP", "0") in ("", "0"), reason="set BNNKIT_COMPILE_SWEEP=1")
def test_every_config_compiles_without_spills():
    requests = _sweep_requests()
    reports = compile_many(requests)
    keys = ("A_MODE", "W_PACKED", "OUT_MODE", "HAS_RESIDUAL", "BM", "BN", "BK")
    lines = [f"{ {k: q.constexprs[k] for k in keys} } stages={q.num_stages}: {r.summary()}"
             for q, r in zip(requests, reports)]
    for line in lines:
        print(line)
    spilled = [line for line, r in zip(lines, reports) if r.spill_bytes]
    assert not spilled, "\n".join(spilled)


def test_launchers_never_pick_the_configs_that_spill():
    """What the sweep found spilling on sm_90 / sm_80 is pruned before launch (autotuned or not)."""
    big_conv = {"M": 1 << 20, "C": 1 << 10}
    heaviest = dict(A_MODE=2, W_PACKED=False, OUT_MODE=1, HAS_RESIDUAL=True)  # packed act., int8 weights
    kept = conv._prune(conv.CONV_INT8_CONFIGS, big_conv, **heaviest)
    assert [(c.kwargs["BM"], c.kwargs["BN"]) for c in kept] == [(64, 64)]
    assert conv._prune(conv.CONV_INT8_CONFIGS, big_conv, **{**heaviest, "W_PACKED": True}) == conv.CONV_INT8_CONFIGS
    for configs in gemm.MMA_CONFIGS_SM90.values():
        kept = gemm._prune_mma(configs, {"M": 1 << 20}, OUT_MODE=1, HAS_RESIDUAL=True)
        assert kept and all(c.kwargs["BM"] * c.kwargs["BN"] <= 128 * 128 for c in kept)
