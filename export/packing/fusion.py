"""``pack(model)``: a trained bnnkit model -> :class:`PackedModel` with the same outputs.

The model is traced with ``torch.fx`` (binary layers and ``torch.nn`` layers are leaves).
Each call of a ``BinaryConv2d`` / ``BinaryLinear`` becomes one packed layer that absorbs the
longest chain of these patterns after it (each node of the chain used only by the next):

    binary layer [-> ReLU] [-> BatchNorm] [-> + residual]      (conv -> ReLU -> BN, the zoo's order)
    binary layer -> BatchNorm [-> ReLU] [-> + residual]

The BatchNorm is ``BatchNorm2d`` after a convolution, ``BatchNorm1d`` after a linear layer
with a 2-D output; it must have running statistics. A residual add is absorbed when its
other operand has the same shape (known from ``input_shape``, or proved from the graph); when
two fusible chains meet in one add, the first in graph order takes it and the other ends
before it. A layer with binary inputs (an integer accumulator) whose result feeds only
binary layers of its kind that binarize it (and which took no residual) writes packed bits
through per-channel integer thresholds; its consumers read the bits (the next layer's
binarization, fused). Everything else runs as the trained model runs it.

Refused with :class:`PackError`, naming the module: a binary layer the kernels cannot run
(groups, dilation, different strides or paddings along H and W, an unreadable padding
string, a non-float weight, a reduction length above the kernels' 2**24, an estimator whose forward is not ``x >= 0 -> +1``), a binary
layer called with several inputs, a ``BinaryLayer`` subclass that overrides the forward,
bnnkit functions called outside a binary layer, an already packed model, a model fx cannot
trace. Any other failure inside ``pack`` is reported as a :class:`PackError` naming the
layer and the pattern it was fusing.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from bnnkit.kernels.binary_conv import MAX_K as MAX_CONV_K
from bnnkit.kernels.binary_gemm import MAX_K as MAX_GEMM_K
from bnnkit.kernels.epilogue import Epilogue, sign_thresholds
from bnnkit.nn.layers import BinaryConv2d, BinaryLayer, BinaryLinear

from .fold import PackError, check_binary_forward, fold_epilogue
from .shapes import StaticShapes, propagate_shapes
from ..runtime.layers import PackedConv2d, PackedLayer, PackedLinear
from ..runtime.model import PackedModel

_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_)
_ADD_FUNCTIONS = (operator.add, torch.add)
MAX_REDUCTION = min(MAX_CONV_K, MAX_GEMM_K)
_NOOP_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
# the methods whose behaviour a packed layer reproduces; a subclass overriding one is refused
_BINARY_METHODS = ("forward", "quantized_input", "quantized_weight", "_conv_forward")


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (BinaryLayer, PackedLayer)) or super().is_leaf_module(m, qualname)


@dataclasses.dataclass
class _Fused:
    """One call of a binary layer and what follows it in the graph."""

    node: fx.Node
    layer: nn.Module
    name: str  # the binary layer's module path
    target: str  # the packed layer's module path (the binary layer's, or a new one for a second call)
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

    @property
    def integer_accumulator(self) -> bool:
        """Binary inputs: the accumulator is an exact integer (W1A1), the thresholds apply."""
        return self.layer.input_estimator is not None

    def pattern(self, modules: dict[str, nn.Module]) -> str:
        return " -> ".join([type(self.layer).__name__] + [_describe(n, modules) for n in self.chain])


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return type(modules[node.target]).__name__
    if node.op == "call_method":
        return f".{node.target}()"
    return getattr(node.target, "__name__", str(node.target))


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_function" and node.target in _RELU_FUNCTIONS:
        return len(node.args) == 1 and set(node.kwargs) <= {"inplace"}
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return len(node.args) == 1 and not node.kwargs
    return node.op == "call_module" and type(modules[node.target]) is nn.ReLU


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


def _check_supported(layer: nn.Module, name: str) -> tuple[int, int]:
    """Validate a binary layer for the kernels; returns (stride, padding) for convolutions."""
    if not isinstance(layer, (BinaryConv2d, BinaryLinear)):
        raise PackError(f"{name}: binary layer type {type(layer).__name__} is not supported; "
                        "supported: BinaryConv2d, BinaryLinear")
    base = BinaryConv2d if isinstance(layer, BinaryConv2d) else BinaryLinear
    for method in _BINARY_METHODS:
        if hasattr(base, method) and getattr(type(layer), method) is not getattr(base, method):
            raise PackError(f"{name}: {type(layer).__name__} overrides {base.__name__}.{method}; pack reproduces "
                            f"only {base.__name__}'s own forward")
    check_binary_forward(layer, name)
    if not layer.weight.is_floating_point():
        raise PackError(f"{name}: weight dtype {layer.weight.dtype} is not a float dtype")
    reduction = layer.weight[0].numel()
    if reduction > MAX_REDUCTION:
        raise PackError(f"{name}: reduction length {reduction} (inputs per output) exceeds the kernels' {MAX_REDUCTION}")
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


class _Compiler:
    """The fusion pass over one traced model (see the module docstring)."""

    def __init__(self, gm: fx.GraphModule, shapes: dict[fx.Node, tuple[int, ...] | None] | None) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.shapes = shapes
        self.static = StaticShapes(self.modules)
        self.fused: dict[fx.Node, _Fused] = {}
        self.claimed: set[fx.Node] = set()  # nodes some chain absorbed

    # --- shapes -----------------------------------------------------------------------------
    def _same_shape(self, a: fx.Node, b: fx.Node) -> bool:
        if self.shapes is not None:
            return self.shapes.get(a) is not None and self.shapes.get(a) == self.shapes.get(b)
        return self.static.key(a) == self.static.key(b)

    def _rank(self, node: fx.Node) -> int | None:
        if self.shapes is not None:
            shape = self.shapes.get(node)
            return None if shape is None else len(shape)
        return self.static.rank(node)

    # --- matching ---------------------------------------------------------------------------
    def _bn_of(self, node: fx.Node, f: _Fused) -> tuple[nn.Module, str] | None:
        """The BatchNorm ``node`` calls, when it folds into ``f``'s output channels."""
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            return None
        m = self.modules[node.target]
        if isinstance(f.layer, BinaryConv2d):
            fits = type(m) is nn.BatchNorm2d
        else:  # BatchNorm1d normalizes dim 1: the output features only for a 2-D output
            fits = type(m) is nn.BatchNorm1d and self._rank(f.node) == 2
        if fits and m.running_mean is not None and m.running_var is not None:
            return m, node.target
        return None

    def _next(self, f: _Fused, node: fx.Node) -> fx.Node | None:
        """The sole user of ``node`` not yet claimed, past no-ops (absorbed into ``f``'s chain)."""
        nxt = _only_user(node)
        while nxt is not None and nxt not in self.claimed and self._is_noop(nxt):
            f.chain.append(nxt)
            nxt = _only_user(nxt)
        return None if nxt is None or nxt in self.claimed else nxt

    def _is_noop(self, node: fx.Node) -> bool:
        """Identity, or dropout in eval mode (pack packs eval semantics)."""
        return node.op == "call_module" and len(node.args) == 1 and not node.kwargs and \
            type(self.modules[node.target]) in _NOOP_MODULES

    def match(self, node: fx.Node, layer: nn.Module, target: str) -> _Fused:
        f = _Fused(node, layer, node.target, target)
        nxt = self._next(f, f.end)
        if nxt is not None and _is_relu(nxt, self.modules):
            f.relu = True
            f.chain.append(nxt)
            nxt = self._next(f, f.end)
            if nxt is not None and (bn := self._bn_of(nxt, f)) is not None:
                f.bn_after = bn
                f.chain.append(nxt)
                nxt = self._next(f, f.end)
        elif nxt is not None and (bn := self._bn_of(nxt, f)) is not None:
            f.bn_before = bn
            f.chain.append(nxt)
            nxt = self._next(f, f.end)
            if nxt is not None and _is_relu(nxt, self.modules):
                f.relu = True
                f.chain.append(nxt)
                nxt = self._next(f, f.end)
        # the packed layer replaces the add, after both operands: the residual may be computed after the layer
        if nxt is not None and (other := _residual_of(nxt, f.end)) is not None \
                and self._same_shape(f.end, other):
            f.residual = other
            f.chain.append(nxt)
        self.claimed.update(f.chain)
        return f

    def collect(self) -> None:
        calls: dict[str, int] = {}
        for node in self.gm.graph.nodes:
            if node.op != "call_module":
                continue
            module = self.modules[node.target]
            if isinstance(module, PackedLayer):
                raise PackError(f"{node.target}: the model is already packed")
            if not isinstance(module, BinaryLayer):
                continue
            _check_supported(module, node.target)
            if len(node.args) != 1 or node.kwargs:
                raise PackError(f"{node.target}: a binary layer called with more than one input cannot be packed")
            n = calls[node.target] = calls.get(node.target, 0) + 1
            target = node.target if n == 1 else self._fresh_name(f"{node.target}_call{n}")
            self.fused[node] = self.match(node, module, target)
        for node in self.gm.graph.nodes:
            if node.op == "call_function" and getattr(node.target, "__module__", "").startswith("bnnkit."):
                raise PackError(f"node {node.name} calls {node.target.__module__}.{node.target.__name__}, a bnnkit "
                                "function outside a binary layer; use BinaryConv2d / BinaryLinear so it can be packed")

    def _fresh_name(self, name: str) -> str:
        candidate, i = name, 1
        while candidate in self.modules or any(f.target == candidate for f in self.fused.values()):
            i += 1
            candidate = f"{name}_{i}"
        return candidate

    def choose_packed_outputs(self) -> None:
        """A chain whose every consumer is a binary layer of its kind binarizing it writes bits."""
        for f in self.fused.values():
            if f.residual is not None or not f.integer_accumulator:
                continue
            users = list(f.end.users)
            consumers = [self.fused.get(u) for u in users]
            if users and all(c is not None and c.integer_accumulator and type(c.layer) is type(f.layer)
                             and c.node.args[0] is f.end for c in consumers):
                f.output_packed = True
                for c in consumers:
                    c.input_packed = True

    # --- rewriting --------------------------------------------------------------------------
    def replace_all(self) -> None:
        replaced: dict[fx.Node, fx.Node] = {}  # chain ends already fused -> their packed node
        for f in self.fused.values():
            with _reporting(f, self.modules):
                if f.residual is not None:
                    f.residual = replaced.get(f.residual, f.residual)
                replaced[f.end] = self._replace(f)
        with _reporting(None, self.modules, "rewriting the graph"):
            self.gm.graph.eliminate_dead_code()
            self.gm.delete_all_unused_submodules()
            self.gm.graph.lint()
            self.gm.recompile()

    def _replace(self, f: _Fused) -> fx.Node:
        layer = f.layer
        input_kind = "real" if not f.integer_accumulator else "packed" if f.input_packed else "binarize"
        kinds = dict(input_kind=input_kind, output_kind="packed" if f.output_packed else "float", relu=f.relu,
                     residual=f.residual is not None)
        if isinstance(layer, BinaryConv2d):
            stride, padding = _check_supported(layer, f.name)
            packed = PackedConv2d.from_weight(layer.weight, stride, padding, **kinds)
            k = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
        else:
            packed = PackedLinear.from_weight(layer.weight, **kinds)
            k = layer.in_features
        epilogue = fold_epilogue(layer, f.bn_before, f.bn_after)  # float64
        if f.output_packed:
            ep = Epilogue(scale=epilogue[0], bias=epilogue[1], relu=f.relu, post_scale=epilogue[2],
                          post_bias=epilogue[3])
            thr = sign_thresholds(ep, epilogue.shape[1], k)
            packed.thresholds.copy_(torch.stack([thr.lo, thr.hi]))
        else:
            packed.epilogue.copy_(epilogue.float())
        if f.target == f.name:
            self.gm.delete_submodule(f.name)
        self.gm.add_submodule(f.target, packed)
        args = (f.node.args[0],) if f.residual is None else (f.node.args[0], f.residual)
        with self.gm.graph.inserting_after(f.end):
            new = self.gm.graph.call_module(f.target, args)
        f.end.replace_all_uses_with(new)
        for n in reversed([f.node, *f.chain]):
            self.gm.graph.erase_node(n)
        return new


class _reporting:
    """Turns an unexpected exception while fusing ``f`` into a :class:`PackError` naming it."""

    def __init__(self, f: _Fused | None, modules: dict[str, nn.Module], what: str = "fusing") -> None:
        self.f, self.modules, self.what = f, modules, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, tb) -> bool:
        if error is None or isinstance(error, PackError) or not isinstance(error, Exception):
            return False
        where = f"{self.f.name} ({self.f.pattern(self.modules)})" if self.f is not None else "the packed graph"
        raise PackError(f"{where}: {self.what} failed: {type(error).__name__}: {error}") from error


@torch.no_grad()
def pack(model: nn.Module, *, architecture: dict[str, Any] | None = None,
         input_shape: tuple[int, ...] | None = None, input_spec=None) -> PackedModel:
    """Pack a trained model for inference; ``model`` itself is not modified.

    Args:
        model: a model built from bnnkit binary layers and standard torch layers (a zoo model
            or your own), traceable by ``torch.fx``, taking one tensor. It is packed with
            eval-mode semantics.
        architecture: ``{"name": zoo_name, "kwargs": constructor_kwargs}`` of the zoo model it
            is, recorded in the artifact as provenance. Default: what
            :func:`bnnkit.models.create` recorded on the model (``model.zoo_architecture``),
            kept when the model still has that zoo model's tensors; an explicit one that does
            not describe the model is a ``ValueError``.
        input_shape: one input's shape without the batch dim. Default: from ``input_spec``,
            else the zoo's input shape of ``architecture``. With it, ``pack`` checks every
            residual add's shapes and fuses each add whose operands match; without it, only
            adds whose operands the graph proves equal in shape.
        input_spec: a :class:`bnnkit.inputs.InputSpec` (preprocessing, class names) that the
            artifact records for ``bnnkit predict``; ``None`` records none.

    Returns:
        a :class:`PackedModel` in eval mode, on CPU, float32.

    Raises:
        PackError: naming the module and the pattern it cannot pack.
    """
    from bnnkit.models import zoo_architecture

    explicit = architecture is not None
    if architecture is None:
        architecture = zoo_architecture(model)
        if architecture is not None and not _json_serializable(architecture):
            architecture = None  # e.g. a callable estimator: the artifact describes the graph instead
    if architecture is not None:
        problem = _zoo_mismatch(model, architecture)
        if problem is not None:
            if explicit:
                raise ValueError(problem)
            architecture = None
    if input_spec is not None and input_shape is not None and tuple(input_spec.shape) != tuple(input_shape):
        raise ValueError(f"input_spec describes inputs of shape {tuple(input_spec.shape)}, input_shape is "
                         f"{tuple(input_shape)}")
    if input_shape is None and input_spec is not None:
        input_shape = input_spec.shape
    packed = _pack(model, architecture=architecture, input_shape=input_shape)
    packed.input_spec = input_spec
    return packed


def _json_serializable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _zoo_mismatch(model: nn.Module, architecture: dict[str, Any]) -> str | None:
    """Why the zoo model ``architecture`` builds cannot stand for ``model`` (different tensor
    names or shapes; built on the meta device, so nothing is allocated), or ``None``."""
    from bnnkit.models import create

    from ..runtime.model import _check_architecture

    arch = _check_architecture(architecture)
    with torch.device("meta"):
        zoo_model = create(arch["name"], **arch["kwargs"])
    want = {k: tuple(v.shape) for k, v in zoo_model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if want != have:
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        return (f"architecture {architecture!r} does not describe this model: tensor(s) "
                f"{', '.join(diff[:5])}{'...' if len(diff) > 5 else ''} differ in name or shape; pass the "
                "zoo name and kwargs the model was created with, or architecture=None")
    return None


def _pack(model: nn.Module, *, architecture, input_shape) -> PackedModel:
    if not isinstance(model, nn.Module):
        raise TypeError(f"pack() takes an nn.Module, got {type(model).__name__}")
    if input_shape is None and architecture is not None:
        from bnnkit.models import model_info

        input_shape = model_info(architecture["name"]).input_shape
    source = copy.deepcopy(model).cpu().float().eval()
    fp32_bytes = sum(t.numel() * (4 if t.is_floating_point() else t.element_size())
                     for t in source.state_dict().values())
    try:
        graph = _Tracer().trace(source)
    except Exception as e:  # fx raises many types; name the model and the reason
        raise PackError(f"{type(model).__name__} cannot be traced by torch.fx for packing: {e}") from e
    gm = fx.GraphModule(source, graph, class_name=type(model).__name__)
    for name, module in gm.named_modules():  # refuse by name before anything runs
        if isinstance(module, BinaryLayer):
            _check_supported(module, name)
    shapes = propagate_shapes(gm, tuple(input_shape)) if input_shape is not None else None
    compiler = _Compiler(gm, shapes)
    with _reporting(None, compiler.modules, "collecting the binary layers"):
        compiler.collect()
        compiler.choose_packed_outputs()
    compiler.replace_all()
    layers = {name: m.encoding() for name, m in gm.named_modules() if isinstance(m, PackedLayer)}
    return PackedModel(gm, architecture=architecture, input_shape=input_shape, fp32_state_bytes=fp32_bytes,
                       layers=layers)
