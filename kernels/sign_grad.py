"""Backward of binarization: the pseudo-gradient of each straight-through estimator.

Every estimator of bnnkit has the same forward (:func:`binarize_reference`) and differs only
in the slope ``g(x)`` its backward multiplies ``grad_out`` by:

============  ==============================================================  ==========
kind          g(x)                                                             NaN input
============  ==============================================================  ==========
IDENTITY_STE  1                                                                1
CLIPPED_STE   1 for |x| <= t, else 0 (t = 1: the STE of the ReSTE paper)      0
APPROX_SIGN   2 - 2|x| for |x| <= 1, else 0 (Bi-Real Net)                      0
RESTE         m^(1/o) / m for |x| <= m;  (1/o)|x|^((1-o)/o) for m < |x| <= t;  0
              0 for |x| > t;  m = 0.1 (Wu et al., ICCV 2023, arXiv:2308.06689)
============  ==============================================================  ==========

The slope is computed in float32 for half-precision inputs (float64 stays float64), and
``grad_in = (g * grad_out)`` is returned in ``x``'s dtype.

:func:`sign_grad_reference` defines the backward (and is the CPU fallback);
:func:`sign_grad` is the Triton kernel family (one ``KIND`` constexpr per estimator).
"""

from __future__ import annotations

import math

import torch
from .triton_compat import tl, triton

from .bits import interpreting
from .elementwise import (
    check_kernel_tensor,
    check_same_shape_device,
    empty_like_layout,
    needs_int64_index,
    shared_dense_layout,
)
from .kinds import _EST_APPROX_SIGN, _EST_CLIPPED_STE, _EST_IDENTITY_STE, EstimatorKind
from .launch import on_device

RESTE_M = 0.1
"""Half-width of ReSTE's rectified interval around 0 (the reference code's ``interval``)."""


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype slopes are computed in: float32 for fp16/bf16/fp32, float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


def estimator_slope_reference(x: torch.Tensor, kind: int, o: float = 1.0, t: float = 1.5) -> torch.Tensor:
    """The slope ``g(x)`` of estimator ``kind``, elementwise, in :func:`compute_dtype` of ``x``.

    One vectorized expression per estimator: no masked writes.
    """
    a = x.to(compute_dtype(x.dtype)).abs()
    zero = torch.zeros((), dtype=a.dtype, device=a.device)
    kind = estimator_kind(kind)
    if kind == EstimatorKind.IDENTITY_STE:
        return torch.ones_like(a)
    if kind == EstimatorKind.CLIPPED_STE:
        return (a <= t).to(a.dtype)
    if kind == EstimatorKind.APPROX_SIGN:
        return torch.where(a <= 1.0, 2.0 - 2.0 * a, zero)
    rectified = RESTE_M ** (1.0 / o) / RESTE_M
    power = a.pow((1.0 - o) / o).mul_(1.0 / o)  # inf at 0 for o > 1: replaced by the rectified value
    return torch.where(a <= t, torch.where(a <= RESTE_M, rectified, power), zero)


def sign_grad_reference(
    x: torch.Tensor, grad_out: torch.Tensor, kind: int, o: float = 1.0, t: float = 1.5
) -> torch.Tensor:
    """``grad_in = g(x) * grad_out`` for estimator ``kind``; same shape and dtype as ``x``."""
    g = estimator_slope_reference(x, kind, o, t)
    return (g * grad_out.to(g.dtype)).to(x.dtype)


SIGN_GRAD_BLOCK = 4096
SIGN_GRAD_WARPS = 8


def estimator_kind(kind: int | str | EstimatorKind) -> EstimatorKind:
    """``kind`` (a member, its name or its kernel code) as an :class:`EstimatorKind`; a
    ``ValueError`` naming the valid kinds otherwise."""
    return EstimatorKind.parse(kind)


def estimator_constants(kind: int, o: float, t: float) -> tuple[float, float, float, float, float]:
    """Host-side constants of the slope kernels: ``(rectified, coef, exponent, t, m)``.

    ``rectified = m^(1/o) / m`` (ReSTE's slope for ``|x| <= m``), ``coef = 1/o`` and
    ``exponent = (1-o)/o`` (``coef * |x|^exponent`` for ``m < |x| <= t``). Computed in float64
    here and rounded to float32 at launch, as the reference rounds them when it meets
    float32 tensors. Raises ``ValueError`` for ``o`` or ``t`` that are not finite numbers > 0.
    """
    kind = estimator_kind(kind)
    o, t = float(o), float(t)
    if not (math.isfinite(o) and o > 0):
        raise ValueError(f"estimator parameter o must be a finite number > 0 (ReSTE uses o >= 1), got {o}")
    if not (t > 0):  # NaN fails too; t = inf (no clipping) is allowed
        raise ValueError(f"estimator parameter t must be > 0 (the clipping threshold), got {t}")
    return RESTE_M ** (1.0 / o) / RESTE_M, 1.0 / o, (1.0 - o) / o, t, RESTE_M


@triton.jit
def estimator_slope(x, rectified, coef, exponent, t, m, KIND: tl.constexpr, INTERPRET: tl.constexpr):
    """The slope ``g(x)`` of estimator ``KIND`` in float32 (see the table in the module docstring).

    NaN lands in no ``<=`` branch: slope 0, or 1 for IDENTITY_STE. ``|x|^exponent`` is
    ``exp2(exponent * log2|x|)`` with ``|x|`` clamped to ``[m, t]`` first: lanes outside take
    another branch anyway, and log2 never sees 0 or inf (no inf * 0 = NaN to mask). On the
    GPU log2 is the hardware approximation (MUFU.LG2, like exp2): ``tl.log2`` is libdevice's
    accurate log2f, ~25 instructions an element, too many for a kernel that should be
    memory-bound in bf16. ``INTERPRET`` selects ``tl.log2`` (the interpreter has no libdevice).
    """
    a = tl.abs(x.to(tl.float32))
    if KIND == _EST_IDENTITY_STE:
        g = tl.full(a.shape, 1.0, tl.float32)
    elif KIND == _EST_CLIPPED_STE:
        g = tl.where(a <= t, 1.0, 0.0)
    elif KIND == _EST_APPROX_SIGN:
        g = tl.where(a <= 1.0, 2.0 - 2.0 * tl.minimum(a, 1.0), 0.0)  # clamped: no overflow off-branch
    else:  # _EST_RESTE
        a_in = tl.minimum(tl.maximum(a, m), t)
        if INTERPRET:
            log2_a = tl.log2(a_in)
        else:
            log2_a = tl.extra.cuda.libdevice.fast_log2f(a_in)
        power = coef * tl.exp2(exponent * log2_a)
        g = tl.where(a <= t, tl.where(a <= m, rectified, power), 0.0)  # the reference's order (matters if t < m)
    return g


@triton.jit
def _sign_grad_kernel(
    x_ptr, grad_out_ptr, grad_in_ptr, n, rectified, coef, exponent, t, m,
    KIND: tl.constexpr, BLOCK: tl.constexpr, INDEX_64: tl.constexpr, INTERPRET: tl.constexpr,
):
    """``grad_in[i] = g(x[i]) * grad_out[i]`` over ``n`` elements, in ``grad_in``'s dtype."""
    pid = tl.program_id(0)
    if INDEX_64:
        pid = pid.to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    grad_out = tl.load(grad_out_ptr + offs, mask=mask).to(tl.float32)
    g = estimator_slope(x, rectified, coef, exponent, t, m, KIND, INTERPRET)
    tl.store(grad_in_ptr + offs, (g * grad_out).to(grad_in_ptr.dtype.element_ty), mask=mask)


def sign_grad(x: torch.Tensor, grad_out: torch.Tensor, kind: int, o: float = 1.0, t: float = 1.5) -> torch.Tensor:
    """Triton :func:`sign_grad_reference`: ``grad_in = g(x) * grad_out`` for estimator ``kind``.

    Args:
        x: the binarized input saved by the forward; fp16, bf16 or fp32, any shape.
        grad_out: gradient of the ±1 output; same shape and device as ``x``, fp16/bf16/fp32.
        kind: an :class:`EstimatorKind` (or its name or code); ``o``, ``t``: ReSTE's power and
            clipping threshold (``t`` also clips CLIPPED_STE).

    Returns:
        ``grad_in`` with ``x``'s shape and dtype. The slope and the product are computed in
        float32 and rounded once. NaN in ``x`` gives slope 0 (1 for IDENTITY_STE), so ``grad_in``
        is 0 (``grad_out`` for IDENTITY_STE) there. When ``x`` and ``grad_out`` share a dense layout
        (contiguous, channels_last, ...) they are read in place and ``grad_in`` gets that
        layout; otherwise both are copied to contiguous memory first.
    """
    check_kernel_tensor(x, "x", "sign_grad")
    check_kernel_tensor(grad_out, "grad_out", "sign_grad")
    check_same_shape_device(x, grad_out, ("x", "grad_out"), "sign_grad")
    kind = estimator_kind(kind)
    rectified, coef, exponent, t, m = estimator_constants(kind, o, t)
    x, grad_out = shared_dense_layout(x, grad_out)
    grad_in = empty_like_layout(x)
    n = x.numel()
    if n == 0:
        return grad_in
    grid = (triton.cdiv(n, SIGN_GRAD_BLOCK),)
    with on_device(x.device):
        _sign_grad_kernel[grid](
            x, grad_out, grad_in, n, rectified, coef, exponent, t, m,
            KIND=kind.code, BLOCK=SIGN_GRAD_BLOCK, INDEX_64=needs_int64_index(grid[0] * SIGN_GRAD_BLOCK - 1),
            INTERPRET=interpreting(), num_warps=SIGN_GRAD_WARPS,
        )
    return grad_in
