"""``triton`` and ``triton.language`` for kernel modules, whether or not Triton is installed.

Triton ships for Linux only. Elsewhere the kernel modules must still import, because the
PyTorch references beside the kernels are bnnkit's CPU path. Without Triton, ``triton`` and
``tl`` below are stand-ins: decorators (``triton.jit``, ``triton.autotune``) and
module-level attributes evaluate to placeholders, and launching a kernel raises an
ImportError that says what to install. The backend switch never picks a kernel then
(:func:`bnnkit.backend.use_triton` is False under ``auto``/``torch`` and raises under
``triton``), so the stand-in is only reached by calling a launcher directly.

Kernel modules import ``from bnnkit.kernels.triton_compat import triton, tl``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["HAS_TRITON", "tl", "triton"]


class _Unavailable:
    """Stands for any attribute of the missing package; used as a decorator it returns a kernel
    placeholder that refuses to launch."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> _Unavailable:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Unavailable(f"{self._name}.{attr}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and callable(args[0]) and not kwargs:  # @triton.jit / @triton.autotune(...)
            return _UnlaunchableKernel(args[0])
        return self  # decorator factories (triton.jit(...), triton.autotune(...)) and triton.Config(...)

    def __repr__(self) -> str:
        return f"<{self._name}: Triton is not installed>"


class _UnlaunchableKernel:
    def __init__(self, fn: Any) -> None:
        self.fn = getattr(fn, "fn", fn)
        self.__name__ = getattr(self.fn, "__name__", "kernel")
        self.__doc__ = getattr(self.fn, "__doc__", None)

    def __getitem__(self, grid: Any) -> Any:
        raise ImportError(f"Triton kernel {self.__name__} cannot run: the triton package is not installed "
                          "(it ships for Linux; pip install triton). Use BNNKIT_BACKEND=auto or torch.")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self[None]


try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:
    triton = _Unavailable("triton")  # type: ignore[assignment]
    tl = _Unavailable("triton.language")  # type: ignore[assignment]
    HAS_TRITON = False
