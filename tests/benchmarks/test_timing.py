"""Timing helpers: percentiles in order, the method named, fast CPU functions batched per sample."""

import pytest
import torch

from bnnkit.benchmarks import timing


def test_cpu_timing_orders_percentiles_and_names_its_timer():
    x = torch.randn(256, 256)
    t = timing.time_fn(lambda: x @ x, torch.device("cpu"), quick=True)
    assert t["timer"] == "cpu"
    assert 0 < t["p20_ms"] <= t["median_ms"] <= t["p80_ms"]


def test_fast_cpu_functions_are_called_several_times_per_sample():
    calls = []
    t = timing.time_cpu(lambda: calls.append(1), warmup=2, reps=5)
    # a no-op takes far less than MIN_CPU_SAMPLE_MS: each of the 5 samples averages many calls
    assert len(calls) > 2 + 5 * 10
    assert t["median_ms"] < timing.MIN_CPU_SAMPLE_MS


def test_slow_cpu_functions_are_called_once_per_sample():
    calls = []

    def slow():
        calls.append(1)
        torch.randn(512, 512) @ torch.randn(512, 512)
        sum(range(200_000))

    timing.time_cpu(slow, warmup=1, reps=3)
    assert len(calls) == 1 + 3


def test_cpu_timing_rejects_no_repetitions():
    with pytest.raises(ValueError, match="reps >= 1"):
        timing.time_cpu(lambda: None, warmup=1, reps=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_timing_with_and_without_graphs():
    x = torch.randn(64, 64, device="cuda")
    plain = timing.time_fn(lambda: x @ x, x.device, quick=True)
    graph = timing.time_fn(lambda: x @ x, x.device, quick=True, cuda_graph=True)
    assert plain["timer"] == "do_bench" and graph["timer"] == "cuda_graph"
    for t in (plain, graph):
        assert 0 < t["p20_ms"] <= t["median_ms"] <= t["p80_ms"]


def test_interleaved_timing_rotates_the_order_round_by_round():
    order: list[str] = []
    fns = {name: (lambda name=name: order.append(name)) for name in ("a", "b", "c")}
    t, samples = timing.time_interleaved(fns, warmup=1, reps=3)
    assert set(t) == set(samples) == {"a", "b", "c"}
    assert all(len(samples[k]) == 3 and v["timer"] == "cpu_interleaved" for k, v in t.items())
    runs = [name for i, name in enumerate(order[3:]) if i == 0 or order[3 + i - 1] != name]  # one entry per sample
    assert runs == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    with pytest.raises(ValueError, match="reps >= 1"):
        timing.time_interleaved(fns, reps=0)
