"""The loaded packed graph: an ``nn.Module`` that executes a checked node list, no code generated.

:func:`~bnnkit.export.runtime.graph_format.decode_program` turns a manifest's ``graph`` into
a :class:`Program`: steps whose callables come from fixed tables and whose arguments are
values (node references are :class:`Ref` objects). :class:`PackedGraph` runs it the way
``torch.fx.Interpreter`` runs a graph: one Python call per step, keyword arguments passed as
a dict. No string of the file is ever compiled, formatted into source or used as a name
outside the checked module paths, so a string can only be a wrong value.

What a forward may allocate is bounded (:mod:`bnnkit.limits`): before the first real batch
of each input shape the program runs on the meta device (shapes only, no memory) and is
refused when the tensors it keeps alive at once would exceed
:meth:`~bnnkit.limits.Limits.activation_bytes`; Python integers and sequences a step makes
are bounded too (an ``int`` squared forty times or a tuple times 10**12 is refused, not
computed).
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bnnkit.errors import ArtifactError

#: Largest Python sequence (tuple, list, string) a step may produce or a literal may hold.
MAX_SEQUENCE = 4096
#: Largest magnitude of a Python integer a step may produce.
MAX_INT = 2**63


class GraphRunError(ArtifactError):
    """A step of a packed graph failed or went past a bound; names the node."""


@dataclasses.dataclass(frozen=True)
class Ref:
    """The output of node ``index`` (an earlier node)."""

    index: int


@dataclasses.dataclass(frozen=True)
class Step:
    """One node: ``op`` (placeholder, get_attr, call_module, call_function, call_method,
    output), ``target`` (the checked name in the manifest), ``fn`` (the callable of a
    call_function), ``args`` / ``kwargs`` (values with :class:`Ref` for node outputs) and
    ``free``: the nodes whose last use is this one (their outputs are dropped after it)."""

    op: str
    target: str | None
    fn: Callable | None
    args: tuple
    kwargs: dict[str, Any]
    free: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class Program:
    steps: tuple[Step, ...]

    @property
    def placeholders(self) -> list[Step]:
        return [s for s in self.steps if s.op == "placeholder"]


def last_uses(steps: list[Step]) -> list[tuple[int, ...]]:
    """Per step, the earlier nodes it is the last user of (one pass over the arguments)."""
    last: dict[int, int] = {}
    for i, step in enumerate(steps):
        for ref in _refs((step.args, step.kwargs)):
            last[ref] = i
    frees: list[list[int]] = [[] for _ in steps]
    for node, user in last.items():
        frees[user].append(node)
    for i, step in enumerate(steps):  # a node nobody uses is dropped right away
        if step.op != "output" and i not in last:
            frees[i].append(i)
    return [tuple(f) for f in frees]


def _refs(value: Any):
    t = type(value)
    if t is Ref:
        yield value.index
    elif t in (tuple, list):
        for v in value:
            yield from _refs(v)
    elif t is dict:
        for v in value.values():
            yield from _refs(v)
    elif t is slice:
        yield from _refs((value.start, value.stop, value.step))


def _resolve(value: Any, env: list) -> Any:
    """``value`` with every :class:`Ref` replaced by that node's output; containers are rebuilt,
    so no call can change a literal for the next one."""
    t = type(value)
    if t is Ref:
        return env[value.index]
    if t is tuple:
        return tuple(_resolve(v, env) for v in value)
    if t is list:
        return [_resolve(v, env) for v in value]
    if t is dict:
        return {k: _resolve(v, env) for k, v in value.items()}
    if t is slice:
        return slice(_resolve(value.start, env), _resolve(value.stop, env), _resolve(value.step, env))
    return value


_SEQUENCES = (tuple, list, str, torch.Size)


def _check_operands(fn: Callable, args: tuple) -> None:
    """Refuse before it runs a step whose result would be a huge Python sequence."""
    if fn is operator.mul and len(args) == 2:
        seq, count = (args[0], args[1]) if isinstance(args[0], _SEQUENCES) else (args[1], args[0])
        if isinstance(seq, _SEQUENCES) and type(count) is int and count * len(seq) > MAX_SEQUENCE:
            raise GraphRunError(f"repeats a sequence of {len(seq)} items {count} times (at most {MAX_SEQUENCE} items)")


def _check_result(value: Any) -> None:
    t = type(value)
    if t is int and not -MAX_INT <= value <= MAX_INT:
        raise GraphRunError(f"makes the integer {value.bit_length()} bits long (at most 64)")
    if t in _SEQUENCES and len(value) > MAX_SEQUENCE:
        raise GraphRunError(f"makes a {t.__name__} of {len(value)} items (at most {MAX_SEQUENCE})")


def tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in ``value`` (a tensor, or a tuple / list of them), counted by
    element: a view counts as much as a copy (an ``expand`` is as large as its ``contiguous``)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(tensor_bytes(v) for v in value)
    return 0


class PackedGraph(nn.Module):
    """The packed graph of a loaded artifact: its modules and attributes as usual submodules
    and tensors, and the :class:`Program` that :meth:`forward` executes step by step.

    ``input_bytes`` / ``largest_tensor_bytes`` (per sample, and of the largest stored
    tensor) set the activation bound of :meth:`~bnnkit.limits.Limits.activation_bytes`;
    ``meta_twin`` is the same graph on the meta device, which every new input shape is
    first run through (it is not a submodule: ``.to()`` leaves it on the meta device)."""

    def __init__(self, program: Program, largest_tensor_bytes: int) -> None:
        super().__init__()
        self._program = program
        self._largest_tensor_bytes = int(largest_tensor_bytes)
        self._meta_twin: list[PackedGraph] = []  # in a list: not registered as a submodule
        self._checked: set[tuple] = set()

    @property
    def program(self) -> Program:
        return self._program

    def set_meta_twin(self, twin: PackedGraph) -> None:
        self._meta_twin[:] = [twin]

    # --- running ------------------------------------------------------------------------
    def forward(self, *inputs: Any) -> Any:
        if self._meta_twin and not torch.compiler.is_compiling():
            self.check_memory(inputs)
        return self.run(inputs)

    def run(self, inputs: tuple, observe: Callable[[int, Any], None] | None = None) -> Any:
        """Execute the program on ``inputs``; ``observe(i, output)`` after each step."""
        steps = self._program.steps
        env: list[Any] = [None] * len(steps)
        k = 0
        for i, step in enumerate(steps):
            op = step.op
            try:
                if op == "placeholder":
                    if k < len(inputs):
                        value = inputs[k]
                    elif step.args:
                        value = step.args[0]
                    else:
                        raise GraphRunError(f"the graph takes {len(self._program.placeholders)} input(s), got "
                                            f"{len(inputs)}")
                    k += 1
                elif op == "output":
                    if k < len(inputs):
                        raise GraphRunError(f"the graph takes {k} input(s), got {len(inputs)}")
                    return _resolve(step.args[0], env)
                else:
                    args, kwargs = _resolve(step.args, env), _resolve(step.kwargs, env)
                    if op == "call_module":
                        value = self.get_submodule(step.target)(*args, **kwargs)
                    elif op == "call_function":
                        _check_operands(step.fn, args)
                        value = step.fn(*args, **kwargs)
                    elif op == "call_method":
                        if not isinstance(args[0], torch.Tensor):
                            raise GraphRunError(f"calls the tensor method {step.target!r} on a "
                                                f"{type(args[0]).__name__}")
                        value = getattr(args[0], step.target)(*args[1:], **kwargs)
                    else:  # get_attr
                        value = get_attr_path(self, step.target)
                _check_result(value)
            except GraphRunError as e:
                raise GraphRunError(f"packed graph node {i} ({op} {step.target}): {e}") from None
            except Exception as e:  # the op's own check of its arguments, on a crafted or mismatched graph
                reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise GraphRunError(f"packed graph node {i} ({op} {step.target}) failed: {type(e).__name__}"
                                    f"{': ' + reason[:300] if reason else ''}") from None
            env[i] = value
            if observe is not None:
                observe(i, value)
            for j in step.free:
                env[j] = None
        raise GraphRunError("the packed graph has no output node")

    # --- the memory bound ----------------------------------------------------------------
    def peak_bytes(self, inputs: tuple) -> int:
        """The most bytes of tensors this graph holds alive at once on ``inputs`` (meta
        tensors: nothing is computed), counting the inputs."""
        live: dict[int, int] = {}
        total = peak = sum(tensor_bytes(x) for x in inputs)
        frees = [step.free for step in self._program.steps]

        def observe(i: int, value: Any) -> None:
            nonlocal total, peak
            live[i] = tensor_bytes(value)
            total += live[i]
            peak = max(peak, total)
            for j in frees[i]:
                total -= live.pop(j, 0)

        self.run(inputs, observe)
        return peak

    def check_memory(self, inputs: tuple) -> None:
        """Refuse ``inputs`` when running the graph on them would hold more tensor bytes at once
        than the bound of :mod:`bnnkit.limits` allows; each input shape is checked once (on
        the meta device, so the check allocates nothing)."""
        if not self._meta_twin or not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
            return
        if any(x.device.type == "meta" for x in inputs):
            return
        from bnnkit.limits import limits

        bound = limits()
        key = (tuple((tuple(x.shape), x.dtype) for x in inputs), bound)
        if key in self._checked:
            return
        check_activation_bound(self._meta_twin[0], [torch.empty(x.shape, dtype=x.dtype, device="meta")
                                                    for x in inputs], bound, self._largest_tensor_bytes)
        self._checked.add(key)


def check_activation_bound(meta_graph: PackedGraph, meta_inputs: list[torch.Tensor], bound,
                           largest_tensor_bytes: int, where: str = "the packed graph") -> int:
    """Run ``meta_graph`` on ``meta_inputs``; raise :class:`GraphRunError` when the tensors it
    holds alive at once exceed ``bound.activation_bytes(...)``. Returns the peak bytes."""
    batch = int(meta_inputs[0].shape[0]) if meta_inputs and meta_inputs[0].dim() else 1
    per_sample = sum(tensor_bytes(x) for x in meta_inputs) // max(batch, 1)
    allowed = bound.activation_bytes(batch, per_sample, largest_tensor_bytes)
    peak = meta_graph.peak_bytes(tuple(meta_inputs))
    if peak > allowed:
        shapes = ", ".join(str(list(x.shape)) for x in meta_inputs)
        raise GraphRunError(f"{where} would hold {peak:,} bytes of tensors at once on inputs of shape {shapes}; "
                            f"the bound is {allowed:,} (BNNKIT_LIMITS activation_factor="
                            f"{bound.activation_factor:g} times the batch's input plus the largest stored tensor, "
                            f"plus activation_floor_bytes={bound.activation_floor_bytes:,}); raise it for a model "
                            "you trust with BNNKIT_LIMITS=activation_factor=N")
    return peak


def get_attr_path(root: nn.Module, target: str) -> Any:
    """``root.a.b.c`` for ``target`` ``"a.b.c"`` (a checked path)."""
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
