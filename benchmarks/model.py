"""Benchmark suite "model": packed inference against the same float model.

CUDA: ResNet-20 at CIFAR shape (3x32x32) and ResNet-18 at ImageNet shape (3x224x224), batch
1, 64 and 256. The baseline is the float model in fp16, channels_last, eager (the target:
packed ResNet-18 at batch 256 >= 2x its throughput). Packed rows run the PackedModel in fp16
with channels_last input, eagerly and (batch 1, where launches dominate) replayed from a
CUDA graph. Every row has images/s and the speedup over the baseline of its shape.
"""

from __future__ import annotations

import torch

from bnnkit import models
from bnnkit.export import pack

from .registry import BenchContext, case
from .timing import time_fn

CUDA_SHAPES = {"resnet20": (3, 32, 32), "resnet18": (3, 224, 224)}


def _row(model: str, batch: int, impl: str, dtype: str, timing: dict) -> dict:
    return {"case": "inference", "shape": f"{model}:{batch}", "impl": impl, "dtype": dtype, **timing,
            "images_per_s": batch / (timing["median_ms"] * 1e-3)}


def _cuda_graph(fn, x: torch.Tensor):
    """``fn`` captured in a CUDA graph (after warm-up runs, which also autotune the kernels)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn(x)
    return graph.replay


@case("model", "inference", devices=("cuda",))
def inference(ctx: BenchContext) -> list[dict]:
    dev, rows = ctx.device, []
    for name, shape in CUDA_SHAPES.items():
        torch.manual_seed(0)
        float_model = models.create(name).eval()
        packed = pack(float_model).to(dev).half()
        reference = float_model.to(dev).half().to(memory_format=torch.channels_last)
        for batch in ((1, 64) if ctx.quick else (1, 64, 256)):
            x = torch.randn(batch, *shape, device=dev, dtype=torch.float16).contiguous(
                memory_format=torch.channels_last)
            with torch.no_grad():
                part = [
                    _row(name, batch, "float_fp16_channels_last", "fp16",
                         time_fn(lambda: reference(x), dev, ctx.quick)),
                    _row(name, batch, "packed_fp16", "1bit/fp16", time_fn(lambda: packed(x), dev, ctx.quick)),
                ]
                if batch == 1:
                    try:
                        replay = _cuda_graph(packed, x)
                        part.append(_row(name, batch, "packed_fp16_cuda_graph", "1bit/fp16",
                                         time_fn(replay, dev, ctx.quick)))
                    except RuntimeError as e:  # recorded, not hidden: a row that says why
                        part.append({"case": "inference", "shape": f"{name}:{batch}",
                                     "impl": "packed_fp16_cuda_graph", "error": str(e)[:300]})
            base = part[0]["median_ms"]
            for r in part[1:]:
                if "median_ms" in r:
                    r["speedup_vs_float_fp16_channels_last"] = base / r["median_ms"]
            rows += part
    return rows


@case("model", "cpu_small", devices=("cpu",))
def cpu_small(ctx: BenchContext) -> list[dict]:
    """ResNet-20, batch 8, CPU: the packed model on the PyTorch reference vs the float model
    (the native CPU kernels are measured by the "cpu" suite)."""
    from bnnkit.backend import use_backend

    torch.manual_seed(0)
    model = models.create("resnet20").eval()
    packed = pack(model)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad(), use_backend("torch"):
        rows = [_row("resnet20", 8, "float_fp32", "fp32", time_fn(lambda: model(x), ctx.device, ctx.quick)),
                _row("resnet20", 8, "packed_reference", "1bit/fp32", time_fn(lambda: packed(x), ctx.device,
                                                                             ctx.quick))]
    rows[1]["speedup_vs_float_fp32"] = rows[0]["median_ms"] / rows[1]["median_ms"]
    return rows
