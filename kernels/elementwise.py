"""Argument checks and memory-layout handling shared by the elementwise training kernels.

The kernels index a flat range of elements. A tensor whose elements fill one dense block of
memory without overlap (contiguous, channels_last, or any permutation of those) is handed to
a kernel as it is, and the output is allocated with the same strides, so the flat position of
an element is the same in every operand. Anything else (slices with gaps, expanded or
overlapping views, operands with different layouts) is copied with ``.contiguous()`` first.
"""

from __future__ import annotations

import torch

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
"""Floating dtypes the Triton training kernels accept (float64 stays on the PyTorch reference)."""

INT32_MAX = 2**31 - 1


def check_kernel_tensor(t: torch.Tensor, name: str, op: str) -> None:
    """Raise a ``TypeError`` naming the accepted dtypes if ``t`` is not fp16, bf16 or fp32."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in KERNEL_DTYPES:
        raise TypeError(
            f"{op}: {name} has dtype {t.dtype}; the Triton kernel accepts torch.float16, torch.bfloat16 "
            "and torch.float32 (use the PyTorch reference, BNNKIT_BACKEND=torch, for other dtypes)"
        )


def check_same_shape_device(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str], op: str) -> None:
    """Raise a ``ValueError`` if ``a`` and ``b`` differ in shape or device."""
    if a.shape != b.shape:
        raise ValueError(f"{op}: {names[1]} has shape {tuple(b.shape)} but {names[0]} has shape {tuple(a.shape)}; "
                         "they must match")
    if a.device != b.device:
        raise ValueError(f"{op}: {names[1]} is on {b.device} but {names[0]} is on {a.device}; they must match")


def needs_int64_index(last_offset: int) -> bool:
    """Whether a kernel must compute offsets in int64 to reach element ``last_offset``.

    ``last_offset`` is the largest offset any lane computes, masked lanes included (so a grid
    of ``ceil(n / BLOCK)`` blocks reaches ``ceil(n / BLOCK) * BLOCK - 1``).
    """
    return last_offset > INT32_MAX


def is_dense_non_overlapping(t: torch.Tensor) -> bool:
    """True when ``t``'s elements occupy exactly ``t.numel()`` consecutive memory slots, each once."""
    dims = sorted((s, n) for s, n in zip(t.stride(), t.shape) if n != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def shared_dense_layout(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The operands of an elementwise kernel, in one dense layout they all share.

    Returns the tensors unchanged when they have the same strides and are dense and
    non-overlapping; otherwise ``.contiguous()`` copies of each (a copy only where needed).
    Allocate the output with ``torch.empty_like(result[0])`` to get the same layout.
    """
    first = tensors[0]
    if is_dense_non_overlapping(first) and all(t.stride() == first.stride() for t in tensors[1:]):
        return tensors
    return tuple(t.contiguous() for t in tensors)


def empty_like_layout(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialized tensor shaped like ``t`` with ``t``'s strides (``t`` must be dense)."""
    out = torch.empty_strided(t.shape, t.stride(), dtype=dtype or t.dtype, device=t.device)
    return out
