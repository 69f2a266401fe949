"""Plots: the data each one shows, and PNGs written when matplotlib is installed."""

from bnnkit.benchmarks import plot

from .test_readme_table import gpu_rows


def test_speedup_series_per_case_baseline_and_impl():
    series = plot.speedup_series(gpu_rows())
    assert set(series) == {("gemm", "w1a1_square")}
    by_baseline = series["gemm", "w1a1_square"]
    assert by_baseline["cublas_fp16"] == {"int_mm_int8": {"8192x8192x8192 int8": 2.0},
                                          "bnnkit_int8act": {"8192x8192x8192 int8/1bit pass=forward": 1.75}}
    assert by_baseline["int_mm_int8"] == {"cublas_fp16": {"8192x8192x8192 fp16": 0.5},
                                          "bnnkit_int8act": {"8192x8192x8192 int8/1bit pass=forward": 0.875}}


def test_ceiling_bars_leave_out_the_ceilings_themselves():
    rows = gpu_rows()
    rows[0]["pct_of_ceiling"] = 100.0
    assert plot.ceiling_bars(rows) == [
        ("gemm/w1a1_square bnnkit_int8act 8192x8192x8192 int8/1bit (pass=forward)", 91.6, "int8")]


def test_pngs_are_written(tmp_path):
    import pytest

    pytest.importorskip("matplotlib")
    doc = {"device": "NVIDIA H100 80GB HBM3", "rows": gpu_rows()}
    paths = plot.plot_device(doc, str(tmp_path))
    assert sorted(p.rsplit("/", 1)[1] for p in paths) == ["pct-of-ceiling.png", "speedup-gemm-w1a1_square.png"]
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
