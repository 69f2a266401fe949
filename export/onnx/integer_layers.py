"""Packed layers as standard ONNX integer ops (the integer graph, ``to_onnx(..., ops="integer")``).

:func:`expand_packed_layer` replaces one ``bnnkit::PackedLayer`` placeholder
(:mod:`bnnkit.export.onnx.packed_view`) by ops of the standard domain that ONNX Runtime's CPU
provider runs with its integer kernels. Binary activations are uint8 codes ``{0, 2}`` with
zero point 1 (``code - 1`` is the ±1 value); binary weights are int8 ±1, stored as 1-bit
signs and unpacked by a constant subgraph that the runtime folds once, when the session
starts (``packed=True``), or stored as int8 (``packed=False``). Every accumulator is the exact
sum of ±1 products, as in the packed kernels: QLinearConv and MatMulInteger accumulate in
int32, and their requantization below is exact by construction.

By what the layer writes:

- packed output (signs read only by the next binary layers), convolution::

      codes -> QLinearConv(codes, 1, 1, w', 1, 0, 1/256, 0, bias) -> Min(., 2)   # uint8 {0, 2}

  ``bias = 1 - t`` puts the layer's sign threshold ``acc >= t`` (derived in float64 by
  ``pack``) into the accumulator: ``(acc + bias) * 256`` saturates to 255 where the bit is 1
  and to 0 where it is 0, and ``Min`` maps 255 to the code 2. ``w'`` is the weight with the
  rows of channels whose epilogue decreases negated (then ``bit = -acc >= -t``); a channel
  whose sign is constant gets a bias that saturates it. QLinearConv pads with the input zero
  point, so padded taps add 0, as zero padding of ±1 values does.
- packed output, linear: ``MatMulInteger(codes, w', 1) >= 1 - bias`` -> ``Where(., 2, 0)``.
- float output (a residual add, the classifier's input, any float op after it), convolution:
  the exact accumulator from one QLinearConv when it fits its uint8 output
  (:func:`exact_window`: ``acc / 2 + 128`` for up to 254 terms with an even channel count),
  or as the sum of two such windows over the two halves of the channels
  (:func:`split_windows`), else from ``MatMulInteger`` over an in-graph im2col in NHWC
  (``Pad`` with the zero point, one ``Gather`` of every kernel tap); then the packed layer's float32 epilogue folded
  to ``clip(acc * scale + bias, lower, upper)`` (:func:`graph_epilogue`; ``DequantizeLinear``
  applies the per-channel scale to the integer accumulator) and the residual.
- float output, linear: ``MatMulInteger``, then the same epilogue.
- real-valued inputs (1w32a): a float ``Conv`` / ``MatMul`` with ±1 weights and the epilogue.

Layouts: binary activations of convolutions are NHWC between layers (what the im2col reads and
what ONNX Runtime's QLinearConv computes in); float tensors, epilogues included, are NCHW as in
the rest of the graph (a per-channel operand then broadcasts over whole rows: on channels-last
data ONNX Runtime's broadcasting is several times slower). ONNX Runtime's layout optimizer
removes the transposes that meet.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from bnnkit.kernels.bitpack import unpack_signs_reference
from bnnkit.kernels.kinds import InputKind, OutputKind

from ..runtime.layers import PackedConv2d, PackedLayer, PackedLinear
from .builder import GraphBuilder, unpack_sign_bits
from .packed_view import BINARY_MINUS_ONE, BINARY_ONE, BINARY_ZERO_POINT, INPUT_SIZE_ATTRIBUTE

_REQUANT_SCALE = 1.0 / 256  # QLinearConv's y_scale: (acc + bias) * 256 saturates every nonzero value
_WINDOW_ZERO_POINT = 128  # QLinearConv's y_zero_point when its output is the exact accumulator
_NCHW_TO_NHWC = [0, 2, 3, 1]
_NHWC_TO_NCHW = [0, 3, 1, 2]


class IntegerLoweringError(RuntimeError):
    """A packed layer's buffers do not have the form the integer graph computes (a bnnkit bug)."""


# --- weights ---------------------------------------------------------------------------------
def layer_signs(layer: PackedLayer) -> np.ndarray:
    """The layer's binary weight as int8 ±1: conv ``(C_out, KH, KW, C_in)`` (OHWI), linear
    ``(out_features, in_features)``."""
    k = layer.in_channels if isinstance(layer, PackedConv2d) else layer.in_features
    return unpack_signs_reference(layer.weight_bits.cpu(), k, torch.int8).numpy()


def weight_operand(b: GraphBuilder, name: str, signs: np.ndarray, dtype: int, packed: bool) -> str:
    """``signs`` (±1, in the layout the op reads: OIHW for convolutions, ``(K, N)`` for
    MatMulInteger) as a constant of ONNX type ``dtype`` (INT8 or FLOAT) and the same shape: an
    initializer (``packed=False``), or 1-bit signs, uint8 LSB first along each row of the first
    dim flattened, unpacked by a constant subgraph (``packed=True``)."""
    np_dtype = {TensorProto.INT8: np.int8, TensorProto.FLOAT: np.float32}[dtype]
    if not packed:
        return b.const(f"{name}.weight", signs.astype(np_dtype))
    rows, k = signs.shape[0], int(np.prod(signs.shape[1:]))
    bits = np.packbits(signs.reshape(rows, k) > 0, axis=1, bitorder="little")  # (rows, ceil(k/8))
    stored = b.const(f"{name}.weight_bits", bits)
    unpacked = unpack_sign_bits(b, name, stored, rows, k, b.shared(1, np_dtype), b.shared(-1, np_dtype))
    if signs.ndim == 2:
        return unpacked
    return b.op("Reshape", [unpacked, b.const(f"{name}.weight_shape", np.array(signs.shape, np.int64))],
                f"{name}.weight")


# --- thresholds and epilogues ------------------------------------------------------------------
def threshold_bias(thresholds: np.ndarray, k: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(flip, bias)`` per channel for ``bit = lo <= acc <= hi`` (``thresholds`` = int32 rows
    ``lo, hi``; ``|acc| <= k``): ``bit = flip * acc + bias >= 1`` with ``flip`` ±1 (int8) and
    ``bias`` int32."""
    lo, hi = thresholds.astype(np.int64)
    always = (lo <= -k) & (hi >= k)
    never = (lo > k) | (hi < -k) | (lo > hi)
    increasing = ~always & ~never & (hi >= k)
    decreasing = ~always & ~never & (lo <= -k)
    bounded = ~(always | never | increasing | decreasing)
    if bounded.any():
        c = int(np.nonzero(bounded)[0][0])
        raise IntegerLoweringError(f"{name}: channel {c} has the sign interval [{lo[c]}, {hi[c]}] with both ends "
                                   "inside the accumulator range; pack's thresholds are one-sided (monotone epilogue)")
    flip = np.where(decreasing, -1, 1).astype(np.int8)
    bias = np.where(increasing, 1 - lo, np.where(decreasing, 1 + hi, np.where(always, k + 1, -k)))
    return flip, bias.astype(np.int32)


def graph_epilogue(params: np.ndarray, relu: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None,
                                                             np.ndarray | None]:
    """``(scale, bias, lower, upper)`` float32 ``(C,)`` with ``y = clip(acc * scale + bias, lower,
    upper)`` equal to the packed epilogue ``post_scale * act(acc * scale + bias) + post_bias``
    (``params``: float32 rows ``scale, bias, post_scale, post_bias``) up to float32 rounding;
    ``lower`` / ``upper`` are ``None`` where no channel needs them.

    Without ReLU the two affine steps compose. With ReLU, ``post_scale * relu(z) + post_bias``
    is ``max(post_scale * z + post_bias, post_bias)`` where ``post_scale >= 0`` and ``min(...)``
    where it is negative: one affine step and one or two clamps instead of five ops. The
    folded values are computed in float64 from the float32 rows and rounded once."""
    s, b, ps, pb = (np.asarray(r, dtype=np.float64) for r in params)
    scale, bias = (s * ps).astype(np.float32), (b * ps + pb).astype(np.float32)
    if not relu:
        return scale, bias, None, None
    pb32 = pb.astype(np.float32)
    lower = np.where(ps >= 0, pb32, -np.inf).astype(np.float32)
    upper = np.where(ps < 0, pb32, np.inf).astype(np.float32)
    return scale, bias, (lower if np.any(ps >= 0) else None), (upper if np.any(ps < 0) else None)


def epilogue(b: GraphBuilder, name: str, acc: str, params: np.ndarray, relu: bool, residual: str | None,
             output: str, *, conv: bool, integer: bool = True, code_zero_point: int | None = None,
             code_scale: float = 1.0) -> str:
    """The packed epilogue and the residual on ``acc`` (see :func:`graph_epilogue`): channels on
    axis 1 of an NCHW ``acc`` (``conv``), else on the last axis. For an ``integer`` (int32)
    accumulator ``DequantizeLinear`` with the per-channel scale (``acc * scale`` in one
    rounding, as ``Cast`` then ``Mul`` but in one op), for a float one ``Mul``; then ``Add`` the
    bias, ``Max`` / ``Min`` the clamps, ``Add`` the residual, leaving out the steps that are the
    identity. ``acc`` may also be QLinearConv's exact uint8 ``acc / code_scale +
    code_zero_point``: ``DequantizeLinear`` with that zero point and ``code_scale * scale``
    (exact for a power-of-2 ``code_scale``). The last op writes ``output``.

    A convolution's epilogue runs on ``(N, C, H*W)``: the ``Reshape`` keeps ONNX Runtime's
    layout optimizer from moving a transpose below it, which would leave the per-channel
    operands broadcasting over runs of ``C`` values (channels last), several times slower."""
    scale, bias, lower, upper = graph_epilogue(params, relu)
    channels = scale.shape[0]
    channel_shape = [channels, 1] if conv else [channels]
    steps: list[tuple[str, list[str], dict]] = []
    if integer or code_zero_point is not None:
        inputs = [b.const(f"{name}.scale", (scale.astype(np.float64) * code_scale).astype(np.float32))]
        if code_zero_point is not None:
            inputs.append(b.const(f"{name}.zero_point", np.full(scale.shape, code_zero_point, np.uint8)))
        steps.append(("DequantizeLinear", inputs, {"axis": 1 if conv else -1}))
    elif not np.all(scale == 1):
        steps.append(("Mul", [b.const(f"{name}.scale", scale.reshape(channel_shape))], {}))
    if not np.all(bias == 0):
        steps.append(("Add", [b.const(f"{name}.bias", bias.reshape(channel_shape))], {}))
    if lower is not None:
        steps.append(("Max", [b.const(f"{name}.lower", lower.reshape(channel_shape))], {}))
    if upper is not None:
        steps.append(("Min", [b.const(f"{name}.upper", upper.reshape(channel_shape))], {}))
    y = acc
    if conv and steps:
        y = b.op("Reshape", [acc, b.shared([0, channels, -1], np.int64)], f"{name}.acc_rows")
    for op_type, others, attrs in steps:
        y = b.op(op_type, [y, *others], f"{name}.{op_type.lower()}", **attrs)
    if conv and steps:
        y = b.op("Reshape", [y, b.op("Shape", [acc], f"{name}.shape")], f"{name}.y")
    if residual is not None:
        return b.op("Add", [y, residual], f"{name}.add_residual", outputs=output)
    if y == acc:
        return b.op("Identity", [acc], f"{name}.output", outputs=output)
    b.nodes[-1].output[0] = output  # the last op, just added, writes the layer's output
    return output


# --- activations ------------------------------------------------------------------------------
def binary_codes(b: GraphBuilder, name: str, x: str) -> str:
    """uint8 codes of ``binarize(x)``: 2 where ``x >= 0``, else 0 (NaN -> 0, i.e. -1)."""
    positive = b.op("GreaterOrEqual", [x, b.shared(0.0, np.float32)], f"{name}.positive_input")
    return b.op("Where", [positive, b.shared(BINARY_ONE, np.uint8), b.shared(BINARY_MINUS_ONE, np.uint8)],
                f"{name}.input_codes")


def _binary_input(b: GraphBuilder, name: str, layer: PackedLayer, x: str, channels_last: bool) -> str:
    """The layer's input as binary codes (conv: NHWC when ``channels_last``, else NCHW)."""
    if layer.input_kind == InputKind.PACKED:  # codes, NHWC for convolutions
        if isinstance(layer, PackedConv2d) and not channels_last:
            return b.op("Transpose", [x], f"{name}.input_nchw", perm=_NHWC_TO_NCHW)
        return x
    codes = binary_codes(b, name, x)
    if isinstance(layer, PackedConv2d) and channels_last:
        return b.op("Transpose", [codes], f"{name}.input_nhwc", perm=_NCHW_TO_NHWC)
    return codes


def _column_indices(b: GraphBuilder, padded: tuple[int, int], kernel: tuple[int, int], stride: int) -> str:
    """int64 ``(OH, OW, KH*KW)``: the index into the flattened ``(Hp*Wp)`` rows of a padded
    ``(Hp, Wp)`` image of each output position's taps, in (kh, kw) order. A subgraph of constants
    (``Range``, ``Add``) that the runtime folds when the session starts, shared by the layers of
    the same geometry; the file holds a few scalars, not the table."""
    (hp, wp), (kh, kw), s = padded, kernel, stride
    oh, ow = (hp - kh) // s + 1, (wp - kw) // s + 1

    def make() -> str:
        def positions(count: int, step: int, shape: list[int], label: str) -> str:
            r = b.op("Range", [b.shared(0, np.int64), b.shared(count * step, np.int64), b.shared(step, np.int64)],
                     f"im2col.{label}")
            return b.op("Reshape", [r, b.shared(shape, np.int64)], f"im2col.{label}_shaped")

        rows = positions(oh, s * wp, [oh, 1, 1], "rows")
        cols = positions(ow, s, [ow, 1], "cols")
        taps = b.shared([i * wp + j for i in range(kh) for j in range(kw)], np.int64)
        return b.op("Add", [b.op("Add", [rows, cols], "im2col.starts"), taps], "im2col.indices")

    return b.once(("im2col", hp, wp, kh, kw, s), make)


def _im2col(b: GraphBuilder, name: str, layer: PackedConv2d, x: str, size: tuple[int, int]) -> str:
    """``(N, OH, OW, KH*KW*C)`` uint8 columns of the NHWC codes ``x`` of spatial ``size`` ``(H,
    W)``, taps in (kh, kw) order: ``Pad`` with the zero point, then one ``Gather`` of the
    flattened pixels (measured in ONNX Runtime 1.32: 5-10% faster per layer than one ``Slice``
    per tap and a ``Concat``, which copy the columns twice)."""
    kh, kw = layer.kernel_size
    s, p = layer.stride, layer.padding
    if p:
        x = b.op("Pad", [x, b.shared([0, p, p, 0, 0, p, p, 0], np.int64), b.shared(BINARY_ZERO_POINT, np.uint8)],
                 f"{name}.padded")
    if (kh, kw, s) == (1, 1, 1):
        return x
    hp, wp = size[0] + 2 * p, size[1] + 2 * p
    oh, ow = (hp - kh) // s + 1, (wp - kw) // s + 1
    pixels = b.op("Reshape", [x, b.shared([0, hp * wp, layer.in_channels], np.int64)], f"{name}.pixels")
    taps = b.op("Gather", [pixels, _column_indices(b, (hp, wp), (kh, kw), s)], f"{name}.taps", axis=1)
    return b.op("Reshape", [taps, b.shared([0, oh, ow, -1], np.int64)], f"{name}.columns")


# --- layers ------------------------------------------------------------------------------------
def _qlinear_conv(b: GraphBuilder, name: str, layer: PackedConv2d, x: str, signs: np.ndarray, packed: bool,
                  y_scale: float, y_zero_point: int, bias: np.ndarray | None, output_name: str, *,
                  codes_nchw: str | None = None) -> str:
    """QLinearConv of the layer's binary codes (``codes_nchw`` when given, else the layer input
    ``x``) with the int8 ±1 weight ``signs`` (OHWI), scales 1 and zero points 1 (input) / 0
    (weight): ``clamp(round((acc + bias) / y_scale) + y_zero_point, 0, 255)``, NCHW uint8."""
    w = weight_operand(b, name, np.ascontiguousarray(signs.transpose(0, 3, 1, 2)), TensorProto.INT8, packed)
    one = b.shared(1.0, np.float32)
    if codes_nchw is None:
        codes_nchw = _binary_input(b, name, layer, x, channels_last=False)
    inputs = [codes_nchw, one, b.shared(BINARY_ZERO_POINT, np.uint8), w,
              one, b.shared(0, np.int8), b.shared(y_scale, np.float32), b.shared(y_zero_point, np.uint8)]
    if bias is not None:
        inputs.append(b.const(f"{name}.threshold_bias", bias))
    p, s = layer.padding, layer.stride
    return b.op("QLinearConv", inputs, output_name, pads=[p, p, p, p], strides=[s, s])


def _conv_packed_output(b: GraphBuilder, name: str, layer: PackedConv2d, x: str, packed: bool, output: str) -> None:
    k = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
    flip, bias = threshold_bias(layer.thresholds.cpu().numpy(), k, name)
    signs = layer_signs(layer) * flip[:, None, None, None]  # OHWI
    saturated = _qlinear_conv(b, name, layer, x, signs, packed, _REQUANT_SCALE, 0, bias, f"{name}.saturated")
    nhwc = b.op("Transpose", [saturated], f"{name}.saturated_nhwc", perm=_NCHW_TO_NHWC)
    b.op("Min", [nhwc, b.shared(BINARY_ONE, np.uint8)], f"{name}.codes", outputs=output)



def exact_window(in_channels: int, taps: int) -> float | None:
    """QLinearConv's ``y_scale`` under which its uint8 output ``acc / y_scale + 128`` is the
    exact accumulator of a binary convolution, or ``None`` when none is: the accumulator of
    ``k = in_channels * taps`` ±1 terms (fewer at the borders) lies in ``[-k, k]``; when
    ``in_channels`` is even every partial count of terms is even, so is the sum, and ``acc /
    2`` is an integer in ``[-127, 127]`` for ``k <= 254``; else ``acc`` itself for ``k <= 127``.
    """
    k = in_channels * taps
    if in_channels % 2 == 0 and k <= 254:
        return 2.0
    if k <= 127:
        return 1.0
    return None


def split_windows(in_channels: int, taps: int, max_windows: int = 2) -> list[int] | None:
    """Channel widths (even, summing to ``in_channels``, as equal as they can be) of the fewest
    channel groups that each have an :func:`exact_window`, when that is 2 to ``max_windows``
    groups; else ``None`` (one window suffices, or more groups are needed). The sum of the
    groups' accumulators is the layer's.

    Two windows, at most: measured in ONNX Runtime 1.32 (CPU, 1 thread, AVX2), two QLinearConvs
    of half the channels each beat im2col + MatMulInteger on a 32-channel 3x3 layer (1.3x the
    float32 Conv against 1.0-1.1x, batch 64 at 16x16), and three or four lose to it (64
    channels: 1.2x against 1.4x)."""
    if exact_window(in_channels, taps) is not None or in_channels % 2:
        return None
    pairs = in_channels // 2
    for groups in range(2, max_windows + 1):
        widths = [2 * (pairs // groups + (g < pairs % groups)) for g in range(groups)]
        if exact_window(widths[0], taps) == 2.0:
            return widths
    return None


def _conv_float_output_split(b: GraphBuilder, name: str, layer: PackedConv2d, x: str, residual: str | None,
                             packed: bool, output: str, widths: list[int]) -> None:
    """The exact accumulator as the sum of one windowed QLinearConv per channel group
    (:func:`split_windows`): each window's ``acc_g / 2 + 128`` becomes the float ``acc_g`` by
    ``DequantizeLinear`` (exact: small integers), ``Sum`` adds them exactly, and the float
    epilogue follows."""
    codes = _binary_input(b, name, layer, x, channels_last=False)
    groups = [b.fresh(f"{name}.input_group{g}") for g in range(len(widths))]
    b.nodes.append(onnx.helper.make_node("Split", [codes, b.const(f"{name}.group_widths", np.array(widths, np.int64))],
                                         groups, axis=1))
    signs = layer_signs(layer)  # OHWI
    window, start, parts = _WINDOW_ZERO_POINT, 0, []
    for g, (group, width) in enumerate(zip(groups, widths)):
        code = _qlinear_conv(b, f"{name}.group{g}", layer, x, signs[..., start:start + width], packed, 2.0, window,
                             None, f"{name}.group{g}.acc_code", codes_nchw=group)
        parts.append(b.op("DequantizeLinear", [code, b.shared(2.0, np.float32), b.shared(window, np.uint8)],
                          f"{name}.group{g}.acc"))
        start += width
    acc = b.op("Sum", parts, f"{name}.acc")
    epilogue(b, name, acc, layer.epilogue.cpu().numpy(), layer.relu, residual, output, conv=True, integer=False)


def _conv_float_output_windowed(b: GraphBuilder, name: str, layer: PackedConv2d, x: str, residual: str | None,
                                packed: bool, output: str, y_scale: float) -> None:
    """The exact accumulator from one QLinearConv: ``code = acc / y_scale + 128`` fits uint8
    exactly (see :func:`exact_window`), then the epilogue on the code."""
    code = _qlinear_conv(b, name, layer, x, layer_signs(layer), packed, y_scale, _WINDOW_ZERO_POINT, None,
                         f"{name}.acc_code")
    epilogue(b, name, code, layer.epilogue.cpu().numpy(), layer.relu, residual, output, conv=True,
             code_zero_point=_WINDOW_ZERO_POINT, code_scale=y_scale)


def _conv_float_output(b: GraphBuilder, name: str, layer: PackedConv2d, x: str, residual: str | None,
                       packed: bool, output: str, size: tuple[int, int]) -> None:
    y_scale = exact_window(layer.in_channels, layer.kernel_size[0] * layer.kernel_size[1])
    if y_scale is not None:
        _conv_float_output_windowed(b, name, layer, x, residual, packed, output, y_scale)
        return
    widths = split_windows(layer.in_channels, layer.kernel_size[0] * layer.kernel_size[1])
    if widths is not None:
        _conv_float_output_split(b, name, layer, x, residual, packed, output, widths)
        return
    signs = layer_signs(layer)  # OHWI: rows in (kh, kw, c) order, as the columns
    w_kn = weight_operand(b, name, np.ascontiguousarray(signs.reshape(signs.shape[0], -1).T), TensorProto.INT8,
                          packed)
    columns = _im2col(b, name, layer, _binary_input(b, name, layer, x, channels_last=True), size)
    acc = b.op("MatMulInteger", [columns, w_kn, b.shared(BINARY_ZERO_POINT, np.uint8)], f"{name}.acc")
    # the epilogue in NCHW, per-channel operands broadcasting over whole rows (see epilogue())
    acc_nchw = b.op("Transpose", [acc], f"{name}.acc_nchw", perm=_NHWC_TO_NCHW)
    epilogue(b, name, acc_nchw, layer.epilogue.cpu().numpy(), layer.relu, residual, output, conv=True)


def _conv_real_input(b: GraphBuilder, name: str, layer: PackedConv2d, x: str, residual: str | None,
                     packed: bool, output: str) -> None:
    signs = layer_signs(layer)
    w = weight_operand(b, name, np.ascontiguousarray(signs.transpose(0, 3, 1, 2)), TensorProto.FLOAT, packed)
    p, s = layer.padding, layer.stride
    acc = b.op("Conv", [x, w], f"{name}.acc", pads=[p, p, p, p], strides=[s, s])
    epilogue(b, name, acc, layer.epilogue.cpu().numpy(), layer.relu, residual, output, conv=True, integer=False)


def _linear(b: GraphBuilder, name: str, layer: PackedLinear, x: str, residual: str | None, packed: bool,
            output: str) -> None:
    signs = layer_signs(layer)  # (N, K)
    if layer.input_kind == InputKind.REAL:
        w_kn = weight_operand(b, name, np.ascontiguousarray(signs.T), TensorProto.FLOAT, packed)
        acc = b.op("MatMul", [x, w_kn], f"{name}.acc")
        epilogue(b, name, acc, layer.epilogue.cpu().numpy(), layer.relu, residual, output, conv=False,
                 integer=False)
        return
    codes = _binary_input(b, name, layer, x, channels_last=True)
    if layer.output_kind == OutputKind.PACKED:
        flip, bias = threshold_bias(layer.thresholds.cpu().numpy(), layer.in_features, name)
        w_kn = weight_operand(b, name, np.ascontiguousarray((signs * flip[:, None]).T), TensorProto.INT8, packed)
        acc = b.op("MatMulInteger", [codes, w_kn, b.shared(BINARY_ZERO_POINT, np.uint8)], f"{name}.acc")
        bit = b.op("GreaterOrEqual", [acc, b.const(f"{name}.threshold", (1 - bias.astype(np.int64)).astype(np.int32))],
                   f"{name}.bit")
        b.op("Where", [bit, b.shared(BINARY_ONE, np.uint8), b.shared(BINARY_MINUS_ONE, np.uint8)], f"{name}.codes",
             outputs=output)
        return
    w_kn = weight_operand(b, name, np.ascontiguousarray(signs.T), TensorProto.INT8, packed)
    acc = b.op("MatMulInteger", [codes, w_kn, b.shared(BINARY_ZERO_POINT, np.uint8)], f"{name}.acc")
    epilogue(b, name, acc, layer.epilogue.cpu().numpy(), layer.relu, residual, output, conv=False)


def expand_packed_layer(b: GraphBuilder, node: onnx.NodeProto, layer: PackedLayer, name: str, packed: bool) -> None:
    """Append to ``b`` the standard ops that compute the placeholder ``node`` of the packed layer
    ``layer`` (module path ``name``): they read ``node.input`` (``x``, optionally the residual)
    and write ``node.output[0]``."""
    x, residual = node.input[0], (node.input[1] if len(node.input) > 1 and node.input[1] else None)
    output = node.output[0]
    if isinstance(layer, PackedLinear):
        _linear(b, name, layer, x, residual, packed, output)
    elif layer.input_kind == InputKind.REAL:
        _conv_real_input(b, name, layer, x, residual, packed, output)
    elif layer.output_kind == OutputKind.PACKED:
        _conv_packed_output(b, name, layer, x, packed, output)
    else:
        size = next((helper.get_attribute_value(a) for a in node.attribute if a.name == INPUT_SIZE_ATTRIBUTE), None)
        if size is None or len(size) != 2:
            raise IntegerLoweringError(f"{name}: the placeholder has no {INPUT_SIZE_ATTRIBUTE} [H, W] attribute")
        _conv_float_output(b, name, layer, x, residual, packed, output, (int(size[0]), int(size[1])))
