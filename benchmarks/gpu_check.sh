#!/usr/bin/env bash
# One prepared run for a lent GPU machine without network: install, print the GPU, run the
# GPU tests and the kernel tests on CUDA, then every benchmark suite in quick mode, each in
# its own process with its own time budget; the whole run ends within 8 minutes (465 s by
# default). A failing or hanging suite does not stop the others; a suite killed at its budget
# keeps the rows it measured (the run file is rewritten after every case).
#
#   OUT=/path/to/dir bash benchmarks/gpu_check.sh        (from the repository root)
#
# Writes into $OUT, flat (5 files, 6 if combining fails):
#   env.txt      nvidia-smi, versions, install log
#   tests.log    pytest -m "gpu or kernels"
#   bench.log    every suite's log (tracebacks of failing cases included)
#   bench.json   the combined run file (all suites, ceilings measured once, first)
#   summary.txt  one line per step with its exit code and time (also printed at the end)
# Then, on the machine with the git checkout:
#   python -m bnnkit.benchmarks.recording merge OUT/bench.json --commit <the commit the tree was copied from>
#   python -m bnnkit.benchmarks.plot && python -m bnnkit.benchmarks.readme_table
#
# Settings (environment): PYTHON (python3), GPU_CHECK_DEVICE (cuda), GPU_CHECK_SUITES
# (all), GPU_CHECK_TOTAL_S (465: nothing starts after this), GPU_CHECK_TEST_S (120),
# GPU_CHECK_PYTEST (the pytest marker expression, "gpu or kernels"; empty skips the tests),
# GPU_CHECK_INSTALL (1; 0 skips pip), GPU_CHECK_MODE (quick; "full" drops --quick, which needs
# larger budgets), GPU_CHECK_SUITE_S (one budget in seconds for every suite instead of the
# per-suite ones below).
set -uo pipefail
cd "$(dirname "$0")/.."

: "${OUT:?set OUT to the directory that receives the logs and results}"
mkdir -p "$OUT"
PY=${PYTHON:-python3}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
SUITES=${GPU_CHECK_SUITES:-ceilings quantize train gemm conv model onnx}
TEST_S=${GPU_CHECK_TEST_S:-120}
TEST_MARKERS=${GPU_CHECK_PYTEST-gpu or kernels}
MODE_ARGS=(--quick)
[ "${GPU_CHECK_MODE:-quick}" = full ] && MODE_ARGS=()
START=$(date +%s)
DEADLINE=$((START + ${GPU_CHECK_TOTAL_S:-465}))
RESERVE_S=15  # kept for combining the run files at the end
SUMMARY="$OUT/summary.txt"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
: > "$SUMMARY"

# seconds per suite in quick mode (sum 300): first-call Triton compilation and autotuning
# included. Install ~20 s + tests 120 s + suites 300 s + reserve 15 s stays under 465 s.
budget_of() {
    if [ -n "${GPU_CHECK_SUITE_S:-}" ]; then echo "$GPU_CHECK_SUITE_S"; return; fi
    case "$1" in
        ceilings) echo 20 ;; quantize) echo 40 ;; train) echo 30 ;; gemm) echo 60 ;;
        conv) echo 55 ;; model) echo 70 ;; onnx) echo 25 ;; *) echo 30 ;;
    esac
}
elapsed() { echo $(($(date +%s) - START)); }
note() { echo "$*" | tee -a "$SUMMARY"; }

# 1. the machine and the install
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    nvidia-smi || echo "nvidia-smi failed or is absent"
    if [ "${GPU_CHECK_INSTALL:-1}" = 1 ]; then
        echo "+ $PY -m pip install --no-deps --no-build-isolation -e ."
        $PY -m pip install --no-deps --no-build-isolation -e . 2>&1 | tail -n 5
    fi
    # An old setuptools (no bdist_wheel) makes the editable install fail; then import the
    # checkout through a symlink tree that applies the package-dir mapping by hand.
    if ! $PY -c "import bnnkit.kernels, bnnkit.export, bnnkit.benchmarks" 2>/dev/null; then
        mkdir -p "$WORK/shim/bnnkit"
        for f in "$PWD"/bnnkit/*; do ln -s "$f" "$WORK/shim/bnnkit/"; done
        for d in kernels export benchmarks; do ln -s "$PWD/$d" "$WORK/shim/bnnkit/$d"; done
        export PYTHONPATH="$WORK/shim${PYTHONPATH:+:$PYTHONPATH}"
        echo "bnnkit did not import after the install; using the PYTHONPATH shim $WORK/shim"
    fi
} > "$OUT/env.txt" 2>&1
$PY - "$DEVICE" >> "$OUT/env.txt" 2>&1 <<'PYEOF'
import platform
import sys

import torch

print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version())
for name in ("triton", "onnxruntime", "onnx", "bnnkit"):
    try:
        print(name, __import__(name).__version__)
    except Exception as e:
        print(name, "unavailable:", e)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"sm_{p.major}{p.minor}", p.multi_processor_count, "SMs", round(p.total_memory / 2**30, 1), "GiB")
else:
    print("no CUDA device visible to torch")
try:
    import bnnkit.benchmarks.runner  # noqa: F401
except Exception as e:
    print("bnnkit.benchmarks does not import:", repr(e))
    sys.exit(3)
sys.exit(4 if sys.argv[1] == "cuda" and not torch.cuda.is_available() else 0)
PYEOF
rc=$?
cat "$OUT/env.txt"
note "env: $(grep -E '^(gpu|no CUDA|python)' "$OUT/env.txt" | tr '\n' ' ')($(elapsed) s)"
case $rc in
    0) ;;
    4) note "no CUDA device available; nothing to measure"; exit 1 ;;
    *) note "bnnkit does not import or the environment check failed (rc=$rc, see env.txt); nothing else can run"
       exit 1 ;;
esac

# 2. the GPU tests
if [ -n "$TEST_MARKERS" ]; then
    timeout -k 5 "$TEST_S" $PY -m pytest -q -p no:cacheprovider -m "$TEST_MARKERS" > "$OUT/tests.log" 2>&1
    rc=$?
    case $rc in
        0) what="passed" ;; 5) what="no test selected" ;; 124|137) what="killed after ${TEST_S} s" ;; *) what="FAILED" ;;
    esac
    note "tests (-m \"$TEST_MARKERS\"): $what, rc=$rc: $(tail -n 1 "$OUT/tests.log") ($(elapsed) s)"
fi

# 3. every suite, each with its budget; the ceilings first, then reused by the others
for suite in $SUITES; do
    left=$((DEADLINE - $(date +%s) - RESERVE_S))
    budget=$(budget_of "$suite")
    [ "$budget" -gt "$left" ] && budget=$left
    if [ "$budget" -lt 10 ]; then
        note "$suite: not run, the run's time is spent ($(elapsed) s)"
        continue
    fi
    args=(--suite "$suite" "${MODE_ARGS[@]}" --device "$DEVICE" --json "$WORK/$suite.json"
          --budget-s $((budget * 2 / 3)) --no-table)
    if [ "$suite" != ceilings ] && [ -s "$WORK/ceilings.json" ]; then
        args+=(--ceilings-from "$WORK/ceilings.json")
    fi
    echo "=== $suite (budget $budget s): ${args[*]}" >> "$OUT/bench.log"
    timeout -k 5 "$budget" $PY -m bnnkit.benchmarks "${args[@]}" >> "$OUT/bench.log" 2>&1
    rc=$?
    # the runner's last word on the suite ("quantize: ok", "gemm: skipped: ...") unless it was killed
    status=$(grep -E "^$suite: " "$OUT/bench.log" | tail -n 1)
    case $rc in
        0|1) what=${status:-"$suite: no status printed"} ;;
        124|137) what="$suite: killed at its ${budget} s budget (rows measured before are kept)" ;;
        *) what="$suite: error (see bench.log)" ;;
    esac
    note "$what; rc=$rc ($(elapsed) s)"
done

# 4. one run file
parts=()
for suite in $SUITES; do
    [ -s "$WORK/$suite.json" ] && parts+=("$WORK/$suite.json")
done
if [ ${#parts[@]} -eq 0 ]; then
    note "no suite wrote a run file"
elif $PY -m bnnkit.benchmarks.recording combine "${parts[@]}" --out "$OUT/bench.json" --table 2>> "$SUMMARY"; then
    note "wrote bench.json from ${#parts[@]} run files"
else
    tar -cf "$OUT/bench-parts.tar" -C "$WORK" . && note "combining failed; the per-suite run files are in bench-parts.tar"
fi
note "done in $(elapsed) s"
echo "--- summary"
cat "$SUMMARY"
