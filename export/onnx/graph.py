"""The ONNX side of the export: the binarize translation and the rewrites of the exported graph.

- :func:`binarize_translation`: ``torch.ops.bnnkit_export.binarize`` -> ``Where(x >= 0, 1, -1)``.
- :func:`expand_packed_signs`: each ``bnnkit::PackedSigns(bits, scale)`` node (left opaque
  while the exporter's optimizer runs, so it cannot fold the unpacking into float weights)
  becomes standard ops::

      bits uint8 [N, B] -> Unsqueeze(-1) -> BitShift(RIGHT, [0..7]) -> BitwiseAnd(1)  # [N, B, 8]
      -> Reshape [N, 8B] -> Slice [:, :K] -> Cast(bool) -> Where(bit, scale, -scale) -> Reshape(shape)

  BitwiseAnd needs opset 18. onnxruntime constant-folds this subgraph at session start.

Why uint8 bits unpacked in-graph rather than INT2 weights with DequantizeLinear, measured with
onnxruntime 1.32 on a 2-core x86 CPU (benchmark suite "onnx", cases weight_format and
matmul_nbits; README, section ONNX):

- file: 1 bit per weight against 2 for INT2. resnet20: 15.5x smaller than its fp32
  parameters with bits, 8.3x with INT2 (the full-precision stem, classifier and BatchNorms
  weigh the same in both).
- exactness and speed: onnxruntime folds the bit subgraph into float weights at session
  start, so the session runs the float graph's kernels. DequantizeLinear is not folded: it
  runs on every inference (digits_mlp batch 1: 9x slower; resnet20: +70% at batch 1, +66%
  at batch 64). Only for MatMul does onnxruntime fuse it into MatMulNBits, which keeps the
  weights packed in memory, but at its default accuracy level that kernel quantizes the
  activations to int8 (error 0.46 on a 2048x2048 ±1 matmul, far outside the 1e-4 bound), and
  at accuracy level 0 (fp32) 2-bit weights ran 15x slower than the float MatMul at batch 1.
- portability: INT2 needs opset 25; BitShift/BitwiseAnd run with opset 18.

The cost of bits: session memory holds float weights, as for an unpacked graph.
"""

from __future__ import annotations

import math

import onnx
from onnx import TensorProto, helper, numpy_helper

from .modules import PACKED_SIGNS_DOMAIN, PACKED_SIGNS_OP

_SHIFTS = "bnnkit.bit_shifts"
_ONE = "bnnkit.bit_one"
_LAST_AXIS = "bnnkit.axis_last"
_ZERO = "bnnkit.zero"
_AXIS1 = "bnnkit.axis_1"


def binarize_translation(x):
    """onnxscript translation of ``bnnkit_export::binarize``: ``Where(x >= 0, 1, -1)`` in x's type."""
    from onnxscript import opset18 as op

    one = op.CastLike(op.Constant(value_float=1.0), x)
    zero = op.CastLike(op.Constant(value_float=0.0), x)
    return op.Where(op.GreaterOrEqual(x, zero), one, op.Neg(one))


def _shared_initializers(used: set[str]) -> list[TensorProto]:
    import numpy as np

    values = {_SHIFTS: np.arange(8, dtype=np.uint8), _ONE: np.array(1, dtype=np.uint8),
              _LAST_AXIS: np.array([-1], dtype=np.int64), _ZERO: np.array([0], dtype=np.int64),
              _AXIS1: np.array([1], dtype=np.int64)}
    return [numpy_helper.from_array(v, name) for name, v in values.items() if name in used]


def _unpack_nodes(node: onnx.NodeProto, taken: set[str]) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    import numpy as np

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    shape = [int(s) for s in attrs["shape"]]
    n, k = shape[0], math.prod(shape[1:])
    width = 8 * ((k + 7) // 8)
    bits, scale = node.input
    p = bits.removesuffix("_bits")  # the layer's weight name, e.g. "layer1.0.conv1.weight"
    if p in taken:  # the exporter shares one initializer between layers with equal bits
        p = f"{p}.{node.output[0]}"
    taken.add(p)
    out = p  # the consumers are renamed to read the unpacked weight under the layer's name
    inits = [numpy_helper.from_array(np.array([n, width], dtype=np.int64), f"{p}.flat_shape")]
    nodes = [
        helper.make_node("Unsqueeze", [bits, _LAST_AXIS], [f"{p}.bytes"]),
        helper.make_node("BitShift", [f"{p}.bytes", _SHIFTS], [f"{p}.shifted"], direction="RIGHT"),
        helper.make_node("BitwiseAnd", [f"{p}.shifted", _ONE], [f"{p}.bits"]),
        helper.make_node("Reshape", [f"{p}.bits", f"{p}.flat_shape"], [f"{p}.flat"]),
    ]
    flat = f"{p}.flat"
    if width != k:  # drop the zero padding bits of the last byte
        inits.append(numpy_helper.from_array(np.array([k], dtype=np.int64), f"{p}.k"))
        nodes.append(helper.make_node("Slice", [flat, _ZERO, f"{p}.k", _AXIS1], [f"{p}.valid"]))
        flat = f"{p}.valid"
    nodes += [
        helper.make_node("Cast", [flat], [f"{p}.positive"], to=TensorProto.BOOL),
        helper.make_node("Neg", [scale], [f"{p}.neg_scale"]),
    ]
    if len(shape) == 2:
        nodes.append(helper.make_node("Where", [f"{p}.positive", scale, f"{p}.neg_scale"], [out]))
    else:
        inits.append(numpy_helper.from_array(np.array(shape, dtype=np.int64), f"{p}.shape"))
        nodes += [helper.make_node("Where", [f"{p}.positive", scale, f"{p}.neg_scale"], [f"{p}.signs"]),
                  helper.make_node("Reshape", [f"{p}.signs", f"{p}.shape"], [out])]
    return nodes, inits


def expand_packed_signs(model: onnx.ModelProto) -> int:
    """Replace every ``bnnkit::PackedSigns`` node of ``model`` (in place) by standard ONNX ops;
    returns how many were replaced. Raises if one is left inside a subgraph or function."""
    graph = model.graph
    new_nodes: list[onnx.NodeProto] = []
    count = 0
    taken: set[str] = set()
    renamed: dict[str, str] = {}
    for node in graph.node:
        if node.domain == PACKED_SIGNS_DOMAIN and node.op_type == PACKED_SIGNS_OP:
            nodes, inits = _unpack_nodes(node, taken)
            renamed[node.output[0]] = nodes[-1].output[0]
            new_nodes += nodes
            graph.initializer.extend(inits)
            count += 1
        else:
            for i, name in enumerate(node.input):
                if name in renamed:
                    node.input[i] = renamed[name]
            new_nodes.append(node)
    if any(o.name in renamed for o in graph.output):
        raise RuntimeError("a packed weight is a graph output; this is a bnnkit bug")
    leftover = [f.name for f in model.functions if any(n.domain == PACKED_SIGNS_DOMAIN for n in f.node)]
    if leftover:
        raise RuntimeError(f"packed weights inside ONNX functions {leftover} cannot be expanded; this is a bnnkit bug")
    if count:
        del graph.node[:]
        graph.node.extend(new_nodes)
        graph.initializer.extend(_shared_initializers({i for n in new_nodes for i in n.input}))
    kept = [o for o in model.opset_import if o.domain != PACKED_SIGNS_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return count


def strip_metadata(model: onnx.ModelProto) -> None:
    """Drop the exporter's per-node metadata (source stack traces, torch names: most of a small
    model's file), its intermediate shape annotations (runtimes infer them) and doc strings,
    in place."""
    graph = model.graph
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del graph.value_info[:]
    for entry in [*graph.input, *graph.output, *graph.initializer]:
        del entry.metadata_props[:]
    del model.metadata_props[:]
    del graph.metadata_props[:]
    graph.doc_string = ""


def set_metadata(model: onnx.ModelProto, props: dict[str, str], doc: str) -> None:
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    model.doc_string = doc


def op_types(model: onnx.ModelProto) -> set[str]:
    """Op types of the main graph (``domain::op`` outside the default domain)."""
    return {n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}" for n in model.graph.node}
