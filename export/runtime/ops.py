"""The packed ops, registered with ``torch.library`` so ``torch.compile`` and ``torch.export``
see them as single nodes (``torch.ops.bnnkit.packed_conv2d`` / ``packed_linear``).

Each runs, as :mod:`bnnkit.backend` decides for ``x``'s device: the Triton kernel (CUDA by
default, CPU under ``TRITON_INTERPRET=1`` with ``BNNKIT_BACKEND=triton``), the native CPU
kernels (CPU tensors by default when numba imports: :mod:`bnnkit.kernels.cpu_binary_gemm`,
:mod:`~bnnkit.kernels.cpu_binary_conv`), or the PyTorch reference. Their fake (meta)
implementations give output shapes for tracing, symbolic batch sizes included. On the Triton
route a call is one kernel launch and no other tensor work than allocating its output: the
epilogue tensors reach the kernel as they are (:class:`~bnnkit.kernels.epilogue.KernelStage`),
and the launch runs under ``x``'s device. The native CPU route reads them in place too and
derives the weights' kernel layout once per weight tensor (:mod:`bnnkit.kernels.cpu_prepared`).

In eager mode on plain tensors the packed layers call the implementations directly
(:func:`run_packed_conv2d` / :func:`run_packed_linear`, what the ops' bodies are), which
saves the custom op's dispatch (about 20 us a call); under ``torch.compile``, ``torch.export``,
tracing or a dispatch mode they call the ops, so those see one node per layer.

Argument conventions, shared by both ops (checked, with errors that name what is accepted):

- ``x``: conv NHWC ``(N, H, W, C_in)``, linear ``(..., K)``. Its dtype says its encoding: float32 /
  float16 / bfloat16 values (binarized on load, ``x >= 0`` -> +1, or used as they are with
  ``real_input=True``), or int32 words of sign bits packed along the last dim
  (``ceil(C_in/32)`` or ``ceil(K/32)`` words, :mod:`bnnkit.kernels.bitpack`).
- ``weight``: packed words, int32; conv OHWI ``(C_out, KH, KW, ceil(C_in/32))``, linear
  ``(N, ceil(K/32))``.
- ``epilogue``: ``(4, C_out)`` float32 rows ``scale, bias, post_scale, post_bias`` of
  ``y = post_scale * act(acc * scale + bias) + post_bias`` (``act`` = ReLU when ``relu``), or an
  empty tensor when ``thresholds`` gives the signs.
- ``thresholds``: ``(2, C_out)`` int32 rows ``lo, hi`` (``bit = lo <= acc <= hi``), or empty.
  Both empty: no parameters (``y = act(acc)``).
- ``residual``: float, the output's shape (NHWC for conv), added last; or ``None``.
- ``out_kind``: ``"float"`` (``out_dtype``), ``"packed"`` (int32 words along channels) or
  ``"sign_int8"``, the values of :class:`~bnnkit.kernels.kinds.OutputKind`.
- An empty batch gives an empty output of the right shape.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from bnnkit.backend import packed_route
from bnnkit.kernels.binary_conv import binary_conv2d, binary_conv2d_reference
from bnnkit.kernels.binary_gemm import binary_gemm, binary_gemm_reference
from bnnkit.kernels.bitpack import num_words
from bnnkit.kernels.epilogue import Epilogue, KernelStage
from bnnkit.kernels.kinds import OutputKind

_NAMESPACE = "bnnkit"
OP_OUTPUT_KINDS = (OutputKind.FLOAT, OutputKind.PACKED, OutputKind.SIGN_INT8)


def _stage(epilogue: torch.Tensor, thresholds: torch.Tensor, relu: bool) -> dict:
    """The output-stage arguments of the kernel functions (no tensor work: the tensors as they are)."""
    if epilogue.numel() == 0 and thresholds.numel() == 0:
        return {"epilogue": Epilogue(relu=relu)}  # no parameters: scale 1, bias 0
    return {"stage": KernelStage(epilogue, thresholds, relu)}


def _out_dtype(out_kind: str, out_dtype: torch.dtype) -> torch.dtype:
    kind = OutputKind.parse(out_kind)
    if kind not in OP_OUTPUT_KINDS:
        raise ValueError(f"out_kind must be one of {', '.join(k.value for k in OP_OUTPUT_KINDS)}, got {out_kind!r}")
    return {OutputKind.FLOAT: out_dtype, OutputKind.PACKED: torch.int32, OutputKind.SIGN_INT8: torch.int8}[kind]


_NATIVE: dict[str, object] = {}  # the native launchers, imported on first use (numba is imported then)


def _native(name: str):
    if name not in _NATIVE:
        from bnnkit.kernels.cpu_binary_conv import packed_conv2d_op
        from bnnkit.kernels.cpu_binary_gemm import packed_linear_op

        _NATIVE.update(conv=packed_conv2d_op, linear=packed_linear_op)
    return _NATIVE[name]


def eager_call(x: torch.Tensor) -> bool:
    """Whether a packed layer may call :func:`run_packed_conv2d` / :func:`run_packed_linear`
    directly instead of the op: a plain tensor, outside compilation, tracing and dispatch modes."""
    return (type(x) is torch.Tensor and not torch.compiler.is_compiling() and not torch.jit.is_tracing()
            and _get_current_dispatch_mode() is None)


def run_packed_conv2d(x: torch.Tensor, weight: torch.Tensor, epilogue: torch.Tensor, thresholds: torch.Tensor,
                      residual: torch.Tensor | None, in_channels: int, stride: int, padding: int, real_input: bool,
                      relu: bool, out_kind: str, out_dtype: torch.dtype) -> torch.Tensor:
    """The body of ``torch.ops.bnnkit.packed_conv2d``: the kernel :mod:`bnnkit.backend` picks for ``x``."""
    _out_dtype(out_kind, out_dtype)
    route = packed_route(x)
    if route == "cpu":  # takes the op's arguments as they are: its checks are cached per weight
        return _native("conv")(x, weight, epilogue, thresholds, residual, in_channels, stride, padding, real_input,
                               relu, out_kind, out_dtype)
    fn = binary_conv2d if route == "triton" else binary_conv2d_reference
    return fn(x, weight, in_channels, stride=stride, padding=padding, real_input=real_input, out_kind=out_kind,
              residual=residual, out_dtype=out_dtype, **_stage(epilogue, thresholds, relu))


def run_packed_linear(x: torch.Tensor, weight: torch.Tensor, epilogue: torch.Tensor, thresholds: torch.Tensor,
                      residual: torch.Tensor | None, in_features: int, real_input: bool, relu: bool, out_kind: str,
                      out_dtype: torch.dtype) -> torch.Tensor:
    """The body of ``torch.ops.bnnkit.packed_linear``: the kernel :mod:`bnnkit.backend` picks for ``x``."""
    _out_dtype(out_kind, out_dtype)
    route = packed_route(x)
    if route == "cpu":  # takes the op's arguments as they are: its checks are cached per weight
        return _native("linear")(x, weight, epilogue, thresholds, residual, in_features, real_input, relu, out_kind,
                                 out_dtype)
    fn = binary_gemm if route == "triton" else binary_gemm_reference
    return fn(x, weight, in_features, real_input=real_input, out_kind=out_kind, residual=residual,
              out_dtype=out_dtype, **_stage(epilogue, thresholds, relu))


@torch.library.custom_op(f"{_NAMESPACE}::packed_conv2d", mutates_args=())
def packed_conv2d(x: torch.Tensor, weight: torch.Tensor, epilogue: torch.Tensor, thresholds: torch.Tensor,
                  residual: torch.Tensor | None, in_channels: int, stride: int, padding: int, real_input: bool,
                  relu: bool, out_kind: str, out_dtype: torch.dtype) -> torch.Tensor:
    """Binary conv on NHWC ``x`` (real, or int32 packed along channels) -> NHWC output."""
    return run_packed_conv2d(x, weight, epilogue, thresholds, residual, in_channels, stride, padding, real_input,
                             relu, out_kind, out_dtype)


@packed_conv2d.register_fake
def _packed_conv2d_fake(x, weight, epilogue, thresholds, residual, in_channels, stride, padding, real_input, relu,
                        out_kind, out_dtype):
    n, h, w = x.shape[0], x.shape[1], x.shape[2]
    co, kh, kw = weight.shape[0], weight.shape[1], weight.shape[2]
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (w + 2 * padding - kw) // stride + 1
    c = num_words(co) if out_kind == OutputKind.PACKED.value else co
    return x.new_empty((n, oh, ow, c), dtype=_out_dtype(out_kind, out_dtype))


@torch.library.custom_op(f"{_NAMESPACE}::packed_linear", mutates_args=())
def packed_linear(x: torch.Tensor, weight: torch.Tensor, epilogue: torch.Tensor, thresholds: torch.Tensor,
                  residual: torch.Tensor | None, in_features: int, real_input: bool, relu: bool, out_kind: str,
                  out_dtype: torch.dtype) -> torch.Tensor:
    """Binary linear on ``x`` ``(..., K)`` real or ``(..., ceil(K/32))`` packed -> ``(..., N)``."""
    return run_packed_linear(x, weight, epilogue, thresholds, residual, in_features, real_input, relu, out_kind,
                             out_dtype)


@packed_linear.register_fake
def _packed_linear_fake(x, weight, epilogue, thresholds, residual, in_features, real_input, relu, out_kind,
                        out_dtype):
    n = weight.shape[0]
    c = num_words(n) if out_kind == OutputKind.PACKED.value else n
    return x.new_empty((*x.shape[:-1], c), dtype=_out_dtype(out_kind, out_dtype))
