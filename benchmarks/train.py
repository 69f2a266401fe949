"""Suite "train": one training step (forward, loss, backward, SGD step) of a binary model.

resnet20 on CIFAR-sized input (batch 256, 3x32x32) on CUDA, with

- ``triton``: bnnkit's layers on the triton backend (the fused kernels);
- ``triton+compile``: the same through ``torch.compile(model)``;
- ``torch``: bnnkit's layers on the torch backend (the PyTorch references);
- ``reference_style``: the same architecture whose layers use the paper code's style of
  estimator (:mod:`benchmarks.reference_style`: ``torch.sign`` forward, masked-write backward)
  for weights and activations, with alpha = mean |w| computed by autograd.

Rows: median ms per step, images/s, ``speedup_vs_reference_style``.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from bnnkit import models
from bnnkit.backend import use_backend
from bnnkit.nn import binary_layers

from .reference_style import reference_style_reste
from .registry import BenchContext, case
from .timing import time_fn

REFERENCE_STYLE_O = 2.0


def reference_style_estimator(x: torch.Tensor) -> torch.Tensor:
    """The paper code's quantizer as a bnnkit estimator callable (o fixed at 2)."""
    return reference_style_reste(x, REFERENCE_STYLE_O)


def _step_fn(model: torch.nn.Module, forward, backend: str | None, shape: tuple[int, ...], device: torch.device):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator(device=device).manual_seed(0)
    batch = shape[0]
    x = torch.randn(shape, device=device, generator=g)
    y = torch.randint(0, 10, (batch,), device=device, generator=g)

    def step():
        with contextlib.nullcontext() if backend is None else use_backend(backend):
            loss = F.cross_entropy(forward(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return step


def measure_train_step(ctx: BenchContext, case_name: str, model_name: str, batch: int,
                       impls: list[str]) -> list[dict]:
    """Rows for each implementation in ``impls`` (names as in the module docstring)."""
    rows = []
    shape = (batch, *models.model_info(model_name).input_shape)
    for impl in impls:
        torch.manual_seed(0)
        estimator = reference_style_estimator if impl == "reference_style" else "reste"
        model = models.create(model_name, estimator=estimator).to(ctx.device).train()
        for _, layer in binary_layers(model):
            layer.o = REFERENCE_STYLE_O
        forward = torch.compile(model) if impl.endswith("+compile") else model
        backend = None if impl == "reference_style" else impl.removesuffix("+compile")
        step = _step_fn(model, forward, backend, shape, ctx.device)
        step()  # compile / first-call work outside the timed region
        timing = time_fn(step, ctx.device, ctx.quick)
        rows.append({"case": case_name, "shape": str(shape), "dtype": "float32", "impl": impl,
                     "model": model_name, **timing, "images_per_s": batch / timing["median_ms"] * 1e3})
    base = next((r["median_ms"] for r in rows if r["impl"] == "reference_style"), None)
    for row in rows:
        if base is not None:
            row["speedup_vs_reference_style"] = base / row["median_ms"]
    return rows


@case("train", "resnet20_step", devices=("cuda",))
def resnet20_train_step_cuda(ctx: BenchContext) -> list[dict]:
    """resnet20, batch 256, 32x32: bnnkit's kernels vs the reference-code-style estimator."""
    return measure_train_step(ctx, "resnet20_step", "resnet20", 256,
                              ["triton", "triton+compile", "torch", "reference_style"])


@case("train", "digits_cnn_step_cpu", devices=("cpu",))
def digits_cnn_train_step_cpu(ctx: BenchContext) -> list[dict]:
    """CPU: a small model's step, bnnkit's torch path vs the reference-code-style estimator."""
    return measure_train_step(ctx, "digits_cnn_step_cpu", "digits_cnn", 64, ["torch", "reference_style"])
