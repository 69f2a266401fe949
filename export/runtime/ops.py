"""The packed ops, registered with ``torch.library`` so ``torch.compile`` and ``torch.export``
see them as single nodes (``torch.ops.bnnkit.packed_conv2d`` / ``packed_linear``).

Each runs the Triton kernel where :func:`bnnkit.backend.use_triton` says so (CUDA by default,
CPU under ``TRITON_INTERPRET=1`` with ``BNNKIT_BACKEND=triton``) and the PyTorch reference
otherwise. Their fake (meta) implementations give output shapes for tracing, symbolic batch
sizes included.

Arguments shared by both ops:

- ``weight``: packed words (conv: OHWI ``(C_out, KH, KW, ceil(C_in/32))``, linear
  ``(N, ceil(K/32))``), int32.
- ``epilogue``: ``(4, C_out)`` float rows ``scale, bias, post_scale, post_bias`` or an empty
  tensor when ``thresholds`` is used; ``thresholds``: ``(2, C_out)`` int32 ``lo, hi`` or empty.
- ``out_kind``: ``"float"`` (``out_dtype``), ``"packed"`` or ``"sign_int8"``.
"""

from __future__ import annotations

import torch

from bnnkit.backend import use_triton
from bnnkit.kernels.binary_conv import binary_conv2d, binary_conv2d_reference
from bnnkit.kernels.binary_gemm import binary_gemm, binary_gemm_reference
from bnnkit.kernels.bitpack import num_words
from bnnkit.kernels.epilogue import Epilogue, SignThreshold

_NAMESPACE = "bnnkit"


def _output_stage(epilogue: torch.Tensor, thresholds: torch.Tensor, relu: bool) -> dict:
    if thresholds.numel():
        return {"threshold": SignThreshold(thresholds[0], thresholds[1])}
    return {"epilogue": Epilogue(scale=epilogue[0], bias=epilogue[1], relu=relu, post_scale=epilogue[2],
                                 post_bias=epilogue[3])}


def _out_dtype(out_kind: str, out_dtype: torch.dtype) -> torch.dtype:
    return {"float": out_dtype, "packed": torch.int32, "sign_int8": torch.int8}[out_kind]


@torch.library.custom_op(f"{_NAMESPACE}::packed_conv2d", mutates_args=())
def packed_conv2d(x: torch.Tensor, weight: torch.Tensor, epilogue: torch.Tensor, thresholds: torch.Tensor,
                  residual: torch.Tensor | None, in_channels: int, stride: int, padding: int, real_input: bool,
                  relu: bool, out_kind: str, out_dtype: torch.dtype) -> torch.Tensor:
    """Binary conv on NHWC ``x`` (real, or int32 packed along channels) -> NHWC output."""
    fn = binary_conv2d if use_triton(x) else binary_conv2d_reference
    return fn(x, weight, in_channels, stride=stride, padding=padding, real_input=real_input, out_kind=out_kind,
              residual=residual, out_dtype=out_dtype, **_output_stage(epilogue, thresholds, relu))


@packed_conv2d.register_fake
def _packed_conv2d_fake(x, weight, epilogue, thresholds, residual, in_channels, stride, padding, real_input, relu,
                        out_kind, out_dtype):
    n, h, w = x.shape[0], x.shape[1], x.shape[2]
    co, kh, kw = weight.shape[0], weight.shape[1], weight.shape[2]
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (w + 2 * padding - kw) // stride + 1
    c = num_words(co) if out_kind == "packed" else co
    return x.new_empty((n, oh, ow, c), dtype=_out_dtype(out_kind, out_dtype))


@torch.library.custom_op(f"{_NAMESPACE}::packed_linear", mutates_args=())
def packed_linear(x: torch.Tensor, weight: torch.Tensor, epilogue: torch.Tensor, thresholds: torch.Tensor,
                  residual: torch.Tensor | None, in_features: int, real_input: bool, relu: bool, out_kind: str,
                  out_dtype: torch.dtype) -> torch.Tensor:
    """Binary linear on ``x`` ``(..., K)`` real or ``(..., ceil(K/32))`` packed -> ``(..., N)``."""
    fn = binary_gemm if use_triton(x) else binary_gemm_reference
    return fn(x, weight, in_features, real_input=real_input, out_kind=out_kind, residual=residual,
              out_dtype=out_dtype, **_output_stage(epilogue, thresholds, relu))


@packed_linear.register_fake
def _packed_linear_fake(x, weight, epilogue, thresholds, residual, in_features, real_input, relu, out_kind,
                        out_dtype):
    n = weight.shape[0]
    c = num_words(n) if out_kind == "packed" else n
    return x.new_empty((*x.shape[:-1], c), dtype=_out_dtype(out_kind, out_dtype))
