"""The inference form of a bnnkit model that the ONNX exporter traces.

:func:`inference_model` copies a model (float32, CPU, eval) and replaces every
:class:`~bnnkit.nn.BinaryConv2d` / :class:`~bnnkit.nn.BinaryLinear` by an
:class:`OnnxBinaryConv2d` / :class:`OnnxBinaryLinear` whose weight is a constant:

- ``packed=True``: buffers ``weight_bits`` (uint8) and ``weight_scale`` (float32) in the
  format of :mod:`bnnkit.export.onnx.ops`. While exporting (``emit_onnx_node=True``) the
  weight is a ``bnnkit::PackedSigns`` node that :mod:`bnnkit.export.onnx.graph` expands into
  standard ONNX ops after the exporter's optimizer has run (the optimizer would otherwise
  fold the unpacking back into float weights). In eager mode it is unpacked in torch.
- ``packed=False``: a float32 buffer ``weight`` holding ``alpha * binarize(w)``.

Binary inputs go through ``torch.ops.bnnkit_export.binarize``. Everything else in the model
is traced by the exporter as it is.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from .ops import pack_weight_bits, unpack_weight_bits
from bnnkit.kernels.weight_binarize import weight_scale_reference
from bnnkit.nn.layers import BinaryConv2d, BinaryLayer, BinaryLinear

PACKED_SIGNS_DOMAIN = "bnnkit"
PACKED_SIGNS_OP = "PackedSigns"


class UnsupportedLayerError(TypeError):
    """A layer of the model has no faithful ONNX form; the message names it."""


class _OnnxBinaryWeight(nn.Module):
    """The constant binary weight ``alpha * binarize(w)`` of one layer, packed or as floats."""

    def _init_weight(self, layer: BinaryLayer, packed: bool) -> None:
        w = layer.weight.detach().float()
        expected = layer.quantized_weight().detach().float()
        self.weight_shape = tuple(w.shape)
        self.packed = packed
        self.emit_onnx_node = False
        self.binary_input = layer.binary_input
        if not packed:
            self.register_buffer("weight", expected.clone())
            return
        alpha = weight_scale_reference(w, layer.scale)
        if alpha is None:
            alpha = torch.ones((), dtype=torch.float32)
        self.register_buffer("weight_bits", pack_weight_bits(w))
        self.register_buffer("weight_scale", alpha.float().reshape(() if alpha.dim() == 0 else (w.shape[0], 1)).clone())
        if not torch.equal(self.binary_weight(), expected):
            raise RuntimeError(f"packing the weight of a {type(layer).__name__} changed its values; this is a bnnkit bug")

    def binary_weight(self) -> torch.Tensor:
        """``alpha * binarize(w)``: float32 of the layer's weight shape."""
        if not self.packed:
            return self.weight
        if self.emit_onnx_node:
            return torch.onnx.ops.symbolic(
                f"{PACKED_SIGNS_DOMAIN}::{PACKED_SIGNS_OP}", (self.weight_bits, self.weight_scale),
                {"shape": list(self.weight_shape)}, dtype=torch.float32, shape=self.weight_shape, version=1)
        return unpack_weight_bits(self.weight_bits, self.weight_scale, self.weight_shape)

    def binary_input_of(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.bnnkit_export.binarize(x) if self.binary_input else x

    @property
    def packed_bytes(self) -> int:
        """Bytes of the packed sign bits (0 when not packed)."""
        return self.weight_bits.numel() if self.packed else 0


class OnnxBinaryConv2d(_OnnxBinaryWeight):
    """Inference form of a BinaryConv2d: ``conv2d(binarize(x) or x, alpha * binarize(w), bias)``,
    zero padding. Input ``(N, C_in, H, W)`` float32."""

    def __init__(self, layer: BinaryConv2d, packed: bool) -> None:
        super().__init__()
        self._init_weight(layer, packed)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().float().clone(), requires_grad=False)
        self.stride, self.padding, self.dilation, self.groups = layer.stride, layer.padding, layer.dilation, layer.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.binary_input_of(x), self.binary_weight(), self.bias, self.stride, self.padding,
                        self.dilation, self.groups)


class OnnxBinaryLinear(_OnnxBinaryWeight):
    """Inference form of a BinaryLinear: ``linear(binarize(x) or x, alpha * binarize(w), bias)``.
    Input ``(..., in_features)`` float32."""

    def __init__(self, layer: BinaryLinear, packed: bool) -> None:
        super().__init__()
        self._init_weight(layer, packed)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().float().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.binary_input_of(x), self.binary_weight(), self.bias)


_INFERENCE_FORMS = {BinaryConv2d: OnnxBinaryConv2d, BinaryLinear: OnnxBinaryLinear}


def check_exportable(model: nn.Module) -> None:
    """Raise :class:`UnsupportedLayerError` naming the first binary layer without an ONNX form:
    a BinaryLayer that is not exactly BinaryConv2d/BinaryLinear (its forward may differ), or one
    whose estimator is a callable (its forward is not known to be bnnkit's binarization)."""
    for name, module in model.named_modules():
        if not isinstance(module, BinaryLayer):
            continue
        where = f"layer {name or '<root>'!r} ({type(module).__name__})"
        if type(module) not in _INFERENCE_FORMS:
            raise UnsupportedLayerError(
                f"{where} is a BinaryLayer subclass that ONNX export does not know; supported binary layers: "
                f"{', '.join(t.__name__ for t in _INFERENCE_FORMS)} (plus any standard torch layer the ONNX exporter "
                "supports)")
        for attr in ("weight_estimator", "input_estimator"):
            estimator = getattr(module, attr)
            if estimator is not None and not isinstance(estimator, str):
                raise UnsupportedLayerError(
                    f"{where} has a callable {attr} ({getattr(estimator, '__name__', type(estimator).__name__)}); "
                    "ONNX export supports the named estimators (their forward is bnnkit's binarization, "
                    "+1 for x >= 0 else -1)")
        if not module.weight.is_floating_point():
            raise UnsupportedLayerError(f"{where} has a {module.weight.dtype} weight; expected a floating-point weight")


def inference_model(model: nn.Module, packed: bool) -> nn.Module:
    """A float32 CPU eval-mode copy of ``model`` with its binary layers in inference form
    (see the module docstring). ``model`` itself is not changed."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    check_exportable(model)
    copied = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    replaced: dict[int, nn.Module] = {}
    for name, module in list(copied.named_modules(remove_duplicate=False)):
        if type(module) not in _INFERENCE_FORMS or name == "":
            continue
        if id(module) not in replaced:  # a layer used in several places keeps one inference form
            replaced[id(module)] = _INFERENCE_FORMS[type(module)](module, packed)
        parent_name, _, child = name.rpartition(".")
        parent = copied.get_submodule(parent_name) if parent_name else copied
        setattr(parent, child, replaced[id(module)])  # also right for ModuleList/Sequential/ModuleDict keys
    if type(copied) in _INFERENCE_FORMS:
        copied = _INFERENCE_FORMS[type(copied)](copied, packed)
    return copied.eval()


def binary_weights(model: nn.Module) -> list[tuple[str, _OnnxBinaryWeight]]:
    """``(name, module)`` of the inference-form binary layers of ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _OnnxBinaryWeight)]


def set_emit_onnx_node(model: nn.Module, emit: bool) -> None:
    for _, module in binary_weights(model):
        module.emit_onnx_node = emit


def weight_numel(model: nn.Module) -> int:
    """Number of binary weights of an inference-form model."""
    return sum(math.prod(m.weight_shape) for _, m in binary_weights(model))
