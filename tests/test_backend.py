import pytest
import torch

from bnnkit import backend


def test_default_is_auto(monkeypatch):
    monkeypatch.delenv("BNNKIT_BACKEND", raising=False)
    assert backend.get_backend() == "auto"
    assert backend.use_triton(torch.zeros(1)) is False


def test_env_and_setter(monkeypatch):
    monkeypatch.setenv("BNNKIT_BACKEND", "torch")
    assert backend.get_backend() == "torch"
    with backend.use_backend("auto"):
        assert backend.get_backend() == "auto"
    assert backend.get_backend() == "torch"


def test_unknown_backend_names_choices(monkeypatch):
    monkeypatch.setenv("BNNKIT_BACKEND", "cuda")
    with pytest.raises(ValueError, match="auto, torch, triton, cpu"):
        backend.get_backend()
    with pytest.raises(ValueError, match="auto, torch, triton, cpu"):
        backend.set_backend("fast")


def test_which_backend_runs_the_packed_ops_on_cpu_and_cuda(monkeypatch):
    monkeypatch.delenv("BNNKIT_BACKEND", raising=False)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    native = backend.native_cpu_available()
    assert backend.use_native_cpu(torch.zeros(1)) is native  # auto: the native kernels when numba imports
    assert backend.use_native_cpu(cuda) is False
    with backend.use_backend("torch"):
        assert not backend.use_native_cpu(cpu) and not backend.use_triton(cpu)
    with backend.use_backend("cpu"):
        assert backend.use_triton(cuda) is False  # ops without native kernels run the reference
        with pytest.raises(RuntimeError, match="BNNKIT_BACKEND=cpu runs the native CPU kernels, which take CPU"):
            backend.use_native_cpu(cuda)
        if native:
            assert backend.use_native_cpu(cpu) is True


def test_forced_triton_on_cpu_needs_interpreter(monkeypatch):
    if not backend.triton_available():
        pytest.skip("triton not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with backend.use_backend("triton"):
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            backend.use_triton(torch.zeros(1))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with backend.use_backend("triton"):
        assert backend.use_triton(torch.zeros(1)) is True
