"""The packed graph as data: a ``torch.fx.GraphModule`` <-> plain JSON (docs/format.md, "graph").

Loading a packed artifact never unpickles and never imports a name read from the file: the
graph is rebuilt from three allowlists, and nothing outside them can be named.

- :data:`MODULE_TYPES`: the module classes a graph may hold (standard ``torch.nn`` layers and
  the packed layers), each stored as its type name and constructor arguments, which are plain
  values (ints, floats, bools, strings, tuples of them);
- :data:`FUNCTIONS`: the functions a node may call (``operator``, ``torch`` and
  ``torch.nn.functional`` tensor functions), by the qualified name in this table;
- :data:`METHODS`: the tensor methods a node may call.

Node arguments are JSON values plus tagged objects: ``{"node": i}`` (the output of node i,
which must come earlier), ``{"tuple": [...]}``, ``{"slice": [start, stop, step]}``,
``{"ellipsis": true}``, ``{"float": "nan" | "inf" | "-inf"}``, ``{"dtype": "float16"}``,
``{"memory_format": "channels_last"}``. Module paths and placeholder names are checked
identifiers; strings reach the generated forward only as ``repr`` literals.

:func:`build_graph_module` first builds every module on the meta device and compares the
tensors it would hold with the artifact's tensor table, so a manifest cannot make the loader
allocate more than the tensor file holds.
"""

from __future__ import annotations

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

from .layers import PackedConv2d, PackedLinear

GRAPH_VERSION = 1
MAX_NODES = 100_000
MAX_DEPTH = 6

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
_RESERVED = frozenset(dir(fx.GraphModule)) | {"self"}
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
        return value if math.isfinite(value) else {"float": repr(value)}
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
                _get_attr(gm, node.target)
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
            entry["kwargs"] = {k: _encode(v, index, where) for k, v in node.kwargs.items()}
        index[node] = i
        nodes.append(entry)
    for path in modules:
        if path in attributes or any(a.startswith(path + ".") for a in attributes if attributes[a] == "constant"):
            raise GraphFormatError(f"get_attr targets overlap the module {path!r}")
    return {"version": GRAPH_VERSION, "modules": modules, "attributes": attributes, "nodes": nodes}, tensors


def _get_attr(root: nn.Module, target: str) -> Any:
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


# ---------------------------------------------------------------------------------------------
# JSON -> GraphModule


def _path(value: Any, where: str) -> str:
    """A module or attribute path: dot-separated identifiers or indices that do not shadow
    anything of ``nn.Module`` / ``fx.GraphModule``."""
    text = schema.string(value, where, max_len=512)
    for part in text.split("."):
        if not (part.isdigit() or (schema.IDENTIFIER.fullmatch(part) and not keyword.iskeyword(part)
                                   and part not in _RESERVED and not part.startswith("__"))):
            raise schema.fail(where, "a dotted module path of identifiers (not Python keywords or names of "
                                     "torch.nn.Module members)", value)
    return text


def _decode(value: Any, where: str, nodes: list[fx.Node] | None, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise ArtifactError(f"{where}: arguments nested more than {MAX_DEPTH} levels")
    if value is None or type(value) is bool:
        return value
    if type(value) is str:
        return schema.string(value, where, max_len=256)
    if type(value) is int:
        return schema.integer(value, where, -(2**62), 2**62)
    if type(value) is float:
        return schema.number(value, where)
    if type(value) is list:
        if len(value) > 4096:
            raise schema.fail(where, "a list of at most 4096 items", value)
        return [_decode(v, f"{where}[{i}]", nodes, depth + 1) for i, v in enumerate(value)]
    if type(value) is dict and len(value) == 1:
        (tag, inner), = value.items()
        if tag == "node" and nodes is not None:
            i = schema.integer(inner, f"{where}.node", 0, len(nodes) - 1) if nodes else None
            if i is None:
                raise ArtifactError(f"{where}: refers to a node before any node exists")
            return nodes[i]
        if tag == "tuple" and type(inner) is list:
            return tuple(_decode(inner, where, nodes, depth + 1))
        if tag == "slice" and type(inner) is list and len(inner) == 3:
            return slice(*(_decode(v, f"{where}.slice", nodes, depth + 1) for v in inner))
        if tag == "ellipsis" and inner is True:
            return Ellipsis
        if tag == "float" and inner in ("nan", "inf", "-inf"):
            return float(inner)
        if tag == "dtype" and inner in DTYPES:
            return DTYPES[inner]
        if tag == "memory_format" and inner in MEMORY_FORMATS:
            return MEMORY_FORMATS[inner]
    raise schema.fail(where, "a value of the packed format (JSON scalar, list, or one of the tagged objects "
                             "node/tuple/slice/ellipsis/float/dtype/memory_format)", value)


_NODE = schema.record({"op": lambda v, w: schema.string(v, w, ("placeholder", "call_module", "call_function",
                                                                "call_method", "get_attr", "output"))},
                      {"target": lambda v, w: schema.string(v, w, max_len=512),
                       "args": lambda v, w: v, "kwargs": lambda v, w: v})
_MODULE = schema.record({"type": lambda v, w: schema.string(v, w, tuple(MODULE_TYPES)),
                         "args": schema.dict_of(lambda v, w: v, max_len=64)})
_GRAPH = schema.record({"version": lambda v, w: schema.integer(v, w, GRAPH_VERSION, GRAPH_VERSION),
                        "modules": schema.dict_of(_MODULE, key=_path, max_len=MAX_NODES),
                        "attributes": schema.dict_of(lambda v, w: schema.string(v, w, ("parameter", "buffer",
                                                                                       "constant")),
                                                     key=_path, max_len=MAX_NODES),
                        "nodes": schema.list_of(_NODE, 2, MAX_NODES)})


def check_graph(graph: Any, where: str) -> dict[str, Any]:
    """The schema of a stored graph (types and names; the structure is checked when it is built)."""
    graph = _GRAPH(graph, where)
    paths = sorted([*graph["modules"], *graph["attributes"]])
    for a, b in zip(paths, paths[1:]):
        if b == a or b.startswith(a + "."):
            raise ArtifactError(f"{where}: the module or attribute path {b!r} lies inside {a!r}")
    return graph


def _construct(entry: dict[str, Any], path: str, where: str) -> nn.Module:
    cls = MODULE_TYPES[entry["type"]]
    kwargs = {k: _decode(v, f"{where} argument {k!r}", None) for k, v in entry["args"].items()}
    accepted = set(inspect.signature(cls.__init__).parameters) - _NOT_ARGUMENTS
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ArtifactError(f"{where}: {entry['type']} takes no argument(s) {', '.join(unknown)}")
    try:
        return cls(**kwargs)
    except Exception as e:  # the constructor's own check of its arguments
        raise ArtifactError(f"{where}: {entry['type']}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) "
                            f"cannot be built: {type(e).__name__}: {e}") from None


def expected_tensors(graph: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """The tensor table (name -> dtype, shape) the graph's modules hold, from building each on
    the meta device (no memory is allocated, whatever the arguments say), plus its attributes."""
    table: dict[str, dict[str, Any]] = {}
    with torch.device("meta"):
        for path, entry in graph["modules"].items():
            module = _construct(entry, path, f"{where}: module {path!r}")
            for name, t in module.state_dict().items():
                table[f"{path}.{name}"] = {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
    return table


def check_tensor_table(graph: dict[str, Any], table: dict[str, dict[str, Any]], where: str) -> None:
    """The artifact's tensor table must hold exactly what the graph's modules hold (names, dtypes
    and shapes), plus its stored attributes: checked before any tensor is allocated."""
    expected = expected_tensors(graph, where)
    stored_attrs = set(graph["attributes"])
    missing = sorted(set(expected) - set(table))
    unexpected = sorted(set(table) - set(expected) - stored_attrs)
    absent_attrs = sorted(stored_attrs - set(table))
    if missing or unexpected or absent_attrs:
        raise ArtifactError(f"{where}: the graph's modules and the tensor table disagree: missing tensor(s) "
                            f"{(missing + absent_attrs)[:5]}, unexpected tensor(s) {unexpected[:5]}")
    for name, want in expected.items():
        have = {"dtype": table[name]["dtype"], "shape": list(table[name]["shape"])}
        if have != want:
            module = name.rsplit(".", 1)[0]
            raise ArtifactError(f"{where}: module {module!r} as described ({graph['modules'][module]['type']} "
                                f"{graph['modules'][module]['args']}) holds {name!r} as {want}, the tensor file has "
                                f"{have}; the manifest was modified")


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


def build_graph_module(graph: dict[str, Any], tensors: dict[str, torch.Tensor], where: str) -> fx.GraphModule:
    """Rebuild the GraphModule described by ``graph`` (checked by :func:`check_graph` and
    :func:`check_tensor_table`) with ``tensors`` as its state; float32, CPU, eval mode."""
    root = nn.Module()
    with torch.random.fork_rng(devices=[]):  # default initializers must not move the caller's RNG
        for path, entry in graph["modules"].items():
            module = _construct(entry, path, f"{where}: module {path!r}")
            _set_path(root, path, lambda owner, leaf, m=module: owner.add_module(leaf, m))
    for path, kind in graph["attributes"].items():
        value = tensors[path]
        if kind == "parameter":
            _set_path(root, path, lambda o, leaf, v=value: o.register_parameter(leaf, nn.Parameter(v, False)))
        elif kind == "buffer":
            _set_path(root, path, lambda o, leaf, v=value: o.register_buffer(leaf, v))
        else:
            _set_path(root, path, lambda o, leaf, v=value: setattr(o, leaf, v))
    state = {k: v for k, v in tensors.items() if graph["attributes"].get(k) != "constant"}
    root.load_state_dict(state, strict=True)

    g = fx.Graph()
    built: list[fx.Node] = []
    outputs = 0
    for i, entry in enumerate(graph["nodes"]):
        w = f"{where}: node {i}"
        op = entry["op"]
        if (op == "placeholder") != (i < sum(1 for e in graph["nodes"] if e["op"] == "placeholder")):
            raise ArtifactError(f"{w}: placeholders must come first")
        args = _decode(entry.get("args", []), f"{w} args", built)
        kwargs_raw = entry.get("kwargs", {})
        if type(kwargs_raw) is not dict or type(args) is not list:
            raise ArtifactError(f"{w}: args must be a list and kwargs an object")
        kwargs = {schema.string(k, f"{w} kwargs key", max_len=64): _decode(v, f"{w} kwargs[{k!r}]", built)
                  for k, v in kwargs_raw.items()}
        target = entry.get("target")
        if op == "placeholder":
            name = schema.string(target, f"{w} target", max_len=64)
            if not schema.IDENTIFIER.fullmatch(name) or keyword.iskeyword(name) or name in _RESERVED:
                raise schema.fail(f"{w} target", "an identifier", name)
            node = g.placeholder(name, default_value=args[0] if args else inspect.Signature.empty)
        elif op == "call_module":
            path = _path(target, f"{w} target")
            if path not in graph["modules"]:
                raise ArtifactError(f"{w}: calls the module {path!r}, which the graph does not list")
            node = g.call_module(path, tuple(args), kwargs)
        elif op == "call_function":
            if target not in FUNCTIONS:
                raise ArtifactError(f"{w}: the function {target!r} is not one the packed format allows")
            if target == "getattr" and (len(args) != 2 or args[1] not in GETATTR_NAMES or kwargs):
                raise ArtifactError(f"{w}: getattr of {args[1:]!r}; only {sorted(GETATTR_NAMES)} is allowed")
            node = g.call_function(FUNCTIONS[target], tuple(args), kwargs)
        elif op == "call_method":
            if target not in METHODS:
                raise ArtifactError(f"{w}: the tensor method {target!r} is not one the packed format allows")
            if not args or not isinstance(args[0], fx.Node):
                raise ArtifactError(f"{w}: a method call needs a graph node as its first argument")
            node = g.call_method(target, tuple(args), kwargs)
        elif op == "get_attr":
            path = _path(target, f"{w} target")
            if path not in graph["attributes"]:
                raise ArtifactError(f"{w}: reads the attribute {path!r}, which the graph does not list")
            node = g.get_attr(path)
        else:  # output
            if len(args) != 1:
                raise ArtifactError(f"{w}: the output node takes one argument")
            node = g.output(args[0])
            outputs += 1
        built.append(node)
    if outputs != 1 or graph["nodes"][-1]["op"] != "output":
        raise ArtifactError(f"{where}: the graph must end with exactly one output node")
    try:
        g.lint()
        gm = fx.GraphModule(root, g, class_name="PackedGraph")
    except Exception as e:
        raise ArtifactError(f"{where}: the stored graph is inconsistent: {type(e).__name__}: {e}") from None
    return gm.eval()
