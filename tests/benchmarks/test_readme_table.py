"""The README's performance table: made from recorded rows, naming device, date and commit."""

import pytest

from bnnkit.artifacts import write_json
from bnnkit.benchmarks import readme_table, recording


def gpu_rows():
    meta = {"device": "NVIDIA H100 80GB HBM3", "device_type": "cuda", "torch": "2.11.0", "triton": "3.6.0",
            "onnxruntime": "1.22.0", "cuda": "12.8", "commit": "0123456789abcdef", "quick": True,
            "date": "2026-03-01T10:00:00+00:00", "run_id": "r1"}
    return [
        {"suite": "ceilings", "case": "copy", "impl": "torch.copy_", "shape": "(1,)", "dtype": "fp32",
         "median_ms": 1.0, "p20_ms": 1.0, "p80_ms": 1.0, "gb_per_s": 3000.0, "ceiling": "copy", **meta},
        {"suite": "ceilings", "case": "matmul", "impl": "torch._int_mm", "shape": "8192x8192x8192", "dtype": "int8",
         "median_ms": 1.0, "p20_ms": 1.0, "p80_ms": 1.0, "tops": 1500.0, "ceiling": "int8", **meta},
        {"suite": "ceilings", "case": "matmul", "impl": "torch._int_mm", "shape": "4096x4096x4096", "dtype": "int8",
         "median_ms": 1.0, "p20_ms": 1.0, "p80_ms": 1.0, "tops": 1200.0, "ceiling": "int8", **meta},
        {"suite": "gemm", "case": "w1a1_square", "impl": "cublas_fp16", "shape": "8192x8192x8192", "dtype": "fp16",
         "median_ms": 1.4, "p20_ms": 1.3, "p80_ms": 1.5, "tops": 785.0, "speedup_vs_int_mm_int8": 0.5, **meta},
        {"suite": "gemm", "case": "w1a1_square", "impl": "int_mm_int8", "shape": "8192x8192x8192", "dtype": "int8",
         "median_ms": 0.7, "p20_ms": 0.7, "p80_ms": 0.8, "tops": 1570.0, "speedup_vs_cublas_fp16": 2.0, **meta},
        {"suite": "gemm", "case": "w1a1_square", "impl": "bnnkit_int8act", "shape": "8192x8192x8192",
         "dtype": "int8/1bit", "median_ms": 0.8, "p20_ms": 0.75, "p80_ms": 0.85, "tops": 1374.0,
         "pct_of_ceiling": 91.6, "bound": "int8", "speedup_vs_cublas_fp16": 1.75, "speedup_vs_int_mm_int8": 0.875,
         "pass": "forward", **meta},
    ]


def test_table_names_device_date_commit_and_shows_non_baseline_rows(tmp_path):
    write_json(str(tmp_path / "h100.json"), {"format": recording.RESULTS_FORMAT, "version": 1,
                                            "device": "NVIDIA H100 80GB HBM3", "rows": gpu_rows()})
    text = readme_table.generate(str(tmp_path))
    assert text.startswith("**NVIDIA H100 80GB HBM3** (cuda), measured 2026-03-01 at commit 0123456789; torch 2.11.0, "
                           "triton 3.6.0, onnxruntime 1.22.0, cuda 12.8; quick mode.")
    assert ("Ceilings measured in the same run: 3000 GB/s copy (1 fp32 elements); 1500 TOPS int8 matmul "
            "(8192x8192x8192)." in text)
    table = [line for line in text.splitlines() if line.startswith("| gemm")]
    assert table == ["| gemm | w1a1_square (pass=forward) | 8192x8192x8192 | int8/1bit | bnnkit_int8act | "
                     "0.8 (0.75-0.85) | 1374 TOPS | 91.6% int8 | 1.75x vs cublas_fp16, 0.875x vs int_mm_int8 |"]


def test_sections_without_rows_and_without_markers(tmp_path):
    assert readme_table.generate(str(tmp_path)) == "No benchmark results are recorded yet.\n"
    with pytest.raises(ValueError, match="has no '<!-- bench-table -->'"):
        readme_table.replace_section("# no markers\n", "x")
    assert readme_table.replace_section("a\n<!-- bench-table -->\nold\n<!-- /bench-table -->\nb\n", "new\n") == \
        "a\n<!-- bench-table -->\nnew\n<!-- /bench-table -->\nb\n"


def test_cpu_section_names_threads_and_load(tmp_path):
    rows = [{**r, "device": "AMD EPYC", "device_type": "cpu", "cpu_threads": 2, "load_avg": 3.5, "quick": False}
            for r in gpu_rows() if r["suite"] == "ceilings"]
    write_json(str(tmp_path / "cpu.json"), {"format": recording.RESULTS_FORMAT, "version": 1, "device": "AMD EPYC",
                                           "rows": rows})
    text = readme_table.generate(str(tmp_path))
    assert text.startswith("**AMD EPYC** (cpu, 2 threads, load average 3.5 at the start), measured 2026-03-01")
    assert "full mode." in text and "No suite besides the ceilings has recorded rows on this device yet." in text


def test_cpu_section_names_the_load_of_each_run_it_shows(tmp_path):
    rows = [{**r, "device": "AMD EPYC", "device_type": "cpu", "cpu_threads": 2, "load_avg": 0.5, "quick": False}
            for r in gpu_rows()]
    later = {"date": "2026-03-02T10:00:00+00:00", "run_id": "r2", "load_avg": 11.5}
    rows += [{**r, **later, "suite": "onnx"} for r in rows if r["suite"] == "gemm"]
    write_json(str(tmp_path / "cpu.json"), {"format": recording.RESULTS_FORMAT, "version": 1, "device": "AMD EPYC",
                                           "rows": rows})
    text = readme_table.generate(str(tmp_path))
    assert text.startswith("**AMD EPYC** (cpu, 2 threads, load average at the start 0.5 (2026-03-01 run), "
                           "11.5 (2026-03-02 run)), measured 2026-03-01 to 2026-03-02")
