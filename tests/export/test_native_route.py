"""``predict`` and ``validate`` (its latency column included) run the packed model on the
native CPU kernels under the default backend, not on the PyTorch reference."""

import numpy as np
import pytest

pytest.importorskip("numba")

from bnnkit import backend  # noqa: E402
from bnnkit.data import load_digits_raw, load_digits_tensors  # noqa: E402
from bnnkit.kernels import cpu_binary_gemm  # noqa: E402
from bnnkit.predict import Predictor  # noqa: E402


@pytest.fixture
def native_calls(monkeypatch):
    """The number of native GEMM launches so far (a list holding one count)."""
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    monkeypatch.setattr(backend, "_override", None)
    calls = [0]
    real = cpu_binary_gemm.run_tasks

    def counting(kernel, tasks):
        calls[0] += 1
        return real(kernel, tasks)

    monkeypatch.setattr(cpu_binary_gemm, "run_tasks", counting)
    return calls


def test_predict_runs_the_native_kernels(digits_artifact, native_calls):
    raw, _ = load_digits_raw("test")
    predictor = Predictor.from_export(digits_artifact, "packed")
    got = predictor.predict(raw[:8].astype(np.uint8), top_k=1, batch_size=4)
    assert len(got) == 8 and native_calls[0] >= 2  # two batches, each through the packed linear layers


def test_validate_times_the_native_kernels(digits_artifact, native_calls):
    from bnnkit.export import validate

    x, y = load_digits_tensors("test")
    report = validate(None, str(digits_artifact), x[:32], y[:32], runtimes=["packed"], batch_size=8)
    packed = next(r for r in report.results if r.runtime == "packed")
    assert packed.status == "ok" and "native CPU kernels" in packed.detail
    assert packed.latency_ms is not None and packed.latency_ms > 0
    assert native_calls[0] >= 4  # every batch, the timed ones included
