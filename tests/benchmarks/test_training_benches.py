"""The quantize and train benchmark suites: the baseline computes ReSTE, the CPU cases yield complete rows."""

import torch

from bnnkit.benchmarks import quantize
from bnnkit.benchmarks.reference_style import reference_style_reste
from bnnkit.benchmarks.registry import BenchContext
from bnnkit.kernels.sign_grad import EstimatorKind, sign_grad_reference


def test_reference_style_baseline_is_reste():
    """Away from 0 (where torch.sign differs on purpose) the baseline's gradient is bnnkit's ReSTE."""
    torch.manual_seed(0)
    x = torch.randn(4096, dtype=torch.float64)
    x = x[x != 0].requires_grad_(True)
    grad = torch.randn_like(x)
    y = reference_style_reste(x, o=2.5, t=1.5)
    (got,) = torch.autograd.grad(y, x, grad)
    assert torch.equal(y, torch.where(x >= 0, 1.0, -1.0).to(x.dtype))
    want = sign_grad_reference(x.detach(), grad, EstimatorKind.RESTE, 2.5, 1.5)
    # the baseline holds o and t as float32 tensors, as the paper's code does: float32-level agreement
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


# The cases are called directly: other tests swap the shared registry's contents, and
# tests/benchmarks/test_bench_smoke.py runs the suites through the runner.
def test_quantize_cpu_case_rows_complete():
    rows = quantize.reste_quantizer_cpu(BenchContext(device=torch.device("cpu"), quick=True))
    impls = {(r["impl"], r["pass"]) for r in rows}
    assert impls == {("copy", "copy")} | {(i, p) for i in ("torch", "reference_style")
                                         for p in quantize.PASS_ELEMENT_TRANSFERS}
    for row in rows:
        assert row["median_ms"] > 0 and row["gb_per_s"] > 0 and row["pct_of_copy"] > 0
        assert {"case", "shape", "dtype", "p20_ms", "p80_ms"} <= row.keys()
        if row["impl"] != "copy":
            assert row["speedup_vs_reference_style"] > 0
    assert all(r["speedup_vs_reference_style"] == 1.0 for r in rows if r["impl"] == "reference_style")


def test_train_step_cpu_case_rows():
    from bnnkit.benchmarks import train as train_bench

    rows = train_bench.digits_cnn_train_step_cpu(BenchContext(device=torch.device("cpu"), quick=True))
    assert [r["impl"] for r in rows] == ["torch", "reference_style"]
    for row in rows:
        assert row["median_ms"] > 0 and row["images_per_s"] > 0 and row["speedup_vs_reference_style"] > 0
        assert row["shape"] == "(64, 1, 8, 8)"
