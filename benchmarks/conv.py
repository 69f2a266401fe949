"""Benchmark suite "conv": the binary implicit-GEMM convolution against cuDNN fp16 (channels_last).

Shapes are the 3x3 convolutions of ImageNet ResNet-18 at batch 256 (the packed-model target:
>= 2x the throughput of the fp16 channels_last model, measured by the "model" suite). Each
binary row runs the fused epilogue of a Bi-Real block (scale, ReLU, BN affine, residual add,
fp16 out) and is compared with cuDNN's convolution alone and with conv + ReLU + BN + add in
eager fp16, the work the packed layer replaces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bnnkit.kernels.binary_conv import binary_conv2d, binary_conv2d_reference
from bnnkit.kernels.epilogue import Epilogue, sign_thresholds
from bnnkit.kernels.pack_signs import pack_signs
from bnnkit.kernels.weight_pack import pack_conv_weight

from .gemm import _row, _with_speedups
from .registry import BenchContext, case
from .timing import time_fn

# (H = W, C_in, C_out, stride) of ResNet-18's binary 3x3 convolutions
RESNET18_LAYERS = [(56, 64, 64, 1), (56, 64, 128, 2), (28, 128, 128, 1), (28, 128, 256, 2), (14, 256, 256, 1),
                   (14, 256, 512, 2), (7, 512, 512, 1)]


def _layer_rows(ctx: BenchContext, batch: int, h: int, c: int, co: int, stride: int) -> list[dict]:
    dev = ctx.device
    x = torch.randn(batch, h, h, c, device=dev, dtype=torch.float16)  # NHWC
    w = torch.randn(co, c, 3, 3, device=dev)
    words = pack_conv_weight(w)
    oh = (h + 2 - 3) // stride + 1
    ops = 2.0 * batch * oh * oh * co * c * 9
    shape = (batch, h, h, c, co, stride)
    ep = Epilogue(scale=torch.rand(co, device=dev), relu=True, post_scale=torch.rand(co, device=dev),
                  post_bias=torch.randn(co, device=dev))
    res = torch.randn(batch, oh, oh, co, device=dev, dtype=torch.float16)
    bits = pack_signs(x)
    x_nchw = x.permute(0, 3, 1, 2)  # channels_last view of an NCHW tensor
    wh = w.half().contiguous(memory_format=torch.channels_last)
    res_nchw = res.permute(0, 3, 1, 2)
    bn_w, bn_b = torch.rand(co, device=dev, dtype=torch.float16), torch.randn(co, device=dev, dtype=torch.float16)
    mean, var = torch.zeros(co, device=dev, dtype=torch.float16), torch.ones(co, device=dev, dtype=torch.float16)

    def eager_block():
        y = F.conv2d(x_nchw, wh, stride=stride, padding=1).relu()
        return F.batch_norm(y, mean, var, bn_w, bn_b, False) + res_nchw

    thr = sign_thresholds(ep, co, 9 * c)
    rows = [
        _row("resnet18_layers", shape, "cudnn_fp16_conv", "fp16",
             time_fn(lambda: F.conv2d(x_nchw, wh, stride=stride, padding=1), dev, ctx.quick), ops),
        _row("resnet18_layers", shape, "cudnn_fp16_block", "fp16", time_fn(eager_block, dev, ctx.quick), ops),
        _row("resnet18_layers", shape, "bnnkit_fp16_in_fused", "fp16/1bit",
             time_fn(lambda: binary_conv2d(x, words, c, stride=stride, padding=1, epilogue=ep, residual=res,
                                           out_dtype=torch.float16), dev, ctx.quick), ops),
        _row("resnet18_layers", shape, "bnnkit_packed_in_fused", "1bit",
             time_fn(lambda: binary_conv2d(bits, words, c, stride=stride, padding=1, epilogue=ep, residual=res,
                                           out_dtype=torch.float16), dev, ctx.quick), ops),
        _row("resnet18_layers", shape, "bnnkit_fp16_in_packed_out", "fp16/1bit",
             time_fn(lambda: binary_conv2d(x, words, c, stride=stride, padding=1, out_kind="packed", threshold=thr),
                     dev, ctx.quick), ops),
    ]
    return _with_speedups(rows, ("cudnn_fp16_conv", "cudnn_fp16_block"))


@case("conv", "resnet18_layers", devices=("cuda",))
def resnet18_layers(ctx: BenchContext) -> list[dict]:
    rows = []
    layers = RESNET18_LAYERS[:1] + RESNET18_LAYERS[-1:] if ctx.quick else RESNET18_LAYERS
    for h, c, co, stride in layers:
        rows += _layer_rows(ctx, 64 if ctx.quick else 256, h, c, co, stride)
    return rows


@case("conv", "cpu_small", devices=("cpu",))
def cpu_small(ctx: BenchContext) -> list[dict]:
    """CPU fallback (the PyTorch reference) against a float32 conv of ±1 values."""
    dev, n, h, c, co = ctx.device, 2, 16, 32, 32
    x = torch.randn(n, h, h, c, device=dev)
    w = torch.randn(co, c, 3, 3, device=dev)
    words = pack_conv_weight(w)
    xs = torch.where(x >= 0, 1.0, -1.0).permute(0, 3, 1, 2).contiguous()
    ws = torch.where(w >= 0, 1.0, -1.0)
    ops = 2.0 * n * h * h * co * c * 9
    shape = (n, h, h, c, co, 1)
    rows = [
        _row("cpu_small", shape, "torch_fp32_conv", "fp32", time_fn(lambda: F.conv2d(xs, ws, padding=1), dev,
                                                                     ctx.quick), ops),
        _row("cpu_small", shape, "bnnkit_reference", "fp32/1bit",
             time_fn(lambda: binary_conv2d_reference(x, words, c, padding=1), dev, ctx.quick), ops),
    ]
    return _with_speedups(rows, ("torch_fp32_conv",))
