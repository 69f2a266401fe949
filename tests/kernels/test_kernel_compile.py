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
from bnnkit.kernels.kinds import InputKind, OutputKind  # noqa: E402

INT8, BINARIZE, PACKED, REAL = (k.code for k in (InputKind.INT8, InputKind.BINARIZE, InputKind.PACKED, InputKind.REAL))
A_TYPES = {INT8: "*i8", BINARIZE: "*fp16", PACKED: "*i32", REAL: "*fp16"}
# (OUT_KIND, HAS_RESIDUAL, SIGN_FROM_THRESHOLD): float out + residual, packed out from thresholds
EPILOGUES = [(OutputKind.FLOAT.code, True, False), (OutputKind.PACKED.code, False, True)]
TENSOR_CORE = {(90, False): "IGMMA", (90, True): "HGMMA", (80, False): "IMMA", (80, True): "HMMA"}


def _gemm_request(cfg, arch, in_kind, w_packed, epilogue, use_desc, a_type=None):
    out_kind, residual, threshold = epilogue
    consts = dict(IN_KIND=in_kind, W_PACKED=w_packed, OUT_KIND=out_kind, SIGN_FROM_THRESHOLD=threshold, RELU=True,
                  HAS_RESIDUAL=residual, USE_DESC=use_desc, EVEN_K=False, INTERPRET=False, **cfg.kwargs)
    sig = gemm.mma_signature(a_type or A_TYPES[in_kind], "*i32" if w_packed else "*i8",
                             "*fp16" if out_kind == OutputKind.FLOAT.code else "*i32")
    return CompileRequest(gemm._binary_gemm_mma_kernel, sig, consts, arch, cfg.num_warps, cfg.num_stages)


def _conv_request(cfg, arch, in_kind, w_packed, epilogue, a_type=None):
    out_kind, residual, threshold = epilogue
    consts = dict(KH=3, KW=3, STRIDE=1, PAD=1, IN_KIND=in_kind, W_PACKED=w_packed, OUT_KIND=out_kind,
                  SIGN_FROM_THRESHOLD=threshold, RELU=True, HAS_RESIDUAL=residual, EVEN_C=False, INTERPRET=False,
                  **cfg.kwargs)
    sig = conv.conv_signature(a_type or A_TYPES[in_kind], "*i32" if w_packed else "*i8",
                              "*fp16" if out_kind == OutputKind.FLOAT.code else "*i32")
    return CompileRequest(conv._binary_conv_kernel, sig, consts, arch, cfg.num_warps, cfg.num_stages)


def _gemv_request(arch, bm, in_kind=PACKED, a_type="*i32"):
    """The first config the launcher keeps for ``bm`` rows, with a float epilogue and a residual."""
    cfg = gemm._prune_gemv(gemm.GEMV_CONFIGS, {"BM": bm, "IN_KIND": in_kind})[0]
    consts = dict(IN_KIND=in_kind, OUT_KIND=OutputKind.FLOAT.code, SIGN_FROM_THRESHOLD=False, RELU=True,
                  HAS_RESIDUAL=True, BM=bm, INTERPRET=False, **cfg.kwargs)
    return CompileRequest(gemm._binary_gemv_popcount_kernel, gemm.gemv_signature("*fp16", a_type=a_type), consts,
                          arch, cfg.num_warps, cfg.num_stages)


def _default_requests():
    """(label, request, expected tensor-core mnemonic or 'POPC' or None)."""
    reqs = []
    for arch in (80, 90):
        lists = gemm.mma_config_lists(arch)
        for (real, desc), configs in lists.items():
            cfg = configs[0]
            in_kind, a_type = (REAL, "*bf16" if arch == 80 else "*fp16") if real else (PACKED if desc else BINARIZE,
                                                                                       None)
            reqs.append((f"gemm real={real} desc={desc}", _gemm_request(cfg, arch, in_kind, True, EPILOGUES[0], desc,
                                                                         a_type), TENSOR_CORE[(arch, real)]))
        reqs.append(("gemm threshold", _gemm_request(lists[(False, arch >= 90)][0], arch, INT8, True, EPILOGUES[1],
                                                     arch >= 90), TENSOR_CORE[(arch, False)]))
        first = conv.CONV_CONFIGS[0]
        reqs.append(("conv real=False", _conv_request(first, arch, PACKED, True, EPILOGUES[0]),
                     TENSOR_CORE[(arch, False)]))
        reqs.append(("conv real=True", _conv_request(first, arch, REAL, True, EPILOGUES[0]), TENSOR_CORE[(arch, True)]))
        reqs.append(("conv threshold", _conv_request(first, arch, BINARIZE, True, EPILOGUES[1]),
                     TENSOR_CORE[(arch, False)]))
        reqs.append(("conv threshold bf16", _conv_request(first, arch, BINARIZE, True, EPILOGUES[1], "*bf16"),
                     TENSOR_CORE[(arch, False)]))
        reqs.append(("gemv M=1", _gemv_request(arch, 1), "POPC"))
        reqs.append(("gemv M=16", _gemv_request(arch, 16), "POPC"))
        reqs.append(("gemv binarize fp16 M=1", _gemv_request(arch, 1, BINARIZE, "*fp16"), "POPC"))
        reqs.append(("gemv binarize bf16 M=16", _gemv_request(arch, 16, BINARIZE, "*bf16"), "POPC"))
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
            for cfg, in_kind, w_packed, ep in itertools.product(configs, (REAL,) if real else (INT8, BINARIZE, PACKED),
                                                                (True, False), EPILOGUES):
                if real and ep[2]:
                    continue
                if cfg not in gemm._prune_mma(configs, {"M_BUCKET": 1 << 20, "OUT_KIND": ep[0],
                                                        "HAS_RESIDUAL": ep[1]}):
                    continue  # the launcher never uses this config for this combination
                reqs.append(_gemm_request(cfg, arch, in_kind, w_packed, ep, desc))
        for cfg, in_kind, w_packed, ep in itertools.product(conv.CONV_CONFIGS, (INT8, BINARIZE, PACKED, REAL),
                                                            (True, False), EPILOGUES):
            if in_kind == REAL and ep[2]:
                continue
            if cfg not in conv._prune(conv.CONV_CONFIGS, {"M_BUCKET": 1 << 20, "C": 1 << 10, "IN_KIND": in_kind,
                                                          "W_PACKED": w_packed, "OUT_KIND": ep[0],
                                                          "HAS_RESIDUAL": ep[1]}):
                continue  # the launcher never uses this config for this combination
            reqs.append(_conv_request(cfg, arch, in_kind, w_packed, ep))
        for bm, in_kind in itertools.product((1, 2, 4, 8, 16), (BINARIZE, PACKED)):
            for cfg in gemm._prune_gemv(gemm.GEMV_CONFIGS, {"BM": bm, "IN_KIND": in_kind}):
                consts = dict(IN_KIND=in_kind, OUT_KIND=EPILOGUES[0][0], SIGN_FROM_THRESHOLD=False, RELU=True,
                              HAS_RESIDUAL=True, BM=bm, INTERPRET=False, **cfg.kwargs)
                sig = gemm.gemv_signature("*fp16", a_type="*bf16" if in_kind == BINARIZE else "*i32")
                reqs.append(CompileRequest(gemm._binary_gemv_popcount_kernel, sig, consts, arch, cfg.num_warps,
                                           cfg.num_stages))
    return reqs


@pytest.mark.skipif(os.environ.get("BNNKIT_COMPILE_SWEEP", "0") in ("", "0"), reason="set BNNKIT_COMPILE_SWEEP=1")
def test_every_config_compiles_without_spills():
    requests = _sweep_requests()
    reports = compile_many(requests)
    keys = ("IN_KIND", "W_PACKED", "OUT_KIND", "HAS_RESIDUAL", "BM", "BN", "BK", "BKW")
    lines = [f"{ {k: q.constexprs[k] for k in keys if k in q.constexprs} } stages={q.num_stages}: {r.summary()}"
             for q, r in zip(requests, reports)]
    for line in lines:
        print(line)
    spilled = [line for line, r in zip(lines, reports) if r.spill_bytes]
    assert not spilled, "\n".join(spilled)


def test_launchers_never_pick_the_configs_that_spill():
    """What the sweep found spilling on sm_90 / sm_80 is pruned before launch (autotuned or not)."""
    heaviest = dict(M_BUCKET=1 << 20, C=1 << 10, IN_KIND=PACKED, W_PACKED=False, OUT_KIND=OutputKind.FLOAT.code,
                    HAS_RESIDUAL=True)  # packed activations, int8 weights
    kept = conv._prune(conv.CONV_CONFIGS, heaviest)
    assert [(c.kwargs["BM"], c.kwargs["BN"]) for c in kept] == [(64, 64)]
    assert conv._prune(conv.CONV_CONFIGS, {**heaviest, "W_PACKED": True}) == conv.CONV_CONFIGS
    for configs in gemm.MMA_CONFIGS_SM90.values():
        kept = gemm._prune_mma(configs, {"M_BUCKET": 1 << 20, "OUT_KIND": OutputKind.FLOAT.code, "HAS_RESIDUAL": True})
        assert kept and all(c.kwargs["BM"] * c.kwargs["BN"] <= 128 * 128 for c in kept)
    for bm in (1, 2, 4, 8, 16):  # binarize-on-load tiles stay within their register budget
        for cfg in gemm._prune_gemv(gemm.GEMV_CONFIGS, {"BM": bm, "IN_KIND": BINARIZE}):
            assert bm * cfg.kwargs["BKW"] * 32 <= gemm.GEMV_BINARIZE_TILE
