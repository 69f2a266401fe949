"""Marks the kernel-vs-reference tests ``kernels`` (the cross-compilation tests excepted), so a
GPU machine can run them on CUDA: ``pytest -m "gpu or kernels"`` (benchmarks/gpu_check.sh)."""

import os

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if os.path.dirname(os.path.abspath(str(item.path))) == _HERE and "compile" not in item.name:
            item.add_marker(pytest.mark.kernels)
