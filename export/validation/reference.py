"""The reference of validation: the trained model evaluated in float64, and its near-ties.

Every runtime computes in float32 in its own order. Where a binary layer's input lies within
float32 rounding of zero, a runtime may binarize it the other way than the trained model
and change the output by a lot: a flip at a near-tie, which says nothing about the export.
The float64 evaluation is far from such ties (the packed sign thresholds are derived in
float64 too), so validation compares with it. Its binary layers compute ``alpha *
conv(binarize(x), binarize(w)) + bias`` (the trained forward with alpha taken out of the
sum): the sum of ±1 terms is an exact integer, as in the packed kernels, so an accumulator
that cancels is exactly 0 and not a rounding residue. Then:

- a *near-tie* of a sample is a binarization input (the input of a binary layer that
  binarizes it) that is not 0 and whose magnitude is at most :data:`NEAR_TIE_MARGIN` times
  the largest magnitude of that layer input in that sample (its *margin*). Exact zeros are
  not ties: ``0 -> +1`` is the rule every runtime must follow.
- a disagreement on a sample is *explained* when taking one or two of its
  :data:`MAX_TIES` closest near-ties the other way (their sign flipped, in float64) gives
  the runtime's output within the tolerance (same top-1). Anything else is a real
  disagreement.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools

import torch
import torch.nn.functional as F
from torch import nn

from bnnkit.kernels.binarize import binarize_reference
from bnnkit.kernels.weight_binarize import weight_scale_reference
from bnnkit.nn.layers import BinaryConv2d, BinaryLayer, BinaryLinear

#: a binarization input within this fraction of its layer input's largest |value| is a near-tie
NEAR_TIE_MARGIN = 1e-5
#: the near-ties per sample (the closest ones) an explanation may flip
MAX_TIES = 8


@dataclasses.dataclass(frozen=True)
class NearTie:
    """One binarization input of one sample close to zero. ``layer``: the binary layer's module
    path (``#k`` appended for its k-th call in one forward, k >= 2); ``index``: flat index in
    that sample's layer input; ``margin``: ``|x| / max |x|`` over that layer input."""

    layer: str
    index: int
    margin: float


@dataclasses.dataclass(frozen=True)
class TieFlip:
    """A sample on which a runtime differs from the float64 model because it binarized the
    near-tie(s) ``ties`` the other way. ``rel_diff``: the sample's relative difference."""

    sample: int
    rel_diff: float
    ties: tuple[NearTie, ...]

    def to_json(self) -> dict:
        return {"sample": self.sample, "rel_diff": self.rel_diff,
                "ties": [dataclasses.asdict(t) for t in self.ties]}

    def describe(self) -> str:
        ties = ", ".join(f"{t.layer} input {t.index} (margin {t.margin:.2g})" for t in self.ties)
        return f"sample {self.sample} (relative difference {self.rel_diff:.3g}) flips at {ties}"


def _exact_binary_forward(layer: BinaryConv2d | BinaryLinear, x: torch.Tensor) -> torch.Tensor:
    """``alpha * op(binarize(x), binarize(w)) + bias``: the layer's forward with the weight
    scale applied after the (exact, for binary inputs) sum."""
    xb = layer.quantized_input(x)
    wb = binarize_reference(layer.weight)
    alpha = weight_scale_reference(layer.weight, layer.scale)
    if isinstance(layer, BinaryConv2d):
        y = layer._conv_forward(xb, wb, None)
        shape = (1, -1, 1, 1)
    else:
        y = F.linear(xb, wb)
        shape = (-1,)
    if alpha is not None:
        y = y * alpha.reshape(shape if alpha.dim() else ())
    if layer.bias is not None:
        y = y + layer.bias.reshape(shape)
    return y


def _exact_binary_layers(model: nn.Module) -> None:
    """Give the plain BinaryConv2d / BinaryLinear layers of ``model`` the exact-sum forward."""
    for m in model.modules():
        if type(m).forward in (BinaryConv2d.forward, BinaryLinear.forward) and \
                type(m).quantized_weight is BinaryLayer.quantized_weight:
            m.forward = functools.partial(_exact_binary_forward, m)


class _TieHooks:
    """Forward pre-hooks on the binarizing layers: record near-ties, or flip chosen inputs."""

    def __init__(self, model: nn.Module, margin: float) -> None:
        self.margin = margin
        self.layers = [(name, m) for name, m in model.named_modules()
                       if isinstance(m, BinaryLayer) and m.input_estimator is not None]
        self.calls: dict[str, int] = {}
        self.found: list[list[NearTie]] | None = None  # per sample of the batch, when recording
        self.flips: dict[str, list[tuple[int, int]]] = {}  # layer -> (row, flat index) to flip
        self.handles = [m.register_forward_pre_hook(self._hook(name)) for name, m in self.layers]

    def start(self, batch: int, record: bool, flips: dict[str, list[tuple[int, int]]] | None = None) -> None:
        self.calls = {}
        self.found = [[] for _ in range(batch)] if record else None
        self.flips = flips or {}

    def _hook(self, name: str):
        def hook(module, args):
            n = self.calls[name] = self.calls.get(name, 0) + 1
            key = name if n == 1 else f"{name}#{n}"
            x = args[0]
            if self.found is not None:
                self._record(key, x)
            if self.flips.get(key):
                x = x.clone(memory_format=torch.contiguous_format)
                flat = x.view(x.shape[0], -1)
                rows, idx = zip(*self.flips[key])
                rows, idx = torch.tensor(rows, device=x.device), torch.tensor(idx, device=x.device)
                flat[rows, idx] = -flat[rows, idx]
                return (x, *args[1:])
            return None

        return hook

    def _record(self, key: str, x: torch.Tensor) -> None:
        flat = x.detach().reshape(x.shape[0], -1).abs()
        scale = flat.amax(dim=1, keepdim=True)
        margin = flat / scale.clamp_min(torch.finfo(flat.dtype).tiny)
        near = (flat > 0) & (margin <= self.margin)
        if not bool(near.any()):
            return
        margin = margin.masked_fill(~near, float("inf"))
        k = min(MAX_TIES, margin.shape[1])
        values, index = margin.topk(k, dim=1, largest=False)
        for row in torch.nonzero(near.any(dim=1)).flatten().tolist():
            for v, i in zip(values[row].tolist(), index[row].tolist()):
                if v != float("inf"):
                    self.found[row].append(NearTie(key, int(i), float(v)))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class Float64Reference:
    """The trained model in eval mode and float64 (on CUDA when available, else CPU), with the
    near-ties of each sample it ran: ``run(x)`` -> float64 outputs; :attr:`ties` per sample."""

    name = "trained"

    def __init__(self, model: nn.Module, margin: float = NEAR_TIE_MARGIN) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = copy.deepcopy(model).to(self.device, torch.float64).eval()
        _exact_binary_layers(self.model)
        self.detail = "PyTorch eager, eval mode, float64, binary layers as alpha * (exact sum of ±1)"
        self.margin = margin
        self._hooks = _TieHooks(self.model, margin)
        self.ties: list[list[NearTie]] = []
        self._batches: list[torch.Tensor] = []

    @torch.no_grad()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs of the float64 model for ``x`` (recorded with the batch's near-ties)."""
        self._hooks.start(len(x), record=True)
        out = self.model(x.to(self.device, torch.float64)).cpu()
        found = self._hooks.found
        self.ties += [sorted(t, key=lambda tie: tie.margin)[:MAX_TIES] for t in found]
        self._batches.append(x.detach().cpu())
        return out

    def _input(self, sample: int) -> torch.Tensor:
        for batch in self._batches:
            if sample < len(batch):
                return batch[sample]
            sample -= len(batch)
        raise IndexError("sample index beyond the inputs the reference ran")

    @torch.no_grad()
    def explain(self, sample: int, candidate: torch.Tensor, reference: torch.Tensor, scale: float,
                tolerance: float) -> TieFlip | None:
        """The near-tie flip that turns the float64 output of ``sample`` into ``candidate``
        (its output from another runtime, ``(...)``), or ``None`` when none does."""
        ties = self.ties[sample]
        if not ties:
            return None
        choices = [(t,) for t in ties] + list(itertools.combinations(ties, 2))
        x = self._input(sample)
        flips: dict[str, list[tuple[int, int]]] = {}
        for row, chosen in enumerate(choices):
            for tie in chosen:
                flips.setdefault(tie.layer, []).append((row, tie.index))
        batch = x.unsqueeze(0).expand(len(choices), *x.shape).to(self.device, torch.float64)
        self._hooks.start(len(choices), record=False, flips=flips)
        try:
            outs = self.model(batch).cpu()
        finally:
            self._hooks.start(0, record=False)
        cand = candidate.double()
        diff = (outs - cand).abs().nan_to_num(nan=float("inf")).reshape(len(choices), -1).amax(dim=1)
        ok = diff <= tolerance * scale
        if outs.dim() >= 2:  # per-sample outputs with a class dim: the top-1 must match too
            ok &= outs.argmax(dim=-1).reshape(len(choices), -1).eq(cand.argmax(dim=-1).reshape(1, -1)).all(dim=1)
        if not bool(ok.any()):
            return None
        best = int(torch.nonzero(ok)[0, 0])
        rel = float((cand - reference.double()).abs().max()) / scale
        return TieFlip(sample, rel, tuple(choices[best]))
