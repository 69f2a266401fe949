"""Tensors as the native CPU kernels' arguments: data addresses and element strides.

The kernels of :mod:`bnnkit.kernels.cpu_kernels` take every activation, epilogue and output
tensor as its ``data_ptr()`` plus sizes and strides (ints), so a call converts nothing and one
compiled kernel reads NHWC, permuted NCHW and sliced views alike. The tensors stay referenced
by the caller for the whole call.
"""

from __future__ import annotations

import torch

from .epilogue import KernelStage, output_dtype
from .kinds import OutputKind
from .launch import prepare_out

_CPU = torch.device("cpu")


def stage_addresses(stage: KernelStage) -> tuple[int, int]:
    """``(params address, thresholds address)`` of a checked stage; 0 for the unused one."""
    params = stage.params.data_ptr() if stage.has_epilogue else 0
    thresholds = stage.thresholds.data_ptr() if stage.has_threshold else 0
    return params, thresholds


def as_float32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 (a copy only for other float dtypes; exact for fp16 / bf16)."""
    return t if t.dtype == torch.float32 else t.to(torch.float32)


def aligned64(t: torch.Tensor) -> bool:
    """Whether ``t``'s data starts on an 8-byte boundary (whole uint64 words may be read)."""
    return t.data_ptr() % 8 == 0


def allocate_output(kind: OutputKind, shape: tuple[int, ...], out_dtype: torch.dtype,
                    out: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(result, written)``: the tensor the call returns (``out`` when given, checked) and the
    contiguous buffer the kernel writes, the same one except for fp16 / bf16 float outputs,
    which are written in float32 and rounded by :func:`finish_output` (as the reference does)."""
    dtype = output_dtype(kind, out_dtype, False)
    result = torch.empty(shape, dtype=dtype) if out is None else prepare_out(out, shape, dtype, _CPU)
    if result.dtype != torch.float32 and kind == OutputKind.FLOAT:
        return result, torch.empty(shape, dtype=torch.float32)
    return result, result


def finish_output(result: torch.Tensor, written: torch.Tensor) -> torch.Tensor:
    if written is not result:
        result.copy_(written)
    return result
