"""Ceilings: which roof bounds a row, and the ratios added to rows."""

import math

import pytest
import torch

from bnnkit.benchmarks import ceilings
from bnnkit.benchmarks.registry import BenchContext


@pytest.mark.parametrize("dtype,key", [("fp16", "fp16"), ("float16", "fp16"), ("torch.bfloat16", "bf16"),
                                       ("int8", "int8"), ("int8/1bit", "int8"), ("1bit", "int8"),
                                       ("fp16/1bit", "fp16"), ("fp32/1bit", "fp32"), ("float32", "fp32"),
                                       ("complex64", None), ("", None)])
def test_compute_ceiling_for_dtype(dtype, key):
    assert ceilings.compute_ceiling_for(dtype) == key


def test_ratios_take_the_nearer_roof_and_keep_what_rows_have():
    roofs = {"copy": 2000.0, "fp16": 800.0, "int8": 1600.0}
    rows = [
        {"impl": "a", "dtype": "fp16", "gb_per_s": 1000.0},
        {"impl": "b", "dtype": "int8/1bit", "tops": 400.0, "weight_gb_per_s": 1500.0},
        {"impl": "c", "dtype": "fp16/1bit", "tops": 600.0, "ceiling_dtype": "int8"},
        {"impl": "d", "dtype": "fp32", "tops": 1.0},  # no fp32 roof measured: no compute ratio
        {"impl": "e", "dtype": "fp16", "gb_per_s": 10.0, "pct_of_ceiling": 42.0},  # the suite's own figure stays
    ]
    ceilings.add_ceiling_ratios(rows, roofs)
    a, b, c, d, e = rows
    assert a["pct_of_copy_ceiling"] == 50.0 and a["pct_of_ceiling"] == 50.0 and a["bound"] == "copy"
    assert b["pct_of_compute_ceiling"] == 25.0 and b["weight_pct_of_copy_ceiling"] == 75.0
    assert b["pct_of_ceiling"] == 75.0 and b["bound"] == "copy"
    assert c["pct_of_compute_ceiling"] == 37.5 and c["bound"] == "int8"
    assert not any(k.startswith("pct") for k in d)
    assert e["pct_of_ceiling"] == 42.0 and e["pct_of_copy_ceiling"] == 0.5 and "bound" not in e


def test_ceilings_from_rows_keeps_the_best_finite_value_per_roof():
    rows = [{"suite": "ceilings", "ceiling": "copy", "gb_per_s": 10.0},
            {"suite": "ceilings", "ceiling": "copy", "gb_per_s": 12.0},
            {"suite": "ceilings", "ceiling": "fp16", "tops": math.nan},
            {"suite": "ceilings", "ceiling": "int8", "tops": 3.0},
            {"suite": "gemm", "ceiling": "fp16", "tops": 99.0}]
    assert ceilings.ceilings_from_rows(rows) == {"copy": 12.0, "int8": 3.0}


def test_cpu_matmul_ceiling_rows():
    rows = ceilings.matmul_throughput(BenchContext(torch.device("cpu"), quick=True))
    assert [r["shape"] for r in rows] == [f"{n}x{n}x{n}" for n in ceilings.CPU_MATMUL_SIZES]
    for n, row in zip(ceilings.CPU_MATMUL_SIZES, rows):
        assert row["ceiling"] == "fp32" and row["dtype"] == "fp32" and row["impl"] == "torch.matmul"
        assert row["tops"] == pytest.approx(2 * n ** 3 / (row["median_ms"] * 1e-3) / 1e12)
    best = max(r["tops"] for r in rows)
    assert ceilings.ceilings_from_rows([{"suite": "ceilings", **r} for r in rows]) == {"fp32": best}
