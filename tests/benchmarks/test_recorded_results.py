"""The recorded results in benchmarks/results are complete rows, and the README's table is generated from them."""

import os

from bnnkit.benchmarks import readme_table, recording
from bnnkit.benchmarks.runner import REQUIRED_ROW_KEYS

ROOT = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir)
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def test_readme_table_is_generated_from_the_recorded_rows():
    assert readme_table.main(["--check", "--results-dir", RESULTS, "--readme", os.path.join(ROOT, "README.md")]) == 0


def test_recorded_results_are_complete_rows():
    docs = recording.load_results_dir(RESULTS)
    assert docs, "benchmarks/results holds at least the development machine's CPU run"
    for doc in docs:
        assert doc["rows"]
        for r in doc["rows"]:
            assert r["device"] == doc["device"]
            assert set(REQUIRED_ROW_KEYS) | {"suite", "torch", "triton", "onnxruntime", "commit", "date"} <= set(r)
            assert r["median_ms"] > 0 and r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
            assert len(r["commit"]) == 40
