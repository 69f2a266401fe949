"""The gemm, conv and model benchmark suites register their cases, and the CPU cases produce rows."""

import torch

from bnnkit.benchmarks import conv, gemm, model  # noqa: F401  (registers the cases)
from bnnkit.benchmarks.registry import REGISTRY, BenchContext


def test_cases_registered_with_cuda_and_cpu_variants():
    names = {(c.suite, c.name): c.devices for c in REGISTRY}
    for suite in ("gemm", "conv", "model"):
        assert any("cuda" in d for (s, _), d in names.items() if s == suite)
        assert (suite, "cpu_small") in names


def test_cpu_cases_produce_rows_with_speedups():
    ctx = BenchContext(torch.device("cpu"), quick=True)
    for c in REGISTRY:
        if c.suite in ("gemm", "conv", "model") and "cpu" in c.devices:
            rows = c.fn(ctx)
            assert len(rows) == 2
            for r in rows:
                rate = "images_per_s" if c.suite == "model" else "tops"
                assert {"case", "shape", "impl", "dtype", "median_ms", "p20_ms", "p80_ms", rate} <= set(r)
                assert r["median_ms"] > 0 and r[rate] > 0
            assert any(k.startswith("speedup_vs_") for k in rows[1])
