"""The op layer of training: binarization with a straight-through estimator, as torch.library ops.

Two ops, each a forward and an exact backward:

- :func:`sign_estimate`: ``x -> binarize(x)``, backward ``g_kind(x) * grad``.
- :func:`scaled_binarize`: ``w -> alpha(w) * binarize(w)`` with alpha = mean |w| (per tensor
  or per output channel) not detached, backward as in :mod:`bnnkit.kernels.weight_binarize`.

``kind`` is an :class:`~bnnkit.kernels.kinds.EstimatorKind` (the ops' schema carries its int
``code``, what the kernels branch on); ``o`` and ``t`` are the estimator's parameters (ignored
by estimators that do not use them). Callers validate them (:mod:`bnnkit.functional` does).

Registered as ``torch.ops.bnnkit.*`` custom ops (``custom_op`` + ``register_fake`` +
``register_autograd``), so ``torch.compile(model, fullgraph=True)`` and ``torch.export``
keep each one as a single node, and ``torch.library.opcheck`` passes. Each op body picks its
implementation when it runs (:func:`bnnkit.backend.use_triton`): the Triton kernels for
fp16/bf16/fp32 tensors where the backend says so, the PyTorch references otherwise (float64
always takes the reference). The backward ops read the backend when autograd runs them, so run
forward and backward under the same backend. Outputs are contiguous, or channels_last for a
channels_last input (other layouts are copied to contiguous memory first).

``o`` travels as a 0-d tensor, not a float: ReSTE's schedule changes ``o`` every epoch, and
torch.compile specializes a graph on every Python float it reads from a module, so a float
``o`` would recompile each epoch until Dynamo's recompile limit (8) stops compilation (with
``fullgraph=True``, a hard error). A tensor is a graph input whose value is read when the op
runs. Keep it on the CPU (the binary layers do): the host-side kernel constants are computed
from it with ``.item()``, which for a CUDA tensor would synchronize. ``t`` stays a float; it
does not change during training.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnnkit.backend import use_triton
from bnnkit.kernels.binarize import binarize, binarize_reference
from bnnkit.kernels.elementwise import KERNEL_DTYPES
from bnnkit.kernels.kinds import EstimatorKind
from bnnkit.kernels.sign_grad import compute_dtype, sign_grad, sign_grad_reference
from bnnkit.kernels.weight_binarize import (
    scaled_binarize_backward,
    scaled_binarize_backward_reference,
    scaled_binarize_forward,
    scaled_binarize_forward_reference,
)

_LIB = "bnnkit"


def as_o_tensor(o: float | Tensor) -> Tensor:
    """``o`` as the 0-d tensor the ops take (a float becomes a CPU float64 tensor)."""
    if isinstance(o, Tensor):
        if o.dim() != 0 or not o.is_floating_point():
            raise ValueError(f"o must be a float or a 0-d floating-point tensor, got a tensor of shape "
                             f"{tuple(o.shape)} and dtype {o.dtype}")
        return o
    return torch.tensor(float(o), dtype=torch.float64)


def _runs_kernel(*tensors: Tensor) -> bool:
    return all(t.dtype in KERNEL_DTYPES for t in tensors) and use_triton(tensors[0])


def _dense(x: Tensor) -> Tensor:
    """``x`` itself when contiguous or channels_last, else a contiguous copy: the layout the
    op's output takes (fake and real implementations agree on it)."""
    if x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)):
        return x
    return x.contiguous()


def _like(x: Tensor, y: Tensor) -> Tensor:
    """``y`` with ``x``'s strides (copied only when they differ)."""
    return y if y.stride() == x.stride() else torch.empty_like(x).copy_(y)


# ---- sign_estimate ----------------------------------------------------------------------------

@torch.library.custom_op(f"{_LIB}::sign_estimate", mutates_args=())
def _sign_estimate(x: Tensor, kind: int, o: Tensor, t: float) -> Tensor:
    x = _dense(x)
    if _runs_kernel(x):
        return binarize(x)
    return _like(x, binarize_reference(x))


@_sign_estimate.register_fake
def _(x: Tensor, kind: int, o: Tensor, t: float) -> Tensor:
    return torch.empty_like(_dense(x))


@torch.library.custom_op(f"{_LIB}::sign_estimate_backward", mutates_args=())
def _sign_estimate_backward(x: Tensor, grad: Tensor, kind: int, o: Tensor, t: float) -> Tensor:
    x = _dense(x)
    grad = _like(x, grad)
    if _runs_kernel(x, grad):
        return sign_grad(x, grad, kind, o.item(), t)
    return _like(x, sign_grad_reference(x, grad, kind, o.item(), t))


@_sign_estimate_backward.register_fake
def _(x: Tensor, grad: Tensor, kind: int, o: Tensor, t: float) -> Tensor:
    return torch.empty_like(_dense(x))


def _sign_estimate_setup(ctx, inputs, output) -> None:
    x, kind, o, t = inputs
    ctx.save_for_backward(x, o)
    ctx.kind, ctx.t = kind, t


def _sign_estimate_grad(ctx, grad: Tensor):
    x, o = ctx.saved_tensors
    return _sign_estimate_backward(x, grad, ctx.kind, o, ctx.t), None, None, None


_sign_estimate.register_autograd(_sign_estimate_grad, setup_context=_sign_estimate_setup)


# ---- scaled_binarize --------------------------------------------------------------------------

def _alpha_shape(w: Tensor, scale: str) -> tuple[int, ...]:
    return () if scale == "tensor" else (w.shape[0],) + (1,) * (w.dim() - 1)


@torch.library.custom_op(f"{_LIB}::scaled_binarize", mutates_args=())
def _scaled_binarize(w: Tensor, scale: str, kind: int, o: Tensor, t: float) -> tuple[Tensor, Tensor]:
    """``(alpha * binarize(w), alpha)`` for scale ``"tensor"`` / ``"channel"`` (contiguous ``w``)."""
    w = w.contiguous()
    if _runs_kernel(w):
        return scaled_binarize_forward(w, scale)
    return scaled_binarize_forward_reference(w, scale)


@_scaled_binarize.register_fake
def _(w: Tensor, scale: str, kind: int, o: Tensor, t: float) -> tuple[Tensor, Tensor]:
    alpha = w.new_empty(_alpha_shape(w, scale), dtype=compute_dtype(w.dtype))
    return torch.empty(w.shape, dtype=w.dtype, device=w.device), alpha


@torch.library.custom_op(f"{_LIB}::scaled_binarize_backward", mutates_args=())
def _scaled_binarize_backward(w: Tensor, alpha: Tensor, grad: Tensor, scale: str, kind: int, o: Tensor,
                              t: float) -> Tensor:
    w, grad = w.contiguous(), grad.contiguous()
    if _runs_kernel(w, grad):
        return scaled_binarize_backward(w, alpha, grad, scale, kind, o.item(), t)
    return scaled_binarize_backward_reference(w, alpha, grad, scale, kind, o.item(), t).contiguous()


@_scaled_binarize_backward.register_fake
def _(w: Tensor, alpha: Tensor, grad: Tensor, scale: str, kind: int, o: Tensor, t: float) -> Tensor:
    return torch.empty(w.shape, dtype=w.dtype, device=w.device)


def _scaled_binarize_setup(ctx, inputs, output) -> None:
    w, scale, kind, o, t = inputs
    _, alpha = output
    ctx.save_for_backward(w, alpha, o)
    ctx.mark_non_differentiable(alpha)
    ctx.scale, ctx.kind, ctx.t = scale, kind, t


def _scaled_binarize_grad(ctx, grad: Tensor, _grad_alpha: Tensor | None):
    # alpha is an internal output (scaled_binarize returns only the binary weight), so only the
    # weight's gradient flows back; the part through alpha is inside the backward op.
    w, alpha, o = ctx.saved_tensors
    return _scaled_binarize_backward(w, alpha, grad, ctx.scale, ctx.kind, o, ctx.t), None, None, None, None


_scaled_binarize.register_autograd(_scaled_binarize_grad, setup_context=_scaled_binarize_setup)


# ---- public API -------------------------------------------------------------------------------

def sign_estimate(x: Tensor, kind: EstimatorKind | str | int, o: float | Tensor = 1.0, t: float = 1.5) -> Tensor:
    """Binarize ``x`` (any shape, floating dtype) with estimator ``kind``'s backward.

    Returns ±1 in ``x``'s dtype and shape (contiguous, or channels_last when ``x`` is).
    ``o``: float or 0-d tensor (see the module docstring).
    """
    return _sign_estimate(x, EstimatorKind.parse(kind).code, as_o_tensor(o), float(t))


def scaled_binarize(w: Tensor, scale: str, kind: EstimatorKind | str | int, o: float | Tensor = 1.0,
                    t: float = 1.5) -> Tensor:
    """``alpha(w) * binarize(w)`` in ``w``'s dtype (contiguous); dim 0 of ``w`` is the output channel.

    ``scale="none"`` is ``alpha = 1``, i.e. :func:`sign_estimate`.
    """
    if scale == "none":
        return sign_estimate(w, kind, o, t)
    out, _ = _scaled_binarize(w, scale, EstimatorKind.parse(kind).code, as_o_tensor(o), float(t))
    return out
