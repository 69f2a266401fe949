"""``pack(model)``: a trained bnnkit model -> :class:`PackedModel` with the same outputs.

The model is traced with ``torch.fx`` (binary layers and ``torch.nn`` layers are leaves).
For every binary layer the longest chain of the patterns below is fused into one packed
layer; everything else runs as it is:

    binary conv/linear [-> ReLU] [-> BatchNorm] [-> + residual]      (conv -> ReLU -> BN, the zoo's order)
    binary conv/linear -> BatchNorm [-> ReLU] [-> + residual]

A fused layer whose result feeds only binary layers that binarize their input (and has no
residual) writes packed bits through per-channel integer thresholds, and its consumers read
those bits: this is the next layer's binarization, fused. A binary layer the kernels cannot
run (groups, dilation, non-square stride or padding, non-sign callable estimators) raises
:class:`PackError` naming it.
"""

from __future__ import annotations

import copy
import dataclasses
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from bnnkit.kernels.epilogue import Epilogue, sign_thresholds
from bnnkit.nn.layers import BinaryConv2d, BinaryLayer, BinaryLinear

from .fold import PackError, check_binary_forward, fold_epilogue
from ..runtime.layers import PackedConv2d, PackedLayer, PackedLinear
from ..runtime.model import PackedModel

_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_)
_ADD_FUNCTIONS = (operator.add, torch.add)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, BinaryLayer) or super().is_leaf_module(m, qualname)


@dataclasses.dataclass
class _Fused:
    """One binary layer and what follows it in the graph."""

    node: fx.Node
    layer: nn.Module
    name: str
    bn_before: tuple[nn.Module, str] | None = None
    relu: bool = False
    bn_after: tuple[nn.Module, str] | None = None
    residual: fx.Node | None = None
    chain: list[fx.Node] = dataclasses.field(default_factory=list)  # nodes after the layer, in order
    input_packed: bool = False
    output_packed: bool = False

    @property
    def end(self) -> fx.Node:
        return self.chain[-1] if self.chain else self.node


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_function" and node.target in _RELU_FUNCTIONS:
        return len(node.args) == 1
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return len(node.args) == 1
    return node.op == "call_module" and type(modules[node.target]) is nn.ReLU


def _bn_of(node: fx.Node, modules: dict[str, nn.Module], layer: nn.Module) -> tuple[nn.Module, str] | None:
    if node.op != "call_module":
        return None
    m = modules[node.target]
    want = nn.BatchNorm2d if isinstance(layer, BinaryConv2d) else nn.BatchNorm1d
    if type(m) is want and m.running_mean is not None and len(node.args) == 1:
        return m, node.target
    return None


def _residual_of(node: fx.Node, prev: fx.Node) -> fx.Node | None:
    """The other operand when ``node`` is ``prev + other`` (a tensor node, no alpha)."""
    is_add = (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or \
             (node.op == "call_method" and node.target == "add")
    if not is_add or len(node.args) != 2 or node.kwargs:
        return None
    a, b = node.args
    other = b if a is prev else a if b is prev else None
    if not isinstance(other, fx.Node) or other is prev:
        return None
    return other


def _match(node: fx.Node, layer: nn.Module, name: str, modules: dict[str, nn.Module]) -> _Fused:
    fused = _Fused(node, layer, name)
    cur = node

    def step():
        nonlocal cur
        nxt = _only_user(cur)
        return nxt

    nxt = step()
    if nxt is not None and _is_relu(nxt, modules):
        fused.relu, cur = True, nxt
        fused.chain.append(nxt)
        nxt = step()
        if nxt is not None and (bn := _bn_of(nxt, modules, layer)) is not None:
            fused.bn_after, cur = bn, nxt
            fused.chain.append(nxt)
            nxt = step()
    elif nxt is not None and (bn := _bn_of(nxt, modules, layer)) is not None:
        fused.bn_before, cur = bn, nxt
        fused.chain.append(nxt)
        nxt = step()
        if nxt is not None and _is_relu(nxt, modules):
            fused.relu, cur = True, nxt
            fused.chain.append(nxt)
            nxt = step()
    # the packed layer replaces the add, after both operands: the residual may be computed after the layer
    if nxt is not None and (other := _residual_of(nxt, cur)) is not None:
        fused.residual = other
        fused.chain.append(nxt)
    return fused


def _check_supported(layer: nn.Module, name: str) -> tuple[int, int]:
    """Validate a binary layer for the kernels; returns (stride, padding) for convolutions."""
    check_binary_forward(layer, name)
    if not layer.weight.is_floating_point():
        raise PackError(f"{name}: weight dtype {layer.weight.dtype} is not a float dtype")
    if isinstance(layer, BinaryLinear):
        return 0, 0
    if layer.groups != 1:
        raise PackError(f"{name}: grouped convolution (groups={layer.groups}) is not supported by the packed kernels")
    if tuple(layer.dilation) != (1, 1):
        raise PackError(f"{name}: dilation {tuple(layer.dilation)} is not supported by the packed kernels")
    if layer.stride[0] != layer.stride[1]:
        raise PackError(f"{name}: stride {tuple(layer.stride)} differs between H and W; the kernels take one stride")
    padding = layer.padding
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same" and layer.stride[0] == 1 and all(k % 2 == 1 for k in layer.kernel_size):
            padding = (layer.kernel_size[0] // 2, layer.kernel_size[1] // 2)
        else:
            raise PackError(f"{name}: padding={padding!r} with this kernel size is not supported")
    if padding[0] != padding[1]:
        raise PackError(f"{name}: padding {tuple(padding)} differs between H and W; the kernels take one padding")
    return int(layer.stride[0]), int(padding[0])


def _binary_input(fused: _Fused) -> bool:
    return fused.layer.input_estimator is not None


@torch.no_grad()
def pack(model: nn.Module, *, architecture: dict[str, Any] | None = None,
         input_shape: tuple[int, ...] | None = None, input_spec=None) -> PackedModel:
    """Pack a trained model for inference; ``model`` itself is not modified.

    Args:
        model: a model built from bnnkit binary layers and standard torch layers (a zoo model
            or your own), traceable by ``torch.fx``. It is packed with eval-mode semantics.
        architecture: for zoo models, ``{"name": zoo_name, "kwargs": constructor_kwargs}``:
            the artifact then rebuilds the model from the zoo. Without it the artifact stores
            a ``torch.export`` program of the packed model (see :meth:`PackedModel.save`).
        input_shape: one input's shape without the batch dim (needed to save a model outside
            the zoo, unless the packed model has run once; taken from ``input_spec`` if given).
        input_spec: a :class:`bnnkit.inputs.InputSpec` (preprocessing, class names) that the
            artifact records for ``bnnkit predict``; ``None`` records none.

    Returns:
        a :class:`PackedModel` in eval mode, on CPU, float32.
    """
    if architecture is not None:
        _check_matches_architecture(model, architecture)
    if input_shape is None and input_spec is not None:
        input_shape = input_spec.shape
    packed = _pack(model, architecture=architecture, input_shape=input_shape, fold=True)
    packed.input_spec = input_spec
    return packed


def _check_matches_architecture(model: nn.Module, architecture: dict[str, Any]) -> None:
    """The artifact rebuilds ``architecture`` on load: it must have the model's tensors."""
    from bnnkit.models import create

    from ..runtime.model import _check_architecture

    arch = _check_architecture(architecture)
    want = {k: tuple(v.shape) for k, v in create(arch["name"], **arch["kwargs"]).state_dict().items()}
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if want != have:
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        raise ValueError(f"architecture {architecture!r} does not describe this model: tensor(s) "
                         f"{', '.join(diff[:5])}{'...' if len(diff) > 5 else ''} differ in name or shape; pass the "
                         "zoo name and kwargs the model was created with, or architecture=None to store a program")


def _pack(model: nn.Module, *, architecture, input_shape, fold: bool) -> PackedModel:
    if not isinstance(model, nn.Module):
        raise TypeError(f"pack() takes an nn.Module, got {type(model).__name__}")
    source = copy.deepcopy(model).cpu().float().eval()
    fp32_bytes = sum(t.numel() * (4 if t.is_floating_point() else t.element_size())
                     for t in source.state_dict().values())
    try:
        graph = _Tracer().trace(source)
    except Exception as e:  # fx raises many types; name the model and the reason
        raise PackError(f"{type(model).__name__} cannot be traced by torch.fx for packing: {e}") from e
    gm = fx.GraphModule(source, graph, class_name=type(model).__name__)
    modules = dict(gm.named_modules())

    fused: dict[fx.Node, _Fused] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], BinaryLayer):
            layer = modules[node.target]
            _check_supported(layer, node.target)
            if len(node.args) != 1 or node.kwargs:
                raise PackError(f"{node.target}: a binary layer called with more than one input cannot be packed")
            fused[node] = _match(node, layer, node.target, modules)
        elif node.op == "call_module" and isinstance(modules[node.target], (PackedLayer,)):
            raise PackError(f"{node.target}: the model is already packed")
    _check_unknown_binary_modules(gm, modules)

    # next layer's binarization: a chain whose every consumer binarizes its (sole) input reads packed bits
    for f in fused.values():
        if f.residual is not None:
            continue
        users = list(f.end.users)
        consumers = [fused.get(u) for u in users]
        if users and all(c is not None and _binary_input(c) and type(c.layer) is type(f.layer) for c in consumers):
            f.output_packed = True
            for c in consumers:
                c.input_packed = True

    replaced: dict[fx.Node, fx.Node] = {}  # chain ends already fused -> their packed node
    for f in fused.values():
        if f.residual is not None:
            f.residual = replaced.get(f.residual, f.residual)
        replaced[f.end] = _replace(gm, f, fold)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    layers = {name: m.encoding() for name, m in gm.named_modules() if isinstance(m, PackedLayer)}
    return PackedModel(gm, architecture=architecture, input_shape=input_shape, fp32_state_bytes=fp32_bytes,
                       layers=layers)


def _check_unknown_binary_modules(gm: fx.GraphModule, modules: dict[str, nn.Module]) -> None:
    """A module the tracer stepped into that still holds binary behaviour cannot be packed."""
    for node in gm.graph.nodes:
        if node.op == "call_function" and getattr(node.target, "__module__", "").startswith("bnnkit."):
            raise PackError(f"node {node.name} calls {node.target.__module__}.{node.target.__name__}, a bnnkit "
                            "function outside a binary layer; use BinaryConv2d / BinaryLinear so it can be packed")


def _replace(gm: fx.GraphModule, f: _Fused, fold: bool) -> fx.Node:
    layer = f.layer
    if not _binary_input(f):
        input_kind = "real"
    else:
        input_kind = "packed" if f.input_packed else "binarize"
    kinds = dict(input_kind=input_kind, output_kind="packed" if f.output_packed else "float", relu=f.relu,
                 residual=f.residual is not None)
    if isinstance(layer, BinaryConv2d):
        stride, padding = _check_supported(layer, f.name)
        packed = PackedConv2d.from_weight(layer.weight, stride, padding, **kinds) if fold else \
            PackedConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride, padding, **kinds)
        k = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
    elif isinstance(layer, BinaryLinear):
        packed = PackedLinear.from_weight(layer.weight, **kinds) if fold else \
            PackedLinear(layer.in_features, layer.out_features, **kinds)
        k = layer.in_features
    else:
        raise PackError(f"{f.name}: binary layer type {type(layer).__name__} is not supported; "
                        "supported: BinaryConv2d, BinaryLinear")
    if fold:
        epilogue = fold_epilogue(layer, f.bn_before, f.relu, f.bn_after)
        if f.output_packed:
            ep = Epilogue(scale=epilogue[0], bias=epilogue[1], relu=f.relu, post_scale=epilogue[2],
                          post_bias=epilogue[3])
            thr = sign_thresholds(ep, epilogue.shape[1], k)
            packed.thresholds.copy_(torch.stack([thr.lo, thr.hi]))
        else:
            packed.epilogue.copy_(epilogue)
    gm.delete_submodule(f.name)
    gm.add_submodule(f.name, packed)
    args = (f.node.args[0],) if f.residual is None else (f.node.args[0], f.residual)
    with gm.graph.inserting_after(f.end):
        new = gm.graph.call_module(f.name, args)
    f.end.replace_all_uses_with(new)
    for n in reversed([f.node, *f.chain]):
        gm.graph.erase_node(n)
    return new
