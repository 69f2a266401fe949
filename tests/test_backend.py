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
    with pytest.raises(ValueError, match="auto, torch, triton"):
        backend.get_backend()
    with pytest.raises(ValueError, match="auto, torch, triton"):
        backend.set_backend("fast")


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
