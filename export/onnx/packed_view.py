"""The packed model as torch's ONNX exporter sees it for the integer graph (``ops="integer"``).

:func:`packed_view` copies a :class:`~bnnkit.export.runtime.PackedModel`'s graph and replaces
each packed layer by an :class:`OnnxPackedLayer`, which the exporter records as one opaque
``bnnkit::PackedLayer`` node (attribute ``layer``: the packed layer's module path). Everything
else in the packed graph (full-precision stem, pooling, shortcuts, classifier) is traced as it
is. After export, :mod:`bnnkit.export.onnx.integer_layers` replaces each placeholder by
standard integer ops. A convolution's placeholder also carries its input's ``[H, W]``
(:data:`INPUT_SIZE_ATTRIBUTE`).

What flows between the placeholders (the exporter only sees dtypes and shapes):

- float outputs: float32, the layer's own shape (conv: NCHW ``(N, C_out, OH, OW)``);
- packed outputs (binary activations read only by the next binary layers): uint8 in
  :data:`BINARY_ONE` / :data:`BINARY_MINUS_ONE` encoding, conv NHWC ``(N, OH, OW, C_out)``,
  linear ``(..., out_features)``.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

from bnnkit.kernels.kinds import InputKind, OutputKind

from ..runtime.layers import PackedConv2d, PackedLayer, PackedLinear

PLACEHOLDER_DOMAIN = "bnnkit"
PLACEHOLDER_OP = "PackedLayer"
INPUT_SIZE_ATTRIBUTE = "input_size"
"""Attribute of a convolution's placeholder: its input's ``[H, W]`` (every dim but the batch
dim is fixed at export)."""

BINARY_ONE = 2
"""uint8 code of +1 in a binary activation (zero point :data:`BINARY_ZERO_POINT`)."""
BINARY_MINUS_ONE = 0
"""uint8 code of -1 in a binary activation."""
BINARY_ZERO_POINT = 1
"""The zero point of binary activations: ``code - 1`` is the ±1 value, and padding with it adds 0."""


def _out_size(size, kernel: int, stride: int, padding: int):
    return (size + 2 * padding - kernel) // stride + 1


class OnnxPackedLayer(nn.Module):
    """Placeholder of one packed layer: while exporting, a ``bnnkit::PackedLayer`` node with the
    output dtype and shape of the integer graph's tensor (see the module docstring)."""

    def __init__(self, layer: PackedLayer, key: str) -> None:
        super().__init__()
        self.__dict__["layer"] = layer  # not a submodule: its buffers must not become graph inputs
        self.key = key

    def output_spec(self, x: torch.Tensor) -> tuple[torch.dtype, list]:
        layer = self.layer
        packed_out = layer.output_kind == OutputKind.PACKED
        if isinstance(layer, PackedConv2d):
            kh, kw = layer.kernel_size
            if layer.input_kind == InputKind.PACKED:
                n, h, w = x.shape[0], x.shape[1], x.shape[2]
            else:
                n, h, w = x.shape[0], x.shape[2], x.shape[3]
            oh = _out_size(h, kh, layer.stride, layer.padding)
            ow = _out_size(w, kw, layer.stride, layer.padding)
            shape = [n, oh, ow, layer.out_channels] if packed_out else [n, layer.out_channels, oh, ow]
        else:
            shape = [*x.shape[:-1], layer.out_features]
        return (torch.uint8 if packed_out else torch.float32), shape

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        dtype, shape = self.output_spec(x)
        inputs = (x,) if residual is None else (x, residual)
        attrs: dict = {"layer": self.key}
        if isinstance(self.layer, PackedConv2d):  # the input's (H, W), fixed at export: the im2col's geometry
            hw = x.shape[1:3] if self.layer.input_kind == InputKind.PACKED else x.shape[2:4]
            attrs[INPUT_SIZE_ATTRIBUTE] = [int(v) for v in hw]
        return torch.onnx.ops.symbolic(f"{PLACEHOLDER_DOMAIN}::{PLACEHOLDER_OP}", inputs, attrs,
                                       dtype=dtype, shape=shape, version=1)


def packed_view(body: fx.GraphModule) -> tuple[fx.GraphModule, dict[str, PackedLayer]]:
    """A copy of the packed graph ``body`` with each packed layer replaced by its placeholder,
    and the packed layers by module path (the ``layer`` attribute of their placeholders)."""
    view = copy.deepcopy(body)
    layers: dict[str, PackedLayer] = {}
    for name, module in list(view.named_modules()):
        if isinstance(module, (PackedConv2d, PackedLinear)):
            layers[name] = module
            parent_name, _, child = name.rpartition(".")
            parent = view.get_submodule(parent_name) if parent_name else view
            setattr(parent, child, OnnxPackedLayer(module, name))
    return view.eval(), layers
