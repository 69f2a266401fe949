"""Suite "quantize": forward + backward of the activation quantizer (binarize, ReSTE backward).

Implementations compared on the same input (``x ~ N(0, 1)``, o = 2, t = 1.5):

- ``triton``: :func:`bnnkit.functional.reste_sign` on the triton backend (the kernels);
- ``torch``: the same on the torch backend (the PyTorch references);
- ``torch.compile``: ``torch.compile`` of the plain-PyTorch expression (the references under
  an autograd.Function). Compiling ``reste_sign`` itself would only call bnnkit's op, which
  is opaque to Inductor, so this is what Inductor can do with plain PyTorch;
- ``reference_style``: the paper code's style (:mod:`benchmarks.reference_style`).

Bytes that must move: forward reads x and writes out (2 elements); backward reads x and
grad_out and writes grad_in (3); ``fwd+bwd`` counts read x, read grad, write grad, write out
(4), the minimum if x were read once. ``pct_of_copy`` relates GB/s to a device-to-device copy
measured in the same case.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import torch

from bnnkit.backend import use_backend
from bnnkit.functional import reste_sign
from bnnkit.kernels.binarize import binarize_reference
from bnnkit.kernels.sign_grad import EstimatorKind, sign_grad_reference

from .reference_style import reference_style_reste
from .registry import BenchContext, case
from .timing import time_fn

RESTE_O = 2.0
RESTE_T = 1.5
PASS_ELEMENT_TRANSFERS = {"forward": 2, "backward": 3, "fwd+bwd": 4}

Quantizer = Callable[[torch.Tensor], torch.Tensor]


class _PlainTorchReste(torch.autograd.Function):
    """The references under a plain autograd.Function: what torch.compile can fuse."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return binarize_reference(x)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return sign_grad_reference(x, grad_out, EstimatorKind.RESTE, RESTE_O, RESTE_T)


@dataclasses.dataclass(frozen=True)
class Impl:
    """A quantizer to measure and the bnnkit backend its passes run under (``None``: as set)."""

    quantizer: Quantizer
    backend: str | None = None


def bnnkit_reste(x: torch.Tensor) -> torch.Tensor:
    return reste_sign(x, RESTE_O, RESTE_T)


def plain_torch_quantizer(x: torch.Tensor) -> torch.Tensor:
    return _PlainTorchReste.apply(x)


def reference_style_quantizer(x: torch.Tensor) -> torch.Tensor:
    return reference_style_reste(x, RESTE_O, RESTE_T)


def _pass_fns(impl: Impl, x: torch.Tensor, grad: torch.Tensor) -> dict[str, Callable[[], object]]:
    """Closures timing each pass under the impl's backend (bnnkit's ops read it when they run,
    backward included); the backward reuses one retained graph (no grad accumulation)."""
    def backend():
        return contextlib.nullcontext() if impl.backend is None else use_backend(impl.backend)

    with backend():
        retained = impl.quantizer(x)

    def forward():
        with backend(), torch.no_grad():
            return impl.quantizer(x)

    def backward():
        with backend():
            return torch.autograd.grad(retained, x, grad, retain_graph=True)

    def forward_backward():
        with backend():
            return torch.autograd.grad(impl.quantizer(x), x, grad)

    return {"forward": forward, "backward": backward, "fwd+bwd": forward_backward}


def _copy_gb_per_s(n: int, dtype: torch.dtype, ctx: BenchContext) -> dict:
    src = torch.randn(n, device=ctx.device).to(dtype)
    dst = torch.empty_like(src)
    timing = time_fn(lambda: dst.copy_(src), ctx.device, ctx.quick)
    return {**timing, "gb_per_s": 2 * n * src.element_size() / timing["median_ms"] / 1e6}


def measure_quantizers(ctx: BenchContext, case_name: str, quantizers: dict[str, Impl], sizes: list[int],
                       dtypes: list[torch.dtype], baseline: str = "reference_style") -> list[dict]:
    """Rows for every size x dtype x implementation x pass, plus one copy row per size x dtype.

    Each row of an implementation carries ``speedup_vs_<baseline>`` for the same pass.
    """
    rows = []
    for n in sizes:
        for dtype in dtypes:
            common = {"case": case_name, "shape": f"({n},)", "dtype": str(dtype).removeprefix("torch.")}
            copy = _copy_gb_per_s(n, dtype, ctx)
            rows.append({**common, "impl": "copy", "pass": "copy", **copy, "pct_of_copy": 100.0})
            x = torch.randn(n, device=ctx.device).to(dtype).requires_grad_(True)
            grad = torch.randn(n, device=ctx.device).to(dtype)
            measured = []
            for impl, spec in quantizers.items():
                for pass_name, fn in _pass_fns(spec, x, grad).items():
                    fn()  # compiles / autotunes outside the timed region
                    timing = time_fn(fn, ctx.device, ctx.quick)
                    gb = PASS_ELEMENT_TRANSFERS[pass_name] * n * x.element_size() / timing["median_ms"] / 1e6
                    measured.append({**common, "impl": impl, "pass": pass_name, **timing, "gb_per_s": gb,
                                     "pct_of_copy": 100.0 * gb / copy["gb_per_s"]})
            base = {row["pass"]: row["median_ms"] for row in measured if row["impl"] == baseline}
            for row in measured:
                if row["pass"] in base:
                    row[f"speedup_vs_{baseline}"] = base[row["pass"]] / row["median_ms"]
            rows += measured
    return rows


@case("quantize", "reste_fwd_bwd", devices=("cuda",))
def reste_quantizer_cuda(ctx: BenchContext) -> list[dict]:
    """16M and 64M elements, fp32 and bf16: Triton vs plain torch vs torch.compile vs reference style."""
    quantizers = {
        "triton": Impl(bnnkit_reste, "triton"),
        "torch": Impl(bnnkit_reste, "torch"),
        "torch.compile": Impl(torch.compile(plain_torch_quantizer)),
        "reference_style": Impl(reference_style_quantizer),
    }
    sizes = [1 << 24] if ctx.quick else [1 << 24, 1 << 26]
    return measure_quantizers(ctx, "reste_fwd_bwd", quantizers, sizes, [torch.float32, torch.bfloat16])


@case("quantize", "reste_fwd_bwd_cpu", devices=("cpu",))
def reste_quantizer_cpu(ctx: BenchContext) -> list[dict]:
    """CPU: bnnkit's torch path against the reference-code style, as a ratio in one run."""
    quantizers = {"torch": Impl(bnnkit_reste, "torch"), "reference_style": Impl(reference_style_quantizer)}
    sizes = [1 << 18] if ctx.quick else [1 << 22]
    return measure_quantizers(ctx, "reste_fwd_bwd_cpu", quantizers, sizes, [torch.float32])
