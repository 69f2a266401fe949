"""A per-layer model summary in the spirit of larq's: precision, parameters, packed memory, MACs.

Packed memory counts 1 bit per binary weight and 32 bits per full-precision parameter
(BatchNorm running statistics are buffers and are folded into the epilogue on export, so
they are not counted, as larq does not count them). The fp32-equivalent size counts every
parameter at 32 bits; the compression ratio is their quotient.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from bnnkit.nn.layers import BinaryLayer


@dataclasses.dataclass
class LayerRow:
    name: str
    kind: str
    input_bits: int | None
    weight_bits: int | None
    output_shape: tuple[int, ...]
    params: int
    binary_params: int
    memory_bytes: float
    binary_macs: int
    fp_macs: int


@dataclasses.dataclass
class ModelSummary:
    rows: list[LayerRow]
    input_shape: tuple[int, ...]

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def binary_params(self) -> int:
        return sum(r.binary_params for r in self.rows)

    @property
    def packed_bytes(self) -> float:
        return sum(r.memory_bytes for r in self.rows)

    @property
    def fp32_bytes(self) -> int:
        return 4 * self.params

    @property
    def compression(self) -> float:
        return self.fp32_bytes / self.packed_bytes if self.packed_bytes else float("nan")

    @property
    def binary_macs(self) -> int:
        return sum(r.binary_macs for r in self.rows)

    @property
    def fp_macs(self) -> int:
        return sum(r.fp_macs for r in self.rows)

    def to_json(self) -> dict[str, Any]:
        return {
            "input_shape": list(self.input_shape),
            "layers": [dataclasses.asdict(r) for r in self.rows],
            "totals": {"params": self.params, "binary_params": self.binary_params,
                       "packed_bytes": self.packed_bytes, "fp32_bytes": self.fp32_bytes,
                       "compression": self.compression, "binary_macs": self.binary_macs, "fp_macs": self.fp_macs},
        }

    def to_text(self) -> str:
        header = ("layer", "type", "in bits", "w bits", "output", "params", "1-bit", "memory", "MACs 1-bit", "MACs fp")
        lines = [header]
        for r in self.rows:
            lines.append((r.name, r.kind, _bits(r.input_bits), _bits(r.weight_bits), "x".join(map(str, r.output_shape)),
                          f"{r.params:,}", f"{r.binary_params:,}", _size(r.memory_bytes), _count(r.binary_macs),
                          _count(r.fp_macs)))
        lines.append(("total", "", "", "", "", f"{self.params:,}", f"{self.binary_params:,}", _size(self.packed_bytes),
                      _count(self.binary_macs), _count(self.fp_macs)))
        widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
        fmt = lambda row: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        out = [fmt(lines[0]), "-" * len(fmt(lines[0]))] + [fmt(r) for r in lines[1:-1]]
        out += ["-" * len(fmt(lines[0])), fmt(lines[-1])]
        out.append(f"packed size {_size(self.packed_bytes)} vs fp32 {_size(self.fp32_bytes)}: "
                   f"{self.compression:.1f}x smaller; {self.binary_params / max(self.params, 1):.1%} of parameters "
                   f"and {self.binary_macs / max(self.binary_macs + self.fp_macs, 1):.1%} of MACs are binary "
                   f"(input {'x'.join(map(str, self.input_shape))}, batch 1)")
        return "\n".join(out)


def _bits(b: int | None) -> str:
    return "-" if b is None else str(b)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return ""


def _count(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def _macs(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return out.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    return 0


@torch.no_grad()
def summarize(model: nn.Module, input_shape: tuple[int, ...]) -> ModelSummary:
    """Summarize ``model`` on one input of ``input_shape`` (without the batch dim), in eval mode.

    Lists the leaf modules that hold parameters or do multiply-accumulates, in call order.
    """
    rows: list[LayerRow] = []
    handles = []
    was_training = model.training
    model.eval()

    def hook(name: str):
        def record(module: nn.Module, inputs, output) -> None:
            if not isinstance(output, torch.Tensor):
                return
            params = sum(p.numel() for p in module.parameters(recurse=False))
            macs = _macs(module, output)
            if not params and not macs:
                return
            binary = isinstance(module, BinaryLayer)
            w = getattr(module, "weight", None)
            binary_params = w.numel() if binary and w is not None else 0
            is_matmul = isinstance(module, (nn.Conv2d, nn.Linear))
            input_bits = (1 if binary and module.binary_input else 32) if is_matmul else None
            weight_bits = (1 if binary else 32) if is_matmul else None
            both_binary = binary and module.binary_input
            rows.append(LayerRow(
                name=name, kind=type(module).__name__, input_bits=input_bits, weight_bits=weight_bits,
                output_shape=tuple(output.shape[1:]), params=params, binary_params=binary_params,
                memory_bytes=binary_params / 8 + 4 * (params - binary_params),
                binary_macs=macs if both_binary else 0, fp_macs=0 if both_binary else macs,
            ))

        return record

    for name, module in model.named_modules():
        if not list(module.children()):
            handles.append(module.register_forward_hook(hook(name)))
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        try:
            model(torch.zeros(1, *input_shape, device=device, dtype=dtype))
        except RuntimeError as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"the model does not take inputs of shape {tuple(input_shape)} (batch dim excluded): "
                             f"{reason}") from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return ModelSummary(rows, tuple(input_shape))
