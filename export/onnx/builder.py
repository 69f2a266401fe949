"""A small builder of ONNX nodes and initializers, for the subgraphs that replace bnnkit's
placeholder nodes after torch's exporter has run (:mod:`bnnkit.export.onnx.graph`).

Every name it creates starts with the prefix given (a layer's module path), so the expanded
graph reads like the model; constants shared by several subgraphs (``shared``) are created
once per graph.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class GraphBuilder:
    """Collects the nodes and initializers of one graph rewrite.

    ``taken``: names already used in the graph (the builder adds its own to it).
    """

    def __init__(self, taken: set[str]) -> None:
        self.taken = taken
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._shared: dict[tuple, str] = {}
        self._once: dict[tuple, str] = {}

    def fresh(self, name: str) -> str:
        """``name``, or ``name.2``, ``name.3``... whichever is not taken yet (then taken)."""
        candidate, i = name, 1
        while candidate in self.taken:
            i += 1
            candidate = f"{name}.{i}"
        self.taken.add(candidate)
        return candidate

    def const(self, name: str, value: np.ndarray) -> str:
        """A new initializer holding ``value``; returns its name."""
        name = self.fresh(name)
        value = np.asarray(value)
        # ascontiguousarray would make a 0-d array 1-d; Range, for one, needs true scalars
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value) if value.ndim else value, name))
        return name

    def shared(self, value: np.ndarray | int | float, dtype) -> str:
        """An initializer for a small constant, created once per graph and reused."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._shared:
            label = "_".join(str(v) for v in array.ravel()[:4]).replace("-", "m")
            self._shared[key] = self.const(f"c.{array.dtype.name}.{label}", array)  # short: referenced often
        return self._shared[key]

    def once(self, key: tuple, make) -> str:
        """``make()`` (a function that appends nodes and returns a value's name) the first time
        ``key`` is asked for; the same name afterwards: a subgraph shared by several layers."""
        if key not in self._once:
            self._once[key] = make()
        return self._once[key]

    def op(self, op_type: str, inputs: list[str], name: str, *, outputs: str | None = None, **attrs) -> str:
        """Append a node of the standard domain; returns its output's name (``outputs`` when
        given, else a fresh name derived from ``name``)."""
        out = outputs if outputs is not None else self.fresh(name)
        # unnamed: runtimes name nodes themselves, and names would be a tenth of a small model's file
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out


def unpack_sign_bits(b: GraphBuilder, name: str, bits: str, rows: int, k: int, positive: str, negative: str) -> str:
    """``Where(bit, positive, negative)`` of shape ``(rows, k)`` for the uint8 ``bits`` ``(rows,
    ceil(k/8))`` (bit ``j % 8`` of byte ``j // 8`` is element ``j``); ``positive`` /
    ``negative`` broadcast against ``(rows, k)``. Needs opset 18 (BitwiseAnd)."""
    width = 8 * ((k + 7) // 8)
    as_bytes = b.op("Unsqueeze", [bits, b.shared([-1], np.int64)], f"{name}.bytes")
    shifted = b.op("BitShift", [as_bytes, b.shared(np.arange(8), np.uint8)], f"{name}.shifted", direction="RIGHT")
    flat = b.op("Reshape", [b.op("BitwiseAnd", [shifted, b.shared(1, np.uint8)], f"{name}.bits"),
                            b.shared([rows, width], np.int64)], f"{name}.flat")
    if width != k:  # drop the zero padding bits of the last byte
        flat = b.op("Slice", [flat, b.shared([0], np.int64), b.shared([k], np.int64), b.shared([1], np.int64)],
                    f"{name}.valid")
    positive_bit = b.op("Cast", [flat], f"{name}.positive", to=TensorProto.BOOL)
    return b.op("Where", [positive_bit, positive, negative], f"{name}.signs")
