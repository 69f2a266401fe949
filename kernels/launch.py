"""How the kernels are launched: the device guard, the TMA scratch allocator, and
:class:`TunedKernel`, the one launch path of the tiled binary kernels.

Nothing here runs at import time; the GPU is queried when a kernel is launched.

``BNNKIT_AUTOTUNE`` (default ``1``): on CUDA, the binary GEMM/conv kernels are autotuned over
their config lists on the first call for each shape bucket (cached for the process). ``0``
uses each list's first config that fits the shape, with no tuning runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .bits import interpreting
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


def on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """The context a kernel for tensors on ``device`` is launched in: Triton launches on the
    current CUDA device (and its current stream), so CUDA launches make ``device`` current."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class DeviceAllocator:
    """Triton's scratch allocator (for tensor descriptors) on one device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self, size: int, alignment: int, stream: int | None) -> torch.Tensor:
        return torch.empty(size, dtype=torch.int8, device=self.device)

    def __repr__(self) -> str:
        return f"DeviceAllocator({self.device})"


@functools.lru_cache(maxsize=None)
def _allocator_on(device: torch.device) -> DeviceAllocator:
    return DeviceAllocator(device)


def _current_allocator() -> Any:
    """Triton's allocator in this context (``None`` for the null allocator, or for a Triton
    whose internals differ)."""
    try:
        from triton.runtime._allocation import NullAllocator, _allocator
    except ImportError:  # layout of a future Triton
        return None
    current = _allocator.get()
    return None if isinstance(current, NullAllocator) else current


def ensure_descriptor_allocator(device: torch.device) -> None:
    """Kernels that build tensor descriptors need Triton's scratch allocator: set one that
    allocates on ``device``, unless the caller set their own (Triton keeps it in a context
    variable, so this is per thread)."""
    current = _current_allocator()
    if current is not None and not isinstance(current, DeviceAllocator):
        return  # the caller's allocator
    if current is None or current.device != device:
        triton.set_allocator(_allocator_on(device))


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def prune_reading(*names: str) -> Callable:
    """Declare the arguments an ``early_config_prune`` function reads.

    The decorated function is called as ``fn(configs, args)`` with ``args`` holding only
    ``names`` (a name it reads without declaring raises ``KeyError``), so :class:`TunedKernel`
    can check that every one of them is in the autotune key; a prune decision on an argument
    outside the key would be cached for, and reused by, calls it does not fit.
    """
    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def prune(configs: list, named_args: Mapping[str, Any], **kwargs: Any) -> list:
            merged = {**named_args, **kwargs}
            return fn(configs, {name: merged[name] for name in names})

        prune.reads = tuple(names)
        return prune

    return wrap


Grid = Callable[[Mapping[str, Any]], tuple]


@dataclasses.dataclass(eq=False)
class TunedKernel:
    """A tiled Triton kernel with its tile configs and the one way bnnkit launches it.

    - Under the interpreter (``TRITON_INTERPRET=1``): ``interpret_config(args)`` (large tiles:
      fewer interpreted steps), no autotuning.
    - ``BNNKIT_AUTOTUNE=0``: the first config ``prune`` keeps, with its warps and stages.
    - Otherwise Triton's autotuner over ``configs``, keyed by ``key``.

    ``prune`` is a :func:`prune_reading` function; everything it reads must be in ``key``
    (checked here). ``derived`` maps constexpr names to functions of the arguments and the
    chosen config (Triton heuristics, e.g. ``EVEN_K``). A kernel with an ``INTERPRET``
    parameter gets :func:`~bnnkit.kernels.bits.interpreting`.
    """

    kernel: Any
    configs: list
    key: list[str]
    prune: Callable
    interpret_config: Callable[[Mapping[str, Any]], dict]
    derived: dict[str, Callable[[Mapping[str, Any]], Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        unkeyed = [name for name in self.prune.reads if name not in self.key]
        if unkeyed:
            raise ValueError(f"the prune function {self.prune.__name__} reads {unkeyed}, which the autotune key "
                             f"{self.key} lacks")
        fn = triton.heuristics(self.derived)(self.kernel) if self.derived else self.kernel
        prune = {"early_config_prune": self.prune}
        self.tuned = triton.autotune(self.configs, key=self.key, prune_configs_by=prune)(fn)

    def __call__(self, grid: Grid, args: dict[str, Any], device: torch.device, *, descriptors: bool = False) -> None:
        """Launch on ``device`` with the named arguments ``args`` (every non-tile argument);
        ``grid(meta)`` gives the grid for the arguments plus the chosen config."""
        if "INTERPRET" in self.kernel.arg_names:
            args = {**args, "INTERPRET": interpreting()}
        if descriptors:
            ensure_descriptor_allocator(device)
        with on_device(device):
            if interpreting():
                config, options = self.interpret_config(args), {}
            elif not autotune_enabled():
                chosen = self.prune(self.configs, args)[0]
                config, options = chosen.kwargs, {"num_warps": chosen.num_warps, "num_stages": chosen.num_stages}
            else:
                self.tuned[grid](**args)
                return
            meta = {**args, **config}
            derived = {name: fn(meta) for name, fn in self.derived.items()}
            self.kernel[grid({**meta, **derived})](**args, **config, **derived, **options)


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
