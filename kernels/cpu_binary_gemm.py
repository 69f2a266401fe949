"""Binary GEMM / GEMV on the CPU with the native XOR + popcount kernels (numba).

``cpu_binary_gemm`` takes the arguments of :func:`~bnnkit.kernels.binary_gemm.binary_gemm_reference`
and returns the same result, bit for bit (float outputs included: the epilogue repeats the
reference's float32 operations in order). W1A1 runs natively:

- ``x``: ``(..., K)`` float32 / float16 / bfloat16, binarized while its rows are packed
  (``x >= 0`` -> 1), or ``(..., ceil(K/32))`` int32 packed bits (bits past K ignored);
- ``weight``: ``(N, ceil(K/32))`` int32 packed; its uint64 forms (:func:`prepare_linear_weight`)
  are derived once per weight tensor and reused (:mod:`bnnkit.kernels.cpu_prepared`).

``mismatches = sum_k popcount(a ^ w)`` over uint64 words, ``acc = K - 2 * mismatches``; blocks
of 16 rows against every output channel of a task (four rows sharing each weight word, or,
for short rows and few rows, each activation word against a vector of output channels);
rows, or output channels when there are few rows, split over ``torch.get_num_threads()``
threads. The W1A16 route (``real_input``) and int8 operands run the reference.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from . import cpu_kernels as nk
from .binary_gemm import _check_call, binary_gemm_reference
from .bitpack import num_words
from .cpu_operands import allocate_output, as_float32, finish_output, stage_addresses
from .cpu_prepared import PREPARED
from .cpu_threads import plan, run_tasks
from .epilogue import Epilogue, KernelStage, SignThreshold, output_shape
from .kinds import InputKind, OutputKind


def words64(k: int) -> int:
    """uint64 words of a row of ``k`` bits."""
    return (k + 63) // 64


def prepare_linear_weight(weight: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(N, ceil(K/32))`` int32 packed rows -> ``(rows, rows_t)``: ``(N, ceil(K/64))`` uint64
    (bits past K zero) and its ``(ceil(K/64), N)`` transpose."""
    words = weight.detach().contiguous()
    rows = np.zeros((words.shape[0], words64(k)), dtype=np.uint64)
    nk.linear_weight_rows(words.data_ptr(), words.shape[0], k, rows)
    return rows, np.ascontiguousarray(rows.T)


def cpu_binary_gemm(
    x: torch.Tensor,
    weight: torch.Tensor,
    k: int,
    *,
    real_input: bool = False,
    out_kind: OutputKind | str = OutputKind.FLOAT,
    epilogue: Epilogue | None = None,
    threshold: SignThreshold | None = None,
    stage: KernelStage | None = None,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``epilogue(x @ sign(W)^T)`` with the native kernels; the arguments and result of
    :func:`~bnnkit.kernels.binary_gemm.binary_gemm_reference` (``out``: an optional contiguous
    output buffer). CPU tensors only."""
    in_kind, kind, stage = _check_call(x, weight, k, real_input, out_kind, epilogue, threshold, stage, residual,
                                       out_dtype)
    if x.device.type != "cpu":
        raise ValueError(f"the native CPU kernels take CPU tensors, got x on {x.device}")
    if in_kind not in (InputKind.PACKED, InputKind.BINARIZE) or weight.dtype != torch.int32:
        want = binary_gemm_reference(x, weight, k, real_input=real_input, out_kind=kind, stage=stage,
                                     residual=residual, out_dtype=out_dtype)
        return want if out is None else out.copy_(want)
    rows, rows_t = PREPARED.get(weight, ("linear", k), lambda w: prepare_linear_weight(w, k))
    params, thresholds = stage_addresses(stage)
    return _run(x, in_kind == InputKind.PACKED, rows, rows_t, k, kind, params, thresholds, stage.relu, residual,
                out_dtype, out)


def _run(x: torch.Tensor, packed: bool, rows: np.ndarray, rows_t: np.ndarray, k: int, kind: OutputKind, params: int,
         thresholds: int, relu: bool, residual: torch.Tensor | None, out_dtype: torch.dtype,
         out: torch.Tensor | None) -> torch.Tensor:
    """Allocate the output, split the work and run the kernel (arguments checked)."""
    n = rows.shape[0]
    result, written = allocate_output(kind, output_shape(tuple(x.shape[:-1]), n, kind), out_dtype, out)
    m = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if m == 0 or n == 0:
        return result
    a = x if packed else as_float32(x)
    if a.dim() != 2:
        a = a.reshape(m, a.shape[-1])
    if a.stride(-1) != 1 and packed:
        a = a.contiguous()
    res = None if residual is None else as_float32(residual).reshape(m, n)
    common = (a.data_ptr(), packed, a.stride(0), a.stride(1), k, rows, rows_t, kind.code, params, thresholds, relu,
              0 if res is None else res.data_ptr(), 0 if res is None else res.stride(0),
              0 if res is None else res.stride(1), written.data_ptr())
    run_tasks(nk.linear_task, [(*common, *task) for task in plan(m, n, words64(k))])
    return finish_output(result, written)




@dataclasses.dataclass(frozen=True)
class _OpCall:
    """A packed linear op's arguments other than ``x`` and the residual, checked once (while
    the weight and the stage tensors are unchanged: :func:`packed_linear_op`)."""

    stage_tensors: tuple[torch.Tensor, torch.Tensor]  # held: their addresses are in the key
    kind: OutputKind
    out_dtype: torch.dtype
    relu: bool
    rows: np.ndarray
    rows_t: np.ndarray
    params: int
    thresholds: int


def _op_call(weight: torch.Tensor, epilogue: torch.Tensor, thresholds: torch.Tensor, k: int, relu: bool,
             out_kind: str, out_dtype: torch.dtype) -> _OpCall:
    stage = KernelStage(epilogue, thresholds, relu) if epilogue.numel() or thresholds.numel() else None
    extra = {"stage": stage} if stage is not None else {"epilogue": Epilogue(relu=relu)}
    _, kind, stage = _check_call(torch.zeros(1, k), weight, k, False, out_kind, extra.get("epilogue"), None,
                                 extra.get("stage"), None, out_dtype)  # the weight and stage checks, once
    rows, rows_t = prepare_linear_weight(weight, k)
    params, thr = stage_addresses(stage)
    return _OpCall((stage.params, stage.thresholds), kind, out_dtype, stage.relu, rows, rows_t, params, thr)


def packed_linear_op(x: torch.Tensor, weight: torch.Tensor, epilogue: torch.Tensor, thresholds: torch.Tensor,
                     residual: torch.Tensor | None, k: int, real_input: bool, relu: bool, out_kind: str,
                     out_dtype: torch.dtype) -> torch.Tensor:
    """``torch.ops.bnnkit.packed_linear``'s arguments (:mod:`bnnkit.export.runtime.ops`) on the
    native kernels. The weight's kernel layout and the checks of everything but ``x`` and the
    residual are done once per (weight, epilogue, thresholds) contents; a call checks ``x``
    and the residual and runs. Anything unusual (W1A16, inference tensors, an argument that
    fails a check) takes :func:`cpu_binary_gemm`, which checks everything and names errors."""
    general = (x.dtype not in _X_DTYPES or real_input or x.device.type != "cpu" or weight.dtype != torch.int32
               or x.dim() < 1 or epilogue.is_inference() or thresholds.is_inference())
    if not general:
        key = ("op", k, relu, out_kind, out_dtype, id(epilogue), epilogue._version, id(thresholds),
               thresholds._version)
        call = PREPARED.get(weight, key, lambda w: _op_call(w, epilogue, thresholds, k, relu, out_kind, out_dtype))
        packed = x.dtype == torch.int32
        n = weight.shape[0]
        general = x.shape[-1] != (num_words(k) if packed else k) or (
            residual is not None and (residual.shape != (*x.shape[:-1], n) or not residual.is_floating_point()
                                      or residual.device.type != "cpu"))
    if general:
        stage = KernelStage(epilogue, thresholds, relu) if epilogue.numel() or thresholds.numel() else None
        return cpu_binary_gemm(x, weight, k, real_input=real_input, out_kind=out_kind, residual=residual,
                               out_dtype=out_dtype, **({"stage": stage} if stage is not None else
                                                       {"epilogue": Epilogue(relu=relu)}))
    return _run(x, packed, call.rows, call.rows_t, k, call.kind, call.params, call.thresholds, call.relu, residual,
                out_dtype, None)


_X_DTYPES = (torch.int32, torch.float32, torch.float16, torch.bfloat16)

__all__ = ["cpu_binary_gemm", "packed_linear_op", "prepare_linear_weight"]
