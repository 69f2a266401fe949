"""benchmarks/gpu_check.sh: its plumbing, exercised on the CPU with a short suite list."""

import json
import os
import re
import subprocess
import sys

from bnnkit.benchmarks.runner import read_run_file

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "benchmarks", "gpu_check.sh")


def test_script_parses():
    subprocess.run(["bash", "-n", SCRIPT], check=True)


def test_a_failing_suite_does_not_stop_the_others_and_out_stays_small(tmp_path):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(OUT=str(out), PYTHON=sys.executable, GPU_CHECK_DEVICE="cpu", GPU_CHECK_INSTALL="0",
               GPU_CHECK_PYTEST="", GPU_CHECK_SUITES="no_such_suite ceilings",
               GPU_CHECK_SUITE_S="240", GPU_CHECK_TOTAL_S="600")  # plumbing, not speed: generous budgets
    proc = subprocess.run(["bash", SCRIPT], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = sorted(os.listdir(out))
    assert files == ["bench.json", "bench.log", "env.txt", "summary.txt"]  # flat, at most 8 come back
    summary = (out / "summary.txt").read_text()
    assert "no_such_suite: error (see bench.log); rc=2" in summary
    assert "ceilings: ok; rc=0" in summary
    assert "unknown benchmark suite 'no_such_suite'" in (out / "bench.log").read_text()
    doc = read_run_file(str(out / "bench.json"))
    assert set(doc["ceilings"]) == {"copy", "fp32"}
    assert {r["case"] for r in doc["rows"]} == {"copy", "matmul"}
    assert "torch" in (out / "env.txt").read_text()
    json.dumps(doc, allow_nan=False)


def test_default_budgets_end_within_8_minutes():
    """The suites' budgets, the tests' and the reserve fit the default deadline, which leaves
    room for the install within the 8 minutes a lent GPU run may take."""
    text = open(SCRIPT).read()
    total = int(re.search(r"GPU_CHECK_TOTAL_S:-(\d+)", text).group(1))
    tests = int(re.search(r"GPU_CHECK_TEST_S:-(\d+)", text).group(1))
    reserve = int(re.search(r"RESERVE_S=(\d+)", text).group(1))
    cases = re.search(r'case "\$1" in\n(.*?)\n\s*esac', text, re.S).group(1)
    suites = {name: int(s) for name, s in re.findall(r"(\w+)\) echo (\d+) ;;", cases)}
    assert {"ceilings", "quantize", "train", "gemm", "conv", "model", "onnx"} <= set(suites)
    assert tests + sum(suites.values()) + reserve <= total <= 480 - 15
