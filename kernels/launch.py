"""Launch-time decisions shared by the binary kernels: tile configs, autotuning, TMA descriptors.

Nothing here runs at import time; the GPU is queried when a kernel is launched.

``BNNKIT_AUTOTUNE`` (default ``1``): on CUDA, the binary GEMM/conv kernels are autotuned over
their config lists on the first call for each shape bucket (cached for the process). ``0``
uses each list's first config that fits the shape, with no tuning runs.
"""

from __future__ import annotations

import functools
import os

import torch
from .triton_compat import triton


def autotune_enabled() -> bool:
    return os.environ.get("BNNKIT_AUTOTUNE", "1").strip() not in ("0", "", "false", "no")


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def is_hopper_or_newer(device: torch.device) -> bool:
    """True on sm_90+ CUDA devices, where TMA tensor descriptors are native."""
    if device.type != "cuda":
        return False
    return _capability(device.index if device.index is not None else torch.cuda.current_device())[0] >= 9


def tma_compatible(t: torch.Tensor) -> bool:
    """Whether a 2-D row-major view can back a TMA descriptor: 16-byte aligned base and row stride."""
    size = t.element_size()
    return t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and (t.stride(0) * size) % 16 == 0


def _torch_allocator(size: int, alignment: int, stream: int | None) -> torch.Tensor:
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _cpu_allocator(size: int, alignment: int, stream: int | None) -> torch.Tensor:
    return torch.empty(size, dtype=torch.int8)


def ensure_descriptor_allocator(device: torch.device) -> None:
    """Kernels that build tensor descriptors need Triton's scratch allocator; set one unless the
    caller already did (Triton keeps it in a context variable, so this is per thread)."""
    try:
        from triton.runtime._allocation import _NULL_ALLOCATOR, _allocator

        if _allocator.get() is not _NULL_ALLOCATOR:
            return
    except ImportError:  # layout of a future Triton; setting it again is harmless
        pass
    triton.set_allocator(_torch_allocator if device.type == "cuda" else _cpu_allocator)


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def check_residual(residual: torch.Tensor | None, shape: tuple[int, ...], device: torch.device) -> None:
    """A residual must be a float tensor of the output's (unpacked) shape on the same device."""
    if residual is None:
        return
    if tuple(residual.shape) != shape:
        raise ValueError(f"residual must have shape {shape}, got {tuple(residual.shape)}")
    if not residual.is_floating_point():
        raise TypeError(f"residual must be a float tensor, got {residual.dtype}")
    if residual.device != device:
        raise ValueError(f"residual is on {residual.device}, expected {device}")


def prepare_out(out: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype,
                device: torch.device) -> torch.Tensor:
    """``out`` checked (contiguous, shape, dtype, device), or a new tensor. The epilogue
    addresses outputs with int32 offsets, so an output has fewer than 2**31 elements."""
    numel = 1
    for d in shape:
        numel *= d
    if numel >= 2**31:
        raise ValueError(f"output of shape {shape} has 2**31 or more elements; split the batch")
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    if tuple(out.shape) != shape or out.dtype != dtype or not out.is_contiguous() or out.device != device:
        raise ValueError(f"out must be a contiguous {dtype} tensor of shape {shape} on {device}, got "
                         f"{out.dtype} {tuple(out.shape)} on {out.device}")
    return out
