"""What ``pack`` knows about the shapes of a traced model's values.

Two fusions depend on shapes: a residual add is fused into a packed layer only when both
operands have the same shape (the kernels add the residual element by element, without
broadcasting), and a ``BatchNorm1d`` after a linear layer folds into its output features
only when the output is 2-D (on 3-D inputs BatchNorm1d normalizes dim 1).

With an input shape, :func:`propagate_shapes` runs the traced graph on a fake tensor
(``torch.fx`` ShapeProp under ``FakeTensorMode``; no memory, no compute). Without one,
:class:`StaticShapes` proves equal shapes from the graph alone, for the cases it can
(shape-preserving ops, and the same convolution geometry applied to the same value), and
``pack`` leaves any add it cannot prove unfused.
"""

from __future__ import annotations

import operator
from collections.abc import Hashable

import torch
import torch.nn.functional as F
from torch import fx, nn

from bnnkit.nn.layers import BinaryConv2d, BinaryLinear

from .fold import PackError

# modules, functions and tensor methods whose output has their first input's shape
SHAPE_PRESERVING_MODULES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.PReLU, nn.LeakyReLU, nn.ELU, nn.GELU,
    nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Identity, nn.Dropout, nn.Dropout2d,
)
SHAPE_PRESERVING_FUNCTIONS = (
    F.relu, torch.relu, torch.relu_, F.relu6, F.hardtanh, F.leaky_relu, F.elu, F.gelu, F.silu, F.prelu,
    torch.sigmoid, torch.tanh, F.dropout, operator.neg,
)
SHAPE_PRESERVING_METHODS = ("relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "float", "neg")


def propagate_shapes(gm: fx.GraphModule, input_shape: tuple[int, ...]) -> dict[fx.Node, tuple[int, ...] | None]:
    """The shape of every node's value for one input of ``input_shape`` (batch 2 added); a
    node whose value is not a tensor maps to ``None``. Raises :class:`PackError` when the
    model does not run on that shape."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.shape_prop import ShapeProp

    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise PackError(f"{type(gm).__name__}: pack handles models with one input; forward takes "
                        f"{len(placeholders)} ({', '.join(n.name for n in placeholders)})")
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        example = torch.zeros(2, *input_shape)
    try:
        with torch.no_grad():
            ShapeProp(gm, fake_mode=mode).propagate(example)
    except Exception as e:
        raise PackError(f"{type(gm).__name__} does not run on input shape {tuple(input_shape)} (batch dim added): "
                        f"{type(e).__name__}: {e}") from e
    shapes = {}
    for node in gm.graph.nodes:
        meta = node.meta.pop("tensor_meta", None)
        shapes[node] = tuple(meta.shape) if hasattr(meta, "shape") else None
    return shapes


def _effective_extent(conv: nn.Conv2d) -> tuple[int, int] | None:
    """``dilation * (kernel - 1) + 1 - 2 * padding`` per dim: with the stride, what fixes the
    output size as a function of the input size (``None`` for a padding string it cannot read)."""
    padding = conv.padding
    if padding == "valid":
        padding = (0, 0)
    elif padding == "same":
        return (1, 1) if tuple(conv.stride) == (1, 1) else None
    return tuple(d * (k - 1) + 1 - 2 * p for k, d, p in zip(conv.kernel_size, conv.dilation, padding))


class StaticShapes:
    """Shape equality from the graph alone: :meth:`key` maps a node to a value that is equal
    for two nodes only if their tensors have the same shape (for any input the model accepts)."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.modules = modules
        self._keys: dict[fx.Node, Hashable] = {}

    def key(self, node: fx.Node) -> Hashable:
        if node not in self._keys:
            self._keys[node] = self._key(node)
        return self._keys[node]

    def _key(self, node: fx.Node) -> Hashable:
        own = ("value", node)
        if not node.args or not isinstance(node.args[0], fx.Node):
            return own
        source = node.args[0]
        if node.op == "call_module":
            m = self.modules[node.target]
            if type(m) in SHAPE_PRESERVING_MODULES:
                return self.key(source)
            if isinstance(m, (nn.Conv2d, BinaryConv2d)):
                extent = _effective_extent(m)
                if extent is None:
                    return own
                if extent == (1, 1) and tuple(m.stride) == (1, 1) and m.in_channels == m.out_channels:
                    return self.key(source)
                return (self.key(source), "conv2d", m.out_channels, tuple(m.stride), extent)
            if isinstance(m, (nn.Linear, BinaryLinear)):
                if m.in_features == m.out_features:
                    return self.key(source)
                return (self.key(source), "linear", m.out_features)
            return own
        if node.op == "call_function" and node.target in SHAPE_PRESERVING_FUNCTIONS:
            return self.key(source)
        if node.op == "call_method" and node.target in SHAPE_PRESERVING_METHODS and len(node.args) == 1:
            return self.key(source)
        return own

    def rank(self, node: fx.Node) -> int | None:
        """The number of dims of ``node``'s tensor when the graph fixes it, else ``None``."""
        if node.op == "call_module":
            m = self.modules[node.target]
            if isinstance(m, nn.Flatten):
                return 2 if (m.start_dim, m.end_dim) == (1, -1) else None
            if isinstance(m, (nn.Conv2d, BinaryConv2d)):
                return 4
            if type(m) in SHAPE_PRESERVING_MODULES or isinstance(m, (nn.Linear, BinaryLinear)):
                return self.rank(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
            return None
        preserving = (node.op == "call_function" and node.target in SHAPE_PRESERVING_FUNCTIONS) or \
            (node.op == "call_method" and node.target in SHAPE_PRESERVING_METHODS and len(node.args) == 1)
        if preserving and isinstance(node.args[0], fx.Node):
            return self.rank(node.args[0])
        if node.op in ("call_function", "call_method") and node.target in (torch.flatten, "flatten"):
            args = list(node.args[1:]) + [node.kwargs[k] for k in ("start_dim", "end_dim") if k in node.kwargs]
            return 2 if args in ([1], [1, -1]) else None
        if node.op == "call_method" and node.target in ("view", "reshape") and len(node.args) == 3 \
                and not node.kwargs and node.args[2] == -1:
            return 2
        return None
