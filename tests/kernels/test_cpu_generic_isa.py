"""The native CPU kernels' exactness tests once more, compiled for a generic x86-64 / aarch64
target (``NUMBA_CPU_NAME=generic``: SSE2 or base NEON, no AVX2 / AVX-512), in a subprocess
with its own numba cache: what the CI machine's ISA offers does not decide what is tested."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("numba")

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = ["test_cpu_binary_gemm.py", "test_cpu_binary_conv.py", "test_cpu_runtime.py"]


def test_exactness_tests_pass_on_a_generic_target(tmp_path):
    env = {**os.environ, "NUMBA_CPU_NAME": "generic", "NUMBA_CPU_FEATURES": "", "NUMBA_CACHE_DIR": str(tmp_path),
           "BNNKIT_CPU_EXAMPLES": "8"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                          *[os.path.join(HERE, f) for f in FILES]],
                         cwd=os.path.dirname(os.path.dirname(HERE)), env=env, capture_output=True, text=True,
                         timeout=1800)
    tail = (out.stdout + out.stderr)[-3000:]
    assert out.returncode == 0, tail
    assert " passed" in out.stdout and "failed" not in out.stdout, tail
