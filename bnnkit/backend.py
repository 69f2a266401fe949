"""Which implementation runs bnnkit's ops: the Triton kernels, the native CPU kernels or
their PyTorch references.

The switch is ``BNNKIT_BACKEND`` (read on every call, so tests may change it) or
:func:`set_backend` / :func:`use_backend`, which take precedence over the variable:

- ``auto`` (default): Triton kernels for CUDA tensors; for CPU tensors the native CPU
  kernels of the packed ops (:mod:`bnnkit.kernels.cpu_binary_gemm` /
  :mod:`~bnnkit.kernels.cpu_binary_conv`, compiled by numba) when numba imports, else the
  PyTorch reference with one warning; the PyTorch reference for every other op on CPU.
- ``torch``: always the PyTorch reference (CPU and GPU).
- ``triton``: always the Triton kernels. On CPU tensors this works only under
  ``TRITON_INTERPRET=1`` (Triton's interpreter; that is how the tests run the kernels on a
  machine without a GPU) and raises otherwise.
- ``cpu``: the native CPU kernels for the packed ops (raises for CUDA tensors, and when
  numba is missing); the PyTorch reference for the ops that have no native kernel (training's
  binarization and estimators, the W1A16 route of the packed ops).

``BNNKIT_AUTOTUNE`` (``1`` by default) lets the binary GEMM / convolution kernels autotune
their tile configs on CUDA on the first call per shape bucket; ``0`` takes each config list's
first fitting entry without tuning runs (:mod:`bnnkit.kernels.launch`).

Nothing here touches the GPU at import time.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import warnings
from collections.abc import Iterator

import torch

BACKENDS = ("auto", "torch", "triton", "cpu")
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
    return _use_triton(get_backend(), device)


def _use_triton(backend: str, device: torch.device) -> bool:
    if backend in ("torch", "cpu"):
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


@functools.lru_cache(maxsize=None)
def native_cpu_problem() -> str | None:
    """Why the native CPU kernels cannot run here (numba missing or broken, a big-endian
    machine), or None when they can. Imports numba (once)."""
    if sys.byteorder != "little":
        return "the native CPU kernels read packed words as little-endian uint64"
    try:
        import numba  # noqa: F401
    except Exception as e:  # ImportError, or a numba that fails against the installed numpy
        return f"numba does not import ({type(e).__name__}: {e}); pip install numba"
    return None


def native_cpu_available() -> bool:
    """True when the native CPU kernels can run (numba imports)."""
    return native_cpu_problem() is None


@functools.lru_cache(maxsize=None)
def _warn_reference_fallback(problem: str) -> None:
    warnings.warn(f"bnnkit: packed layers on CPU run the slow PyTorch reference: {problem}", RuntimeWarning,
                  stacklevel=4)


def packed_route(device: torch.device | torch.Tensor) -> str:
    """Which implementation a packed op on ``device`` runs: ``"triton"``, ``"cpu"`` (the native
    CPU kernels) or ``"torch"`` (the reference); one read of the backend, the rules of
    :func:`use_triton` and :func:`use_native_cpu` (raising where they raise)."""
    if isinstance(device, torch.Tensor):
        device = device.device
    backend = get_backend()
    if backend == "torch":
        return "torch"
    if backend == "triton":
        return "triton" if _use_triton(backend, device) else "torch"
    if backend == "auto" and device.type != "cpu":
        return "triton" if _use_triton(backend, device) else "torch"
    return "cpu" if _use_native_cpu(backend, device) else "torch"


def use_native_cpu(device: torch.device | torch.Tensor) -> bool:
    """Whether a packed op on ``device`` (or a tensor's device) runs the native CPU kernels.

    ``auto``: on CPU tensors when numba imports (otherwise one warning, then the reference);
    ``cpu``: on CPU tensors, raising ``RuntimeError`` for other devices or without numba.
    """
    if isinstance(device, torch.Tensor):
        device = device.device
    return _use_native_cpu(get_backend(), device)


def _use_native_cpu(backend: str, device: torch.device) -> bool:
    if backend in ("torch", "triton"):
        return False
    if backend == "auto":
        if device.type != "cpu":
            return False
        problem = native_cpu_problem()
        if problem is not None:
            _warn_reference_fallback(problem)
        return problem is None
    if device.type != "cpu":
        raise RuntimeError(f"BNNKIT_BACKEND=cpu runs the native CPU kernels, which take CPU tensors; got a tensor "
                           f"on {device}. Use BNNKIT_BACKEND=auto (Triton on CUDA) or torch.")
    problem = native_cpu_problem()
    if problem is not None:
        raise RuntimeError(f"BNNKIT_BACKEND=cpu: {problem}")
    return True
