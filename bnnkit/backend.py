"""Which implementation runs bnnkit's ops: the Triton kernels or their PyTorch references.

The switch is ``BNNKIT_BACKEND`` (read on every call, so tests may change it) or
:func:`set_backend` / :func:`use_backend`, which take precedence over the variable:

- ``auto`` (default): Triton kernels for CUDA tensors, the PyTorch reference otherwise.
- ``torch``: always the PyTorch reference (CPU and GPU).
- ``triton``: always the Triton kernels. On CPU tensors this works only under
  ``TRITON_INTERPRET=1`` (Triton's interpreter; that is how the tests run the kernels on a
  machine without a GPU) and raises otherwise.

``BNNKIT_AUTOTUNE`` (``1`` by default) lets the binary GEMM / convolution kernels autotune
their tile configs on CUDA on the first call per shape bucket; ``0`` takes each config list's
first fitting entry without tuning runs (:mod:`bnnkit.kernels.launch`).

Nothing here touches the GPU at import time.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

import torch

BACKENDS = ("auto", "torch", "triton")
ENV_VAR = "BNNKIT_BACKEND"

_override: str | None = None


def _check_name(name: str, source: str) -> str:
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"{source}={name!r} is not a bnnkit backend; expected one of {', '.join(BACKENDS)}")
    return name


def get_backend() -> str:
    """The backend in force: the :func:`set_backend` value, else ``$BNNKIT_BACKEND``, else ``auto``."""
    if _override is not None:
        return _override
    return _check_name(os.environ.get(ENV_VAR, "auto") or "auto", ENV_VAR)


def set_backend(name: str | None) -> None:
    """Force a backend for this process (``None`` returns to ``$BNNKIT_BACKEND``)."""
    global _override
    _override = None if name is None else _check_name(name, "backend")


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager that runs its body under backend ``name`` and restores the previous one."""
    global _override
    previous = _override
    set_backend(name)
    try:
        yield
    finally:
        _override = previous


def triton_interpret() -> bool:
    """True when Triton's interpreter is on (``TRITON_INTERPRET=1``): kernels run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when the ``triton`` package imports (Linux wheels only)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(device: torch.device | torch.Tensor) -> bool:
    """Whether the op on ``device`` (or a tensor's device) runs the Triton kernel.

    Raises ``RuntimeError`` when the ``triton`` backend is forced where it cannot run.
    """
    if isinstance(device, torch.Tensor):
        device = device.device
    backend = get_backend()
    if backend == "torch":
        return False
    if backend == "auto":
        return device.type == "cuda" and triton_available()
    if not triton_available():
        raise RuntimeError("BNNKIT_BACKEND=triton but the triton package is not installed; use 'auto' or 'torch'")
    if device.type == "cuda":
        return True
    if device.type == "cpu" and triton_interpret():
        return True
    raise RuntimeError(
        f"BNNKIT_BACKEND=triton needs CUDA tensors, got a tensor on {device}; Triton kernels run on CPU "
        "tensors only under TRITON_INTERPRET=1 (for testing). Use BNNKIT_BACKEND=auto or torch on CPU."
    )
