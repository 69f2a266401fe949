"""Binary convolution on the CPU with the native XOR + popcount kernels (numba): implicit GEMM
over packed NHWC activations.

``cpu_binary_conv2d`` takes the arguments of
:func:`~bnnkit.kernels.binary_conv.binary_conv2d_reference` and returns the same result, bit for
bit. W1A1 runs natively:

- ``x``: NHWC ``(N, H, W, C)`` float (any strides: a permuted NCHW tensor is read as it is),
  binarized and packed along C first (:func:`cpu_pack_signs`), or ``(N, H, W, ceil(C/32))``
  int32 packed bits (bits past C ignored);
- ``weight``: OHWI ``(C_out, KH, KW, ceil(C/32))`` int32 packed; its im2col form
  (:func:`prepare_conv_weight`: each output channel's taps concatenated, ``KH*KW*C`` bits in
  uint64 words, and each tap's set bits) is derived once per weight tensor and reused.

Each block of 16 output pixels gathers its im2col rows (the ``C`` bits of every tap,
concatenated: no bits are wasted for channel counts that are not multiples of 32) into a
scratch buffer and meets every output channel of its task; padding taps are zero bits whose
mismatches (``popcount`` of that tap's weights) are taken back, so they contribute exactly 0.
Output pixels (or, for small images, output channels) are split over
``torch.get_num_threads()`` threads. The W1A16 route (``real_input``) and int8 operands run
the reference.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from . import cpu_kernels as nk
from .binary_conv import _check_call, binary_conv2d_reference
from .bitpack import num_words
from .cpu_operands import aligned64, allocate_output, as_float32, finish_output, stage_addresses
from .cpu_prepared import PREPARED
from .cpu_threads import plan, run_tasks, split_rows
from .epilogue import Epilogue, KernelStage, SignThreshold, output_shape
from .kinds import InputKind, OutputKind

PACK_VALUES_PER_WORD_OP = 16
"""Binarizing and packing one value costs about 1/16 of a 64-bit XOR + popcount step (for
splitting the packing over threads)."""


def lane_bytes_for(in_channels: int, taps: int) -> int:
    """The lane width of the direct form: the narrowest of 2, 4, 8 bytes that holds C bits and
    the mismatch count of all taps; 0 when C is above :data:`~bnnkit.kernels.cpu_kernels.DIRECT_MAX_CHANNELS`."""
    if in_channels > nk.DIRECT_MAX_CHANNELS:
        return 0
    for lane in (2, 4, 8):
        if in_channels <= 8 * lane and taps * in_channels < 2 ** (8 * lane):
            return lane
    return 0


@dataclasses.dataclass(frozen=True)
class PreparedConv:
    """A convolution's weights in the native kernels' layout (:func:`prepare_conv_weight`)."""

    channels: int  # C_out
    lane_bytes: int  # the direct form's lane width, 0 for the im2col form
    tap_lanes: np.ndarray  # direct: (KH*KW, C_out * lane_bytes) uint8
    rows: np.ndarray  # im2col: (C_out, ceil(KH*KW*C/64)) uint64
    rows_t: np.ndarray  # im2col: the transpose of rows
    tap_popcounts: np.ndarray  # im2col: (C_out, KH*KW) int32


def prepare_conv_weight(weight: torch.Tensor, in_channels: int) -> PreparedConv:
    """OHWI packed ``(C_out, KH, KW, ceil(C/32))`` int32 -> the direct form for ``C <= 64``
    (each tap's C bits per output channel, in lanes of :func:`lane_bytes_for`), else the im2col
    form: rows with bit ``t*C + c`` = channel ``c`` of tap ``t = kh*KW + kw``, their transpose
    and each tap's set bits."""
    words = weight.detach().contiguous()
    co, kh, kw, _ = words.shape
    lane = lane_bytes_for(in_channels, kh * kw)
    if lane:
        tap_lanes = np.zeros((kh * kw, co * lane), dtype=np.uint8)
        nk.conv_tap_lanes(words.data_ptr(), co, kh * kw, in_channels, lane, tap_lanes)
        return PreparedConv(co, lane, tap_lanes, _NO_ROWS, _NO_ROWS, _NO_POPCOUNTS)
    rows = np.zeros((co, (kh * kw * in_channels + 63) // 64), dtype=np.uint64)
    tap_popcounts = np.zeros((co, kh * kw), dtype=np.int32)
    nk.conv_weight_rows(words.data_ptr(), co, kh * kw, in_channels, rows, tap_popcounts)
    return PreparedConv(co, 0, _NO_LANES, rows, np.ascontiguousarray(rows.T), tap_popcounts)


_NO_LANES = np.zeros((0, 0), dtype=np.uint8)
_NO_ROWS = np.zeros((0, 0), dtype=np.uint64)
_NO_POPCOUNTS = np.zeros((0, 0), dtype=np.int32)


def cpu_pack_signs(x: torch.Tensor) -> torch.Tensor:
    """Binarize and pack ``x`` ``(N, H, W, C)`` float (any strides) along C: ``(N, H, W,
    ceil(C/32))`` int32, contiguous (the format of :func:`~bnnkit.kernels.bitpack.pack_signs_reference`)."""
    if x.dim() != 4 or not x.is_floating_point() or x.device.type != "cpu":
        raise ValueError(f"cpu_pack_signs takes a 4-D float CPU tensor (N, H, W, C), got {x.dtype} "
                         f"{tuple(x.shape)} on {x.device}")
    n, h, w, c = x.shape
    out = torch.empty((n, h, w, num_words(c)), dtype=torch.int32)
    rows = n * h * w
    if rows == 0 or c == 0:
        return out
    x = as_float32(x)
    common = (x.data_ptr(), n, h, w, c, *x.stride(), out.data_ptr())
    run_tasks(nk.pack_signs_task, [(*common, a, b) for a, b in split_rows(rows, c / PACK_VALUES_PER_WORD_OP)])
    return out


def cpu_binary_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    in_channels: int,
    *,
    stride: int = 1,
    padding: int = 0,
    real_input: bool = False,
    out_kind: OutputKind | str = OutputKind.FLOAT,
    epilogue: Epilogue | None = None,
    threshold: SignThreshold | None = None,
    stage: KernelStage | None = None,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Binary convolution, NHWC in and out, with the native kernels; the arguments and result of
    :func:`~bnnkit.kernels.binary_conv.binary_conv2d_reference` (``out``: an optional contiguous
    output buffer). CPU tensors only."""
    stride, padding, in_kind, kind, stage, (kh, kw, oh, ow) = _check_call(
        x, weight, in_channels, stride, padding, real_input, out_kind, epilogue, threshold, stage, residual, out_dtype)
    if x.device.type != "cpu":
        raise ValueError(f"the native CPU kernels take CPU tensors, got x on {x.device}")
    if in_kind not in (InputKind.PACKED, InputKind.BINARIZE) or weight.dtype != torch.int32:
        want = binary_conv2d_reference(x, weight, in_channels, stride=stride, padding=padding, real_input=real_input,
                                       out_kind=kind, stage=stage, residual=residual, out_dtype=out_dtype)
        return want if out is None else out.copy_(want)
    prepared = PREPARED.get(weight, ("conv", in_channels), lambda t: prepare_conv_weight(t, in_channels))
    params, thresholds = stage_addresses(stage)
    return _run(x, in_kind == InputKind.PACKED, prepared, in_channels, stride, padding, kind, params, thresholds,
                stage.relu, residual, out_dtype, out, (kh, kw, oh, ow))


def _run(x: torch.Tensor, packed: bool, prepared: PreparedConv, in_channels: int, stride: int, padding: int,
         kind: OutputKind, params: int, thresholds: int, relu: bool, residual: torch.Tensor | None,
         out_dtype: torch.dtype, out: torch.Tensor | None, geometry: tuple[int, int, int, int]) -> torch.Tensor:
    """Allocate the output, pack a float input, split the work and run the kernel (arguments checked)."""
    kh, kw, oh, ow = geometry
    nb, h, w = x.shape[0], x.shape[1], x.shape[2]
    co = prepared.channels
    result, written = allocate_output(kind, output_shape((nb, oh, ow), co, kind), out_dtype, out)
    m = nb * oh * ow
    if m == 0 or co == 0:
        return result
    words = x.contiguous() if packed else cpu_pack_signs(x)
    res = None if residual is None else as_float32(residual)
    rs = (0, 0, 0, 0) if res is None else res.stride()
    stage_args = (kind.code, params, thresholds, relu, 0 if res is None else res.data_ptr(), *rs, written.data_ptr())
    geometry = (nb, h, w, in_channels, oh, ow, kh, kw, stride, padding)
    work = kh * kw * -(-in_channels // 64)
    if prepared.lane_bytes:
        common = (words.data_ptr(), *geometry, prepared.tap_lanes, prepared.lane_bytes, *stage_args)
        run_tasks(nk.conv_direct_task, [(*common, *task) for task in plan(m, co, work)])
    else:
        common = (words.data_ptr(), aligned64(words), *geometry, prepared.rows, prepared.rows_t,
                  prepared.tap_popcounts, *stage_args)
        run_tasks(nk.conv_task, [(*common, *task) for task in plan(m, co, work)])
    return finish_output(result, written)


@dataclasses.dataclass(frozen=True)
class _OpCall:
    """A packed conv op's arguments other than ``x`` and the residual, checked once (while the
    weight and the stage tensors are unchanged: :func:`packed_conv2d_op`)."""

    stage_tensors: tuple[torch.Tensor, torch.Tensor]  # held: their addresses are in the key
    kind: OutputKind
    relu: bool
    prepared: PreparedConv
    params: int
    thresholds: int


def _op_call(weight: torch.Tensor, epilogue: torch.Tensor, thresholds: torch.Tensor, in_channels: int, stride: int,
             padding: int, relu: bool, out_kind: str, out_dtype: torch.dtype) -> _OpCall:
    stage = KernelStage(epilogue, thresholds, relu) if epilogue.numel() or thresholds.numel() else None
    probe = torch.zeros(1, weight.shape[1], weight.shape[2], in_channels)  # the weight and stage checks, once
    *_, kind, stage, _ = _check_call(probe, weight, in_channels, stride, padding, False, out_kind,
                                     None if stage is not None else Epilogue(relu=relu), None, stage, None, out_dtype)
    params, thr = stage_addresses(stage)
    return _OpCall((stage.params, stage.thresholds), kind, stage.relu, prepare_conv_weight(weight, in_channels),
                   params, thr)


def packed_conv2d_op(x: torch.Tensor, weight: torch.Tensor, epilogue: torch.Tensor, thresholds: torch.Tensor,
                     residual: torch.Tensor | None, in_channels: int, stride: int, padding: int, real_input: bool,
                     relu: bool, out_kind: str, out_dtype: torch.dtype) -> torch.Tensor:
    """``torch.ops.bnnkit.packed_conv2d``'s arguments (:mod:`bnnkit.export.runtime.ops`) on the
    native kernels: the weight's kernel layout and the checks of everything but ``x`` and the
    residual are done once per (weight, epilogue, thresholds) contents; a call checks ``x``
    and the residual and runs. Anything unusual takes :func:`cpu_binary_conv2d`, which checks
    everything and names errors."""
    general = (x.dtype not in _X_DTYPES or real_input or x.device.type != "cpu" or x.dim() != 4
               or weight.dtype != torch.int32 or weight.dim() != 4 or epilogue.is_inference()
               or thresholds.is_inference() or type(stride) is not int or type(padding) is not int)
    if not general:
        key = ("op", in_channels, stride, padding, relu, out_kind, out_dtype, id(epilogue), epilogue._version,
               id(thresholds), thresholds._version)
        call = PREPARED.get(weight, key, lambda t: _op_call(t, epilogue, thresholds, in_channels, stride, padding,
                                                            relu, out_kind, out_dtype))
        packed = x.dtype == torch.int32
        nb, h, w = x.shape[0], x.shape[1], x.shape[2]
        co, kh, kw = weight.shape[0], weight.shape[1], weight.shape[2]
        oh = (h + 2 * padding - kh) // stride + 1
        ow = (w + 2 * padding - kw) // stride + 1
        general = x.shape[3] != (num_words(in_channels) if packed else in_channels) or oh < 1 or ow < 1 or (
            residual is not None and (residual.shape != (nb, oh, ow, co) or not residual.is_floating_point()
                                      or residual.device.type != "cpu"))
    if general:
        stage = KernelStage(epilogue, thresholds, relu) if epilogue.numel() or thresholds.numel() else None
        return cpu_binary_conv2d(x, weight, in_channels, stride=stride, padding=padding, real_input=real_input,
                                 out_kind=out_kind, residual=residual, out_dtype=out_dtype,
                                 **({"stage": stage} if stage is not None else {"epilogue": Epilogue(relu=relu)}))
    return _run(x, packed, call.prepared, in_channels, stride, padding, call.kind, call.params, call.thresholds,
                call.relu, residual, out_dtype, None, (kh, kw, oh, ow))


_X_DTYPES = (torch.int32, torch.float32, torch.float16, torch.bfloat16)

__all__ = ["cpu_binary_conv2d", "cpu_pack_signs", "packed_conv2d_op", "prepare_conv_weight"]
