"""CI smoke test: `bnnkit bench --quick --json F` on the CPU, as a user runs it (no speed assertion).

Suite modules land from several branches; one that is absent must be reported as skipped,
and the rows of every suite that is present must be complete.
"""

import datetime
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from bnnkit.benchmarks.environment import cpu_name, git_commit
from bnnkit.benchmarks.runner import REQUIRED_ROW_KEYS, RUN_FORMAT, SUITE_MODULES

METADATA = ("suite", "device", "device_type", "torch", "triton", "onnxruntime", "commit", "dirty", "date", "quick",
            "run_id", "cpu_threads")


@pytest.fixture(scope="module")
def quick_cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "run.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # one repeat: tests/benchmarks/test_runner.py covers repeats, and CI's time is better spent elsewhere
    proc = subprocess.run([sys.executable, "-m", "bnnkit", "bench", "--quick", "--repeats", "1", "--device", "cpu",
                           "--json", str(out)],
                          capture_output=True, text=True, env=env, cwd=out.parent, timeout=600)
    return proc, json.loads(out.read_text()) if out.exists() else None


def test_quick_cpu_run_succeeds_and_reports_every_suite(quick_cpu_run):
    proc, doc = quick_cpu_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert doc["format"] == RUN_FORMAT
    statuses = {s["suite"]: s for s in doc["suites"]}
    assert list(statuses)[:len(SUITE_MODULES)] == list(SUITE_MODULES)
    for suite, module in SUITE_MODULES.items():
        present = importlib.util.find_spec(f"bnnkit.benchmarks.{module}") is not None
        report = statuses[suite]
        if not present:
            assert report["status"] == "skipped" and f"benchmarks/{module}.py) is not present" in report["reason"]
        else:
            assert report["status"] in ("ok", "skipped"), report
            ran = [c for c in report["cases"] if c["status"] == "ok"]
            if report["status"] == "skipped":  # GPU-only suite: every case says why
                assert all("not on cpu" in c["reason"] for c in report["cases"]), report
            else:
                assert sum(c["rows"] for c in ran) == sum(r["suite"] == suite for r in doc["rows"]) > 0
    for suite in ("quantize", "onnx"):  # the suites the issue requires on CPU, once their modules have landed
        if importlib.util.find_spec(f"bnnkit.benchmarks.{SUITE_MODULES[suite]}") is not None:
            assert statuses[suite]["status"] == "ok"
    assert f"wrote {len(doc['rows'])} rows" in proc.stdout


def test_every_row_is_complete_and_related_to_the_ceilings(quick_cpu_run):
    _, doc = quick_cpu_run
    assert set(doc["ceilings"]) == {"copy", "fp32"} and all(v > 0 for v in doc["ceilings"].values())
    commit, dirty = git_commit()
    for row in doc["rows"]:
        assert set(REQUIRED_ROW_KEYS) | set(METADATA) <= set(row), row
        assert row["device"] == cpu_name() and row["device_type"] == "cpu" and row["quick"] is True
        assert row["torch"] == torch.__version__ and row["commit"] == commit
        datetime.datetime.fromisoformat(row["date"])
        assert 0 < row["p20_ms"] <= row["median_ms"] <= row["p80_ms"]
        if "gb_per_s" in row:
            assert row["pct_of_copy_ceiling"] == pytest.approx(100 * row["gb_per_s"] / doc["ceilings"]["copy"])
        if "tops" in row and row["dtype"] in ("fp32", "float32"):
            assert row["pct_of_compute_ceiling"] == pytest.approx(100 * row["tops"] / doc["ceilings"]["fp32"])
    copy = next(r for r in doc["rows"] if r["suite"] == "ceilings" and r["case"] == "copy")
    assert copy["pct_of_ceiling"] == pytest.approx(100.0) and copy["bound"] == "copy"
