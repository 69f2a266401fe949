"""The seeded mutation fuzzer (tests/trust_fuzz.py) over manifests, graphs, run configs, run
manifests, checkpoints and metrics files: every case is a one-line refusal or a result that
works; no marker file, no hang, no traceback, bounded memory.

CI runs a fixed budget (the same cases every time, seconds); ``BNNKIT_FUZZ_CASES`` runs more
(and ``BNNKIT_FUZZ_SEED`` others), e.g. ``BNNKIT_FUZZ_CASES=20000 pytest tests/test_trust_fuzz.py``.
"""

import json
import os
import subprocess
import sys

CI_CASES = 350


def test_the_fuzzer_finds_nothing(tmp_path):
    cases = int(os.environ.get("BNNKIT_FUZZ_CASES", CI_CASES))
    seed = int(os.environ.get("BNNKIT_FUZZ_SEED", "0"))
    script = os.path.join(os.path.dirname(__file__), "trust_fuzz.py")
    run = subprocess.run([sys.executable, script, "--cases", str(cases), "--seed", str(seed), "--workdir",
                          str(tmp_path)], capture_output=True, text=True, timeout=max(600, cases),
                         env=dict(os.environ, BNNKIT_BACKEND="torch"))
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["failures"] == [], json.dumps(report["failures"][:10], indent=1)
    assert report["refused"] + report["ran"] + report["skipped"] == cases
    assert report["refused"] > cases // 2 and report["ran"] > 0  # both outcomes exercised
    assert report["skipped"] < cases // 20
    assert report["max_case_growth_mb"] < 500, report["heaviest_cases"]  # generous: a bomb is gigabytes
