"""The ONNX side of the export: the binarize translation and the rewrites of the exported graph.

- :func:`binarize_translation`: ``torch.ops.bnnkit_export.binarize`` -> ``Where(x >= 0, 1, -1)``.
- :func:`expand_packed_signs`: each ``bnnkit::PackedSigns(bits, scale)`` node (left opaque
  while the exporter's optimizer runs, so it cannot fold the unpacking into float weights)
  becomes standard ops::

      bits uint8 [N, B] -> Unsqueeze(-1) -> BitShift(RIGHT, [0..7]) -> BitwiseAnd(1)  # [N, B, 8]
      -> Reshape [N, 8B] -> Slice [:, :K] -> Cast(bool) -> Where(bit, scale, -scale) -> Reshape(shape)

  (:func:`bnnkit.export.onnx.builder.unpack_sign_bits`, shared with the integer graph.)

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
from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper

from .builder import GraphBuilder, unpack_sign_bits
from .modules import PACKED_SIGNS_DOMAIN, PACKED_SIGNS_OP

def binarize_translation(x):
    """onnxscript translation of ``bnnkit_export::binarize``: ``Where(x >= 0, 1, -1)`` in x's type."""
    from onnxscript import opset18 as op

    one = op.CastLike(op.Constant(value_float=1.0), x)
    zero = op.CastLike(op.Constant(value_float=0.0), x)
    return op.Where(op.GreaterOrEqual(x, zero), one, op.Neg(one))


Expansion = Callable[[GraphBuilder, onnx.NodeProto], None]


def expand_placeholders(model: onnx.ModelProto, domain: str, op_type: str, expand: Expansion) -> int:
    """Replace every ``domain::op_type`` node of ``model``'s main graph (in place) by the standard
    ops ``expand(builder, node)`` appends to the builder (they read the node's inputs and write
    its outputs); drops ``domain`` from the opset imports. Returns how many were replaced.
    Raises if such a node is left inside an ONNX function."""
    graph = model.graph
    taken = {n for node in graph.node for n in (*node.input, *node.output, node.name)}
    taken |= {t.name for t in graph.initializer} | {v.name for v in (*graph.input, *graph.output)}
    builder = GraphBuilder(taken)
    new_nodes: list[onnx.NodeProto] = []
    count = 0
    for node in graph.node:
        if node.domain == domain and node.op_type == op_type:
            start = len(builder.nodes)
            expand(builder, node)
            new_nodes += builder.nodes[start:]
            count += 1
        else:
            new_nodes.append(node)
    leftover = [f.name for f in model.functions if any(n.domain == domain for n in f.node)]
    if leftover:
        raise RuntimeError(f"{domain}::{op_type} nodes inside ONNX functions {leftover} cannot be expanded; this is a "
                           "bnnkit bug")
    if count:
        del graph.node[:]
        graph.node.extend(new_nodes)
        graph.initializer.extend(builder.initializers)
    kept = [o for o in model.opset_import if o.domain != domain]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return count


def _expand_packed_signs(b: GraphBuilder, node: onnx.NodeProto) -> None:
    shape = [int(s) for s in helper.get_attribute_value(next(a for a in node.attribute if a.name == "shape"))]
    bits, scale = node.input
    name = bits.removesuffix("_bits")  # the layer's weight name, e.g. "layer1.0.conv1.weight"
    negative = b.op("Neg", [scale], f"{name}.neg_scale")
    signs = unpack_sign_bits(b, name, bits, shape[0], math.prod(shape[1:]), scale, negative)
    b.op("Reshape", [signs, b.const(f"{name}.shape", np.array(shape, np.int64))], f"{name}.unpacked",
         outputs=node.output[0])


def expand_packed_signs(model: onnx.ModelProto) -> int:
    """Replace every ``bnnkit::PackedSigns`` node of ``model`` (in place) by standard ONNX ops;
    returns how many were replaced."""
    return expand_placeholders(model, PACKED_SIGNS_DOMAIN, PACKED_SIGNS_OP, _expand_packed_signs)


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
