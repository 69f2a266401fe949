"""The packed graph as data: a ``torch.fx.GraphModule`` -> plain JSON -> a :class:`PackedGraph`
(docs/format.md, "graph").

Loading a packed artifact never unpickles, never imports a name read from the file and never
generates code: the node list is checked and executed by
:class:`~bnnkit.export.runtime.interpreter.PackedGraph`, with its callables taken from three
allowlists, so nothing outside them can be named:

- :data:`MODULE_TYPES`: the module classes a graph may hold (standard ``torch.nn`` layers and
  the packed layers), each stored as its type name and constructor arguments, which are plain
  values (ints, floats, bools, strings, tuples of them);
- :data:`FUNCTIONS`: the functions a node may call (``operator``, ``torch`` and
  ``torch.nn.functional`` tensor functions), by the qualified name in this table;
- :data:`METHODS`: the tensor methods a node may call.

Node arguments are JSON values plus tagged objects: ``{"node": i}`` (the output of node i,
which must come earlier), ``{"tuple": [...]}``, ``{"slice": [start, stop, step]}``,
``{"ellipsis": true}``, ``{"dtype": "float16"}``, ``{"memory_format": "channels_last"}``.
Every name in an identifier position (module and attribute paths, placeholder names, keyword
argument names) is checked against ``[A-Za-z_][A-Za-z0-9_]*`` and Python's keywords; strings
are only ever argument values. Every literal is bounded (:mod:`bnnkit.limits`), numbers are
finite, and a graph never writes in place (``out=`` is refused, ``inplace=True`` runs as
``False``).

:func:`check_graph_tensors` first builds the graph on the meta device and compares the
tensors it would hold with the artifact's tensor table, so a manifest cannot make the loader
allocate more than the tensor file holds, then runs it there on one input of the manifest's
``input_shape`` to bound what a forward pass allocates.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import keyword
import math
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from bnnkit import schema
from bnnkit.artifacts import ArtifactError

from .interpreter import PackedGraph, Program, Ref, Step, check_activation_bound, get_attr_path, last_uses
from .layers import PackedConv2d, PackedLinear

GRAPH_VERSION = 1
#: How deep a literal may nest, how many values one node's arguments may hold, how long a
#: string may be, and how many keyword arguments a node or module may take.
MAX_DEPTH = 6
MAX_LITERAL_VALUES = 256
MAX_STRING = 256
MAX_KWARGS = 64
#: Keyword arguments a loaded graph may not pass: ``out=`` writes into another tensor.
REFUSED_KWARGS = frozenset({"out"})

MODULE_TYPES: dict[str, type[nn.Module]] = {cls.__name__: cls for cls in (
    PackedConv2d, PackedLinear,
    nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm,
    nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.PReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.SiLU,
    nn.Identity, nn.Dropout, nn.Flatten, nn.Softmax, nn.LogSoftmax,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)}

FUNCTIONS: dict[str, Any] = {
    **{f"operator.{n}": getattr(operator, n) for n in (
        "add", "sub", "mul", "truediv", "floordiv", "neg", "getitem", "matmul")},
    **{f"torch.{n}": getattr(torch, n) for n in (
        "add", "sub", "mul", "div", "cat", "stack", "flatten", "reshape", "relu", "sigmoid", "tanh", "mean", "sum",
        "amax", "transpose", "permute", "squeeze", "unsqueeze", "clamp", "chunk", "split", "matmul", "abs", "neg")},
    **{f"torch.nn.functional.{n}": getattr(F, n) for n in (
        "relu", "relu6", "hardtanh", "leaky_relu", "gelu", "silu", "sigmoid", "tanh", "pad", "avg_pool2d",
        "max_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "dropout", "softmax", "log_softmax",
        "interpolate")},
    "getattr": getattr,  # only for the attribute "shape" (checked)
}
_FUNCTION_NAMES = {id(fn): name for name, fn in FUNCTIONS.items()}
METHODS = frozenset({
    "flatten", "view", "reshape", "mean", "sum", "amax", "relu", "size", "permute", "contiguous", "add", "sub",
    "mul", "div", "squeeze", "unsqueeze", "transpose", "chunk", "split", "float", "clamp", "sigmoid", "tanh",
    "softmax", "expand", "narrow", "abs", "neg",
})
GETATTR_NAMES = frozenset({"shape"})
DTYPES = {name: getattr(torch, name) for name in (
    "float32", "float16", "bfloat16", "float64", "int32", "int64", "int8", "uint8", "bool")}
MEMORY_FORMATS = {"contiguous_format": torch.contiguous_format, "channels_last": torch.channels_last,
                  "preserve_format": torch.preserve_format}
_RESERVED = frozenset(dir(fx.GraphModule)) | frozenset(dir(PackedGraph(Program(()), 0))) | {"self"}
_NOT_ARGUMENTS = {"self", "device", "dtype"}


class GraphFormatError(ValueError):
    """A graph cannot be described by the format (a module, function or value outside its lists)."""


# ---------------------------------------------------------------------------------------------
# GraphModule -> JSON


def _encode(value: Any, nodes: dict[fx.Node, int] | None, where: str) -> Any:
    if isinstance(value, fx.Node):
        if nodes is None or value not in nodes:
            raise GraphFormatError(f"{where}: refers to a node that is not earlier in the graph")
        return {"node": nodes[value]}
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, enum.Enum) and isinstance(value, str):  # the packed layers' kinds
        return value.value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise GraphFormatError(f"{where}: the value {value!r} is not finite; a packed artifact holds finite "
                                   "numbers only (a loader refuses NaN and infinite constants)")
        return value
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, nodes, where) for v in value]}
    if isinstance(value, list):
        return [_encode(v, nodes, where) for v in value]
    if isinstance(value, slice):
        return {"slice": [_encode(v, nodes, where) for v in (value.start, value.stop, value.step)]}
    if value is Ellipsis:
        return {"ellipsis": True}
    if isinstance(value, torch.dtype) and str(value).removeprefix("torch.") in DTYPES:
        return {"dtype": str(value).removeprefix("torch.")}
    for name, fmt in MEMORY_FORMATS.items():
        if value is fmt:
            return {"memory_format": name}
    raise GraphFormatError(f"{where}: the value {value!r} ({type(value).__name__}) has no form in the packed "
                           "format (numbers, strings, tuples, slices, dtypes and graph nodes have)")


def _module_arguments(module: nn.Module, path: str) -> dict[str, Any]:
    """The constructor arguments of an allowlisted module, read back from its attributes."""
    args = {}
    for name, param in inspect.signature(type(module).__init__).parameters.items():
        if name in _NOT_ARGUMENTS or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if name == "bias" and param.default is True:  # a layer's bias flag, stored as the tensor or None
            value = getattr(module, "bias", None) is not None
        elif not hasattr(module, name):
            continue  # an initial value (PReLU's init) that the stored tensors replace
        else:
            value = getattr(module, name)
        if isinstance(value, torch.Tensor):
            continue
        encoded = _encode(value, None, f"module {path!r} argument {name!r}")
        if param.default is not param.empty and _same_default(encoded, param.default):
            continue  # the constructor's default: keeps the manifest short
        args[name] = encoded
    return args


def _same_default(encoded: Any, default: Any) -> bool:
    try:
        return type(encoded) is type(_encode(default, None, "")) and encoded == _encode(default, None, "")
    except GraphFormatError:
        return False


def describe_graph_module(gm: fx.GraphModule) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(graph JSON, attribute tensors)`` of ``gm``: every module it calls with its type and
    constructor arguments, every node, and the tensors of ``get_attr`` nodes that are not part
    of a called module (to store beside the state dict; ``attributes`` records whether each
    is a parameter, a buffer or a plain constant). Raises :class:`GraphFormatError` naming a
    module type, function, method or value the format cannot hold."""
    modules: dict[str, Any] = {}
    attributes: dict[str, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    index: dict[fx.Node, int] = {}
    nodes: list[dict[str, Any]] = []
    state = dict(gm.named_parameters()) | dict(gm.named_buffers())
    for i, node in enumerate(gm.graph.nodes):
        where = f"node {node.name}"
        entry: dict[str, Any] = {"op": node.op}
        if node.op == "placeholder":
            entry["target"] = node.target
        elif node.op == "call_module":
            module = gm.get_submodule(node.target)
            type_name = type(module).__name__
            if MODULE_TYPES.get(type_name) is not type(module):
                raise GraphFormatError(f"{where}: module {node.target!r} of type {type(module).__qualname__} cannot be "
                                       f"stored in a packed artifact; supported module types: "
                                       f"{', '.join(sorted(MODULE_TYPES))}")
            if node.target not in modules:
                modules[node.target] = {"type": type_name, "args": _module_arguments(module, node.target)}
            entry["target"] = node.target
        elif node.op == "call_function":
            name = _FUNCTION_NAMES.get(id(node.target))
            if name is None:
                raise GraphFormatError(f"{where}: the function {getattr(node.target, '__module__', '?')}."
                                       f"{getattr(node.target, '__name__', node.target)} cannot be stored in a packed "
                                       f"artifact; supported: {', '.join(sorted(FUNCTIONS))}")
            if name == "getattr" and (len(node.args) != 2 or node.args[1] not in GETATTR_NAMES):
                raise GraphFormatError(f"{where}: getattr of {node.args[1:]!r}; only {sorted(GETATTR_NAMES)} can be stored")
            entry["target"] = name
        elif node.op == "call_method":
            if node.target not in METHODS:
                raise GraphFormatError(f"{where}: the tensor method {node.target!r} cannot be stored in a packed "
                                       f"artifact; supported: {', '.join(sorted(METHODS))}")
            entry["target"] = node.target
        elif node.op == "get_attr":
            value = gm.get_parameter(node.target) if node.target in dict(gm.named_parameters()) else \
                get_attr_path(gm, node.target)
            if not isinstance(value, torch.Tensor):
                raise GraphFormatError(f"{where}: get_attr {node.target!r} is a {type(value).__name__}, not a tensor")
            if not any(node.target.startswith(m + ".") for m in modules):
                kind = ("parameter" if isinstance(value, nn.Parameter) else "buffer") if node.target in state \
                    else "constant"
                attributes[node.target] = kind
                tensors[node.target] = value.detach()
            entry["target"] = node.target
        elif node.op != "output":
            raise GraphFormatError(f"{where}: node kind {node.op!r} is not supported")
        if node.args:
            entry["args"] = _encode(list(node.args), index, where)
        if node.kwargs:
            entry["kwargs"] = {_kwarg_name(k, where): _encode(v, index, where) for k, v in node.kwargs.items()}
        index[node] = i
        nodes.append(entry)
    for path in modules:
        if path in attributes or any(a.startswith(path + ".") for a in attributes if attributes[a] == "constant"):
            raise GraphFormatError(f"get_attr targets overlap the module {path!r}")
    return {"version": GRAPH_VERSION, "modules": modules, "attributes": attributes, "nodes": nodes}, tensors


def _kwarg_name(name: str, where: str) -> str:
    if not _is_identifier(name) or name in REFUSED_KWARGS:
        raise GraphFormatError(f"{where}: the keyword argument {name!r} cannot be stored (keyword names are "
                               f"identifiers other than {', '.join(sorted(REFUSED_KWARGS))})")
    return name


def describe_packed_graph(graph: PackedGraph) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """:func:`describe_graph_module` of a loaded graph: its modules as they are now (type and
    constructor arguments), its attributes and its program's nodes."""
    modules: dict[str, Any] = {}
    attributes: dict[str, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    params = dict(graph.named_parameters())
    buffers = dict(graph.named_buffers())
    nodes = []
    for i, step in enumerate(graph.program.steps):
        where = f"node {i}"
        entry: dict[str, Any] = {"op": step.op}
        if step.op == "call_module" and step.target not in modules:
            module = graph.get_submodule(step.target)
            modules[step.target] = {"type": type(module).__name__, "args": _module_arguments(module, step.target)}
        if step.op == "get_attr":
            value = get_attr_path(graph, step.target)
            attributes[step.target] = ("parameter" if step.target in params else "buffer" if step.target in buffers
                                       else "constant")
            tensors[step.target] = value.detach()
        if step.op == "call_function":
            entry["target"] = _FUNCTION_NAMES[id(step.fn)]
        elif step.op != "output":
            entry["target"] = step.target
        if step.args:
            entry["args"] = _encode_step_value(list(step.args), where)
        if step.kwargs:
            entry["kwargs"] = {k: _encode_step_value(v, where) for k, v in step.kwargs.items()}
        nodes.append(entry)
    return {"version": GRAPH_VERSION, "modules": modules, "attributes": attributes, "nodes": nodes}, tensors


def _encode_step_value(value: Any, where: str) -> Any:
    if isinstance(value, Ref):
        return {"node": value.index}
    if isinstance(value, tuple):
        return {"tuple": [_encode_step_value(v, where) for v in value]}
    if isinstance(value, list):
        return [_encode_step_value(v, where) for v in value]
    if isinstance(value, slice):
        return {"slice": [_encode_step_value(v, where) for v in (value.start, value.stop, value.step)]}
    return _encode(value, None, where)




# ---------------------------------------------------------------------------------------------
# JSON -> PackedGraph


def _is_identifier(name: Any, max_len: int = 64) -> bool:
    """An ASCII identifier that is not a Python keyword and not a dunder name."""
    return (type(name) is str and len(name) <= max_len and schema.IDENTIFIER.fullmatch(name) is not None
            and not keyword.iskeyword(name) and not name.startswith("__"))


def _path(value: Any, where: str) -> str:
    """A module or attribute path: dot-separated identifiers or (ASCII) indices that do not
    shadow anything of ``nn.Module`` / :class:`PackedGraph`."""
    text = schema.string(value, where, max_len=512)
    for part in text.split("."):
        if not ((part.isascii() and part.isdigit() and len(part) <= 9)
                or (_is_identifier(part) and part not in _RESERVED)):
            raise schema.fail(where, "a dotted module path of identifiers (not Python keywords or names of "
                                     "torch.nn.Module members)", value)
    return text


class _Budget:
    """How many more values a literal may hold."""

    def __init__(self, where: str, values: int = MAX_LITERAL_VALUES) -> None:
        self.where = where
        self.left = values

    def take(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise ArtifactError(f"{self.where}: arguments hold more than {MAX_LITERAL_VALUES} values")


def _decode(value: Any, where: str, nodes: int | None, budget: _Budget, depth: int = 0) -> Any:
    """A checked argument value; ``{"node": i}`` becomes :class:`Ref` (``i < nodes``)."""
    budget.take()
    if depth > MAX_DEPTH:
        raise ArtifactError(f"{where}: arguments nested more than {MAX_DEPTH} levels")
    t = type(value)
    if value is None or t is bool:
        return value
    if t is str:
        return schema.string(value, where, max_len=MAX_STRING)
    if t is int:
        return schema.integer(value, where, -(2**62), 2**62)
    if t is float:
        return schema.number(value, where)  # finite
    if t is list:
        return [_decode(v, f"{where}[{i}]", nodes, budget, depth + 1) for i, v in enumerate(value)]
    if t is dict and len(value) == 1:
        (tag, inner), = value.items()
        if tag == "node" and nodes is not None:
            if nodes == 0:
                raise ArtifactError(f"{where}: refers to a node before any node exists")
            return Ref(schema.integer(inner, f"{where}.node", 0, nodes - 1))
        if tag == "tuple" and type(inner) is list:
            return tuple(_decode(inner, where, nodes, budget, depth + 1))
        if tag == "slice" and type(inner) is list and len(inner) == 3:
            return slice(*(_decode(v, f"{where}.slice", nodes, budget, depth + 1) for v in inner))
        if tag == "ellipsis" and inner is True:
            return Ellipsis
        if tag == "dtype" and type(inner) is str and inner in DTYPES:
            return DTYPES[inner]
        if tag == "memory_format" and type(inner) is str and inner in MEMORY_FORMATS:
            return MEMORY_FORMATS[inner]
        if tag == "float":
            raise ArtifactError(f"{where}: non-finite constant {schema.show(inner)}; a packed graph holds finite "
                                "numbers only")
    raise schema.fail(where, "a value of the packed format (finite JSON number, string, bool, null, list, or one "
                             "of the tagged objects node/tuple/slice/ellipsis/dtype/memory_format)", value)


def _kwargs(raw: Any, where: str, nodes: int | None, budget: _Budget) -> dict[str, Any]:
    """Checked keyword arguments: identifier names (never ``out``), decoded values, and
    ``inplace`` always ``False`` (a loaded graph never writes in place)."""
    if type(raw) is not dict or len(raw) > MAX_KWARGS:
        raise schema.fail(where, f"an object of at most {MAX_KWARGS} keyword arguments", raw)
    out = {}
    for key, value in raw.items():
        if not _is_identifier(key) or key in REFUSED_KWARGS:
            raise schema.fail(f"{where} key", "an identifier (not a Python keyword, a dunder name or 'out')", key)
        out[key] = _decode(value, f"{where}[{key!r}]", nodes, budget, 1)
        if key == "inplace":
            if type(out[key]) is not bool:
                raise schema.fail(f"{where}['inplace']", "true or false", value)
            out[key] = False
    return out


def _max_nodes() -> int:
    from bnnkit.limits import limits

    return limits().graph_nodes


def _nodes(value: Any, where: str) -> list:
    limit = _max_nodes()
    if type(value) is not list or not 2 <= len(value) <= limit:
        raise schema.fail(where, f"a list of 2 to {limit:,} nodes (raise the bound for a graph you trust with "
                                 "BNNKIT_LIMITS=graph_nodes=N)", value)
    return [_NODE(v, f"{where}[{i}]") for i, v in enumerate(value)]


def _bounded_dict(check, key):
    return lambda v, w: schema.dict_of(check, key=key, max_len=_max_nodes())(v, w)


_NODE = schema.record({"op": lambda v, w: schema.string(v, w, ("placeholder", "call_module", "call_function",
                                                                "call_method", "get_attr", "output"))},
                      {"target": lambda v, w: schema.string(v, w, max_len=512),
                       "args": lambda v, w: schema.list_of(lambda x, _: x, 0, MAX_LITERAL_VALUES)(v, w),
                       "kwargs": lambda v, w: v})
_MODULE = schema.record({"type": lambda v, w: schema.string(v, w, tuple(MODULE_TYPES)),
                         "args": lambda v, w: v})
_GRAPH = schema.record({"version": lambda v, w: schema.integer(v, w, GRAPH_VERSION, GRAPH_VERSION),
                        "modules": _bounded_dict(_MODULE, _path),
                        "attributes": _bounded_dict(lambda v, w: schema.string(v, w, ("parameter", "buffer",
                                                                                     "constant")), _path),
                        "nodes": _nodes})


def check_graph(graph: Any, where: str) -> dict[str, Any]:
    """The schema of a stored graph (types, names, sizes); the nodes are checked by
    :func:`decode_program`, the modules by building them on the meta device."""
    graph = _GRAPH(graph, where)
    paths = sorted([*graph["modules"], *graph["attributes"]])
    for a, b in zip(paths, paths[1:]):
        if b == a or b.startswith(a + "."):
            raise ArtifactError(f"{where}: the module or attribute path {b!r} lies inside {a!r}")
    return graph


def decode_program(graph: dict[str, Any], where: str) -> Program:
    """The checked :class:`Program` of a stored graph (checked by :func:`check_graph`), in one
    pass over the nodes: every argument decoded within its bounds, every name checked,
    placeholders first, node references only backwards, one output at the end."""
    entries = graph["nodes"]
    placeholders = 0
    while placeholders < len(entries) and entries[placeholders]["op"] == "placeholder":
        placeholders += 1
    steps: list[Step] = []
    for i, entry in enumerate(entries):
        w = f"{where}: node {i}"
        op = entry["op"]
        if op == "placeholder" and i >= placeholders:
            raise ArtifactError(f"{w}: placeholders must come first")
        if (op == "output") != (i == len(entries) - 1):
            raise ArtifactError(f"{where}: the graph must end with exactly one output node (node {i} is {op})")
        budget = _Budget(w)
        args = tuple(_decode(entry.get("args", []), f"{w} args", i, budget))
        kwargs = _kwargs(entry.get("kwargs", {}), f"{w} kwargs", i, budget)
        target = entry.get("target")
        fn = None
        if op == "placeholder":
            if not _is_identifier(target) or target in _RESERVED:
                raise schema.fail(f"{w} target", "an identifier", target)
            if len(args) > 1 or kwargs or any(isinstance(r, Ref) for r in _flat(args)):
                raise ArtifactError(f"{w}: a placeholder takes at most one default value")
        elif op == "call_module":
            target = _path(target, f"{w} target")
            if target not in graph["modules"]:
                raise ArtifactError(f"{w}: calls the module {target!r}, which the graph does not list")
        elif op == "call_function":
            if type(target) is not str or target not in FUNCTIONS:
                raise ArtifactError(f"{w}: the function {schema.show(target)} is not one the packed format allows")
            if target == "getattr" and (len(args) != 2 or args[1] not in GETATTR_NAMES or kwargs):
                raise ArtifactError(f"{w}: getattr of {schema.show(list(args[1:]))}; only "
                                    f"{sorted(GETATTR_NAMES)} is allowed")
            fn = FUNCTIONS[target]
        elif op == "call_method":
            if type(target) is not str or target not in METHODS:
                raise ArtifactError(f"{w}: the tensor method {schema.show(target)} is not one the packed format "
                                    "allows")
            if not args or not isinstance(args[0], Ref):
                raise ArtifactError(f"{w}: a method call needs a graph node as its first argument")
        elif op == "get_attr":
            target = _path(target, f"{w} target")
            if target not in graph["attributes"]:
                raise ArtifactError(f"{w}: reads the attribute {target!r}, which the graph does not list")
            if args or kwargs:
                raise ArtifactError(f"{w}: get_attr takes no arguments")
        else:  # output
            if len(args) != 1 or kwargs:
                raise ArtifactError(f"{w}: the output node takes one argument")
            target = None
        steps.append(Step(op, target, fn, args, kwargs))
    frees = last_uses(steps)
    return Program(tuple(dataclasses.replace(s, free=f) for s, f in zip(steps, frees)))


def _flat(value: Any):
    if isinstance(value, (tuple, list)):
        for v in value:
            yield from _flat(v)
    else:
        yield value


def _ints(value: Any) -> tuple[int, ...] | None:
    if type(value) is int:
        return (value,)
    if isinstance(value, (tuple, list)) and all(type(v) is int for v in value):
        return tuple(value)
    return None


def _check_module_arguments(cls: type, kwargs: dict[str, Any], where: str) -> None:
    """Bounds a constructor does not check itself: a convolution pads at most what its kernel
    can reach (beyond that the padding only makes zeros, and a reference kernel that pads its
    input first would allocate it)."""
    if cls in (nn.Conv2d, PackedConv2d):
        kernel = _ints(kwargs.get("kernel_size"))
        padding = _ints(kwargs.get("padding", 0))
        dilation = _ints(kwargs.get("dilation", 1)) or (1,)
        if kernel and padding:
            reach = [d * (k - 1) for k, d in zip(kernel * (2 // len(kernel)), dilation * (2 // len(dilation)))]
            if any(p < 0 or p > r for p, r in zip(padding * (2 // len(padding)), reach)):
                raise ArtifactError(f"{where}: padding {list(padding)} reaches beyond the kernel ({reach}); a "
                                    "convolution pads at most dilation * (kernel_size - 1)")


def _construct(entry: dict[str, Any], path: str, where: str) -> nn.Module:
    cls = MODULE_TYPES[entry["type"]]
    kwargs = _kwargs(entry["args"], f"{where} args", None, _Budget(where))
    accepted = set(inspect.signature(cls.__init__).parameters) - _NOT_ARGUMENTS
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ArtifactError(f"{where}: {entry['type']} takes no argument(s) {', '.join(unknown)}")
    _check_module_arguments(cls, kwargs, where)
    try:
        return cls(**kwargs)
    except Exception as e:  # the constructor's own check of its arguments
        shown = ", ".join(f"{k}={schema.show(v)}" for k, v in kwargs.items())
        raise ArtifactError(f"{where}: {entry['type']}({shown}) cannot be built: {type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200] if str(e) else ''}") from None


def _empty(spec: dict[str, Any], device: str) -> torch.Tensor:
    return torch.empty(spec["shape"], dtype=DTYPES[spec["dtype"]], device=device)


def _graph_module(graph: dict[str, Any], program: Program, largest: int, where: str,
                  attribute: callable) -> PackedGraph:
    """A :class:`PackedGraph` of ``program`` holding ``graph``'s modules (built on the current
    default device) and its attributes (``attribute(path)`` makes each tensor)."""
    root = PackedGraph(program, largest)
    for path, entry in graph["modules"].items():
        module = _construct(entry, path, f"{where}: module {path!r}")
        _set_path(root, path, lambda owner, leaf, m=module: owner.add_module(leaf, m))
    for path, kind in graph["attributes"].items():
        value = attribute(path)
        if kind == "parameter":
            _set_path(root, path, lambda o, leaf, v=value: o.register_parameter(leaf, nn.Parameter(v, False)))
        elif kind == "buffer":
            _set_path(root, path, lambda o, leaf, v=value: o.register_buffer(leaf, v))
        else:
            _set_path(root, path, lambda o, leaf, v=value: setattr(o, leaf, v))
    return root.eval()


def largest_tensor_bytes(table: dict[str, dict[str, Any]]) -> int:
    """Bytes of the largest tensor of a tensor table (name -> dtype, shape)."""
    largest = 0
    for spec in table.values():
        n = torch.empty((), dtype=DTYPES[spec["dtype"]]).element_size()
        for d in spec["shape"]:
            n *= d
        largest = max(largest, n)
    return largest


@dataclasses.dataclass
class CheckedGraph:
    """What :func:`check_graph_tensors` established: the program and the graph on the meta
    device (its modules' tensors match the tensor table)."""

    program: Program
    meta: PackedGraph
    largest_tensor_bytes: int


def check_graph_tensors(graph: dict[str, Any], table: dict[str, dict[str, Any]], where: str,
                        input_shape: tuple[int, ...] | None = None) -> CheckedGraph:
    """Everything about a stored graph that can be checked without its tensors' values: the
    program (:func:`decode_program`); the graph built on the meta device (no memory is
    allocated, whatever the arguments say), whose tensors must be exactly the tensor table's
    (names, dtypes, shapes; checked before any tensor is allocated); and, given the input
    shape, one forward pass on the meta device for a batch of 1, which must succeed and stay
    within the activation bound of :mod:`bnnkit.limits`."""
    from bnnkit.limits import limits

    program = decode_program(graph, where)
    stored_attrs = graph["attributes"]
    for path in stored_attrs:
        if path not in table:
            raise ArtifactError(f"{where}: the graph's attribute {path!r} is not in the tensor table")
    largest = largest_tensor_bytes(table)
    with torch.device("meta"):
        meta = _graph_module(graph, program, largest, where, lambda p: _empty(table[p], "meta"))
    expected = {}
    for path in graph["modules"]:
        for name, t in meta.get_submodule(path).state_dict().items():
            expected[f"{path}.{name}"] = {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
    missing = sorted(set(expected) - set(table))
    unexpected = sorted(set(table) - set(expected) - set(stored_attrs))
    if missing or unexpected:
        raise ArtifactError(f"{where}: the graph's modules and the tensor table disagree: missing tensor(s) "
                            f"{missing[:5]}, unexpected tensor(s) {unexpected[:5]}")
    for name, want in expected.items():
        have = {"dtype": table[name]["dtype"], "shape": list(table[name]["shape"])}
        if have != want:
            module = name.rsplit(".", 1)[0]
            raise ArtifactError(f"{where}: module {module!r} as described ({graph['modules'][module]['type']} "
                                f"{schema.show(graph['modules'][module]['args'])}) holds {name!r} as {want}, the "
                                f"tensor file has {have}; the manifest was modified")
    if input_shape is not None:
        check_activation_bound(meta, [torch.empty((1, *input_shape), device="meta")], limits(), largest,
                               f"{where}: the graph")
    return CheckedGraph(program, meta, largest)


def check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Refuse a floating-point tensor holding NaN or an infinity (an epilogue, a weight)."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ArtifactError(f"{where}: tensor {name!r} holds NaN or infinite values; refused")


def _set_path(root: nn.Module, path: str, make) -> None:
    *parents, leaf = path.split(".")
    owner = root
    for part in parents:
        child = owner._modules.get(part)
        if child is None:
            child = nn.Module()
            owner.add_module(part, child)
        owner = child
    make(owner, leaf)


def build_graph_module(graph: dict[str, Any], checked: CheckedGraph, tensors: dict[str, torch.Tensor],
                       where: str) -> PackedGraph:
    """The :class:`PackedGraph` of ``graph`` (checked by :func:`check_graph_tensors`, which
    gave ``checked``) with ``tensors`` as its state; float32, CPU, eval mode. Its forward
    passes are bounded through ``checked.meta``."""
    with torch.random.fork_rng(devices=[]):  # default initializers must not move the caller's RNG
        root = _graph_module(graph, checked.program, checked.largest_tensor_bytes, where, lambda p: tensors[p])
    state = {k: v for k, v in tensors.items() if graph["attributes"].get(k) != "constant"}
    root.load_state_dict(state, strict=True)
    root.set_meta_twin(checked.meta)
    return root.eval()
