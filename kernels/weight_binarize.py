"""Scaled weight binarization: ``w -> alpha * binarize(w)`` and its exact backward.

``alpha = mean(|w|)`` over the whole tensor (``"tensor"``, the reference code), over each
output channel (``"channel"``: dim 0 is the output channel), or ``alpha = 1`` (``"none"``).
alpha is not detached, as in the reference code, so the backward of
``est(w) * alpha(w)`` (``est``: binarize forward, estimator slope ``g`` backward) is::

    grad_w = alpha * g(w) * grad_out  +  sgn(w) / n * sum_group(grad_out * binarize(w))

where the sum and ``n`` run over the elements that share one alpha, and ``sgn`` is the
derivative of ``|w|`` that autograd uses (``sgn(0) = 0``, ``sgn(NaN) = 0``). Statistics are
computed in float32 for half-precision weights.

NaN weights: alpha of their group is NaN, so the group's output and gradient are NaN.

The ``*_reference`` functions define the semantics (and are the CPU fallback);
:func:`scaled_binarize_forward` / :func:`scaled_binarize_backward` are the Triton versions.
"""

from __future__ import annotations

import torch
from .triton_compat import tl, triton

from .binarize import binarize, binarize_reference
from .bits import interpreting, nonnegative
from .elementwise import check_kernel_tensor, check_same_shape_device, needs_int64_index
from .launch import on_device
from .sign_grad import (
    compute_dtype,
    estimator_constants,
    estimator_kind,
    estimator_slope,
    estimator_slope_reference,
    sign_grad,
)

SCALE_MODES = ("tensor", "channel", "none")


def check_scale_mode(scale: str) -> str:
    if scale not in SCALE_MODES:
        raise ValueError(f"unknown weight scale {scale!r}; expected one of {', '.join(SCALE_MODES)}")
    return scale


def _reduce_dims(w: torch.Tensor, scale: str) -> tuple[int, ...]:
    return tuple(range(w.dim())) if scale == "tensor" else tuple(range(1, w.dim()))


def weight_scale_reference(w: torch.Tensor, scale: str) -> torch.Tensor | None:
    """alpha in float32 (float64 for float64 ``w``): 0-d for ``"tensor"``, ``(C_out, 1, ...)``
    for ``"channel"``, ``None`` for ``"none"``."""
    check_scale_mode(scale)
    if scale == "none":
        return None
    if scale == "channel" and w.dim() < 2:
        raise ValueError(f"scale='channel' needs a weight with an output-channel dim and at least one more "
                         f"dim, got shape {tuple(w.shape)}; use scale='tensor'")
    a = w.to(compute_dtype(w.dtype)).abs()
    if scale == "tensor":
        return a.mean()
    return a.mean(dim=_reduce_dims(w, scale), keepdim=True)


def scaled_binarize_forward_reference(w: torch.Tensor, scale: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(alpha * binarize(w), alpha)``; the first in ``w``'s dtype, alpha as :func:`weight_scale_reference`."""
    alpha = weight_scale_reference(w, scale)
    if alpha is None:
        return binarize_reference(w), None
    return torch.where(w >= 0, alpha, -alpha).to(w.dtype), alpha


def scaled_binarize_backward_reference(
    w: torch.Tensor, alpha: torch.Tensor | None, grad_out: torch.Tensor, scale: str, kind: int,
    o: float = 1.0, t: float = 1.5,
) -> torch.Tensor:
    """Gradient of ``alpha(w) * est(w)`` with respect to ``w``; same shape and dtype as ``w``."""
    g = estimator_slope_reference(w, kind, o, t)
    go = grad_out.to(g.dtype)
    if alpha is None:
        return (g * go).to(w.dtype)
    wc = w.to(g.dtype)
    dims = _reduce_dims(w, scale)
    n = 1
    for d in dims:
        n *= w.shape[d]
    through_alpha = torch.where(wc >= 0, go, -go).sum(dim=dims, keepdim=True) / n  # sum(grad * binarize(w)) / n
    # d|w|/dw as autograd defines it for abs (0 at 0): a derivative, not a binarization.
    return torch.addcmul(torch.sgn(wc) * through_alpha, g.mul_(alpha), go).to(w.dtype)


GROUP_BLOCK = 1024
"""Elements a program handles per loop step in the weight kernels."""
FUSED_MAX_GROUP = 16384
"""Largest group (elements sharing one alpha) reduced inside the elementwise launch."""
MAX_SPLITS = 4096
"""Most programs one group's reduction is split over (partials are summed in one tile)."""
WEIGHT_WARPS = 4


@triton.jit
def _group_chunk(k, chunk, INDEX_64: tl.constexpr):
    """This program's group ``g`` (axis 0) and chunk ``s`` (axis 1): ``(g, s, row, lo, hi)`` with
    ``row = g * k`` the group's first element and ``lo <= j < hi`` the chunk (int64 when ``INDEX_64``)."""
    g = tl.program_id(0)
    s = tl.program_id(1)
    if INDEX_64:
        g = g.to(tl.int64)
        s = s.to(tl.int64)
    lo = s * chunk
    return g, s, g * k, lo, tl.minimum(lo + chunk, k)


@triton.jit
def _group_sum(w_ptr, grad_out_ptr, row, lo, hi, WITH_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    """Float32 sum over elements ``lo <= j < hi`` of the group starting at ``row``:
    ``|w|``, or ``grad_out * binarize(w)`` when ``WITH_GRAD``."""
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(lo, hi, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < hi
        w = tl.load(w_ptr + row + offs, mask=mask, other=0.0).to(tl.float32)
        if WITH_GRAD:
            grad_out = tl.load(grad_out_ptr + row + offs, mask=mask, other=0.0).to(tl.float32)
            acc += tl.where(nonnegative(w), grad_out, -grad_out)
        else:
            acc += tl.abs(w)
    return tl.sum(acc, axis=0)


@triton.jit
def _group_total(w_ptr, grad_out_ptr, partial_ptr, g, row, k, splits,
                 WITH_GRAD: tl.constexpr, FUSED: tl.constexpr, SPLITS_BLOCK: tl.constexpr, BLOCK: tl.constexpr):
    """The whole group's sum: computed here when ``FUSED``, else the sum of its ``splits`` partials
    (same order in every program, so every program gets the same float32 value)."""
    if FUSED:
        total = _group_sum(w_ptr, grad_out_ptr, row, 0, k, WITH_GRAD, BLOCK)
    else:
        s = tl.arange(0, SPLITS_BLOCK)
        partials = tl.load(partial_ptr + g * splits + s, mask=s < splits, other=0.0)
        total = tl.sum(partials, axis=0)
    return total


@triton.jit
def _group_partial_sum_kernel(
    w_ptr, grad_out_ptr, partial_ptr, k, chunk, splits,
    WITH_GRAD: tl.constexpr, BLOCK: tl.constexpr, INDEX_64: tl.constexpr,
):
    """``partial[g, s]``: sum over chunk ``s`` (``chunk`` elements) of group ``g`` (``k`` elements)."""
    g, s, row, lo, hi = _group_chunk(k, chunk, INDEX_64)
    total = _group_sum(w_ptr, grad_out_ptr, row, lo, hi, WITH_GRAD, BLOCK)
    tl.store(partial_ptr + g * splits + s, total)


@triton.jit
def _scaled_binarize_forward_kernel(
    w_ptr, partial_ptr, alpha_ptr, out_ptr, k, chunk, splits,
    FUSED: tl.constexpr, SPLITS_BLOCK: tl.constexpr, BLOCK: tl.constexpr, INDEX_64: tl.constexpr,
):
    """``alpha[g] = sum|w| / k``; ``out = +alpha`` where ``w >= 0``, ``-alpha`` elsewhere, over chunk
    ``program_id(1)`` of group ``program_id(0)``."""
    g, s, row, lo, hi = _group_chunk(k, chunk, INDEX_64)
    total = _group_total(w_ptr, w_ptr, partial_ptr, g, row, k, splits, False, FUSED, SPLITS_BLOCK, BLOCK)
    alpha = total / k
    if s == 0:
        tl.store(alpha_ptr + g, alpha)
    for start in range(lo, hi, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < hi
        w = tl.load(w_ptr + row + offs, mask=mask).to(tl.float32)
        out = tl.where(nonnegative(w), alpha, -alpha)
        tl.store(out_ptr + row + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _scaled_binarize_backward_kernel(
    w_ptr, grad_out_ptr, alpha_ptr, partial_ptr, grad_w_ptr, k, chunk, splits,
    rectified, coef, exponent, t, m,
    KIND: tl.constexpr, FUSED: tl.constexpr, SPLITS_BLOCK: tl.constexpr, BLOCK: tl.constexpr,
    INDEX_64: tl.constexpr, INTERPRET: tl.constexpr,
):
    """``grad_w = alpha * g(w) * grad_out + sgn(w) * sum_group(grad_out * binarize(w)) / k`` over
    chunk ``program_id(1)`` of group ``program_id(0)``."""
    g, s, row, lo, hi = _group_chunk(k, chunk, INDEX_64)
    total = _group_total(w_ptr, grad_out_ptr, partial_ptr, g, row, k, splits, True, FUSED, SPLITS_BLOCK, BLOCK)
    through_alpha = total / k
    alpha = tl.load(alpha_ptr + g)
    for start in range(lo, hi, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < hi
        w = tl.load(w_ptr + row + offs, mask=mask).to(tl.float32)
        grad_out = tl.load(grad_out_ptr + row + offs, mask=mask).to(tl.float32)
        slope = estimator_slope(w, rectified, coef, exponent, t, m, KIND, INTERPRET)
        sgn = tl.where(w > 0, 1.0, tl.where(w < 0, -1.0, 0.0))  # d|w|/dw as autograd has it; NaN -> 0
        grad_w = alpha * slope * grad_out + sgn * through_alpha
        tl.store(grad_w_ptr + row + offs, grad_w.to(grad_w_ptr.dtype.element_ty), mask=mask)


def group_plan(groups: int, k: int) -> tuple[bool, int, int, int, bool]:
    """How a ``(groups, k)`` reduction + elementwise pass is launched.

    Returns ``(fused, chunk, splits, splits_block, index_64)``: groups of at most
    :data:`FUSED_MAX_GROUP` elements are reduced inside the elementwise kernel (one launch, one
    program per group); larger groups are split into ``splits`` chunks of ``chunk`` elements,
    reduced by a partial-sum kernel first (two launches, deterministic: no atomics).
    """
    if k <= FUSED_MAX_GROUP:
        chunk, splits = max(k, 1), 1
        fused = True
    else:
        chunk = max(FUSED_MAX_GROUP, triton.cdiv(triton.cdiv(k, MAX_SPLITS), GROUP_BLOCK) * GROUP_BLOCK)
        splits = triton.cdiv(k, chunk)
        fused = False
    last_offset = groups * k + GROUP_BLOCK + chunk
    return fused, chunk, splits, triton.next_power_of_2(splits), needs_int64_index(last_offset)


def _groups(w: torch.Tensor, scale: str) -> int:
    return 1 if scale == "tensor" else w.shape[0]


def _alpha_shape(w: torch.Tensor, scale: str) -> tuple[int, ...]:
    return () if scale == "tensor" else (w.shape[0],) + (1,) * (w.dim() - 1)


def _check_weight(w: torch.Tensor, scale: str, op: str) -> str:
    check_kernel_tensor(w, "w", op)
    scale = check_scale_mode(scale)
    if scale == "channel" and w.dim() < 2:
        raise ValueError(f"{op}: scale='channel' needs a weight with an output-channel dim and at least one more "
                         f"dim, got shape {tuple(w.shape)}; use scale='tensor'")
    return scale


def scaled_binarize_forward(w: torch.Tensor, scale: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Triton :func:`scaled_binarize_forward_reference`: ``(alpha * binarize(w), alpha)``.

    Args:
        w: fp16, bf16 or fp32 weight, any shape (dim 0 = output channel for ``"channel"``).
        scale: ``"tensor"``, ``"channel"`` or ``"none"``.

    Returns:
        ``out`` in ``w``'s dtype and shape (contiguous) and ``alpha`` in float32: 0-d for
        ``"tensor"``, ``(C_out, 1, ...)`` for ``"channel"``, ``None`` for ``"none"``. alpha is
        summed in float32 in a fixed order (deterministic; it may differ from
        ``torch.mean`` in the last bits). A non-contiguous ``w`` is copied to contiguous
        memory first. One launch for groups up to :data:`FUSED_MAX_GROUP` elements, two above.
    """
    scale = _check_weight(w, scale, "scaled_binarize_forward")
    if scale == "none":
        return binarize(w), None
    w = w.contiguous()
    groups = _groups(w, scale)
    k = w.numel() // groups if groups else 0
    out = torch.empty_like(w)
    alpha = torch.empty(groups, dtype=torch.float32, device=w.device)
    if w.numel() == 0:
        return out, alpha.fill_(float("nan")).reshape(_alpha_shape(w, scale))  # mean of nothing, as torch
    fused, chunk, splits, splits_block, index_64 = group_plan(groups, k)
    partial = _partial_sums(w, w, groups, k, chunk, splits, fused, index_64, with_grad=False)
    with on_device(w.device):
        _scaled_binarize_forward_kernel[(groups, splits)](
            w, partial, alpha, out, k, chunk, splits,
            FUSED=fused, SPLITS_BLOCK=splits_block, BLOCK=GROUP_BLOCK, INDEX_64=index_64, num_warps=WEIGHT_WARPS,
        )
    return out, alpha.reshape(_alpha_shape(w, scale))


def scaled_binarize_backward(
    w: torch.Tensor, alpha: torch.Tensor | None, grad_out: torch.Tensor, scale: str, kind: int,
    o: float = 1.0, t: float = 1.5,
) -> torch.Tensor:
    """Triton :func:`scaled_binarize_backward_reference`: the gradient of ``alpha(w) * est(w)``.

    Args:
        w: the weight of the forward (fp16, bf16 or fp32).
        alpha: the forward's alpha (any float dtype, read as float32; ``None`` for ``"none"``).
        grad_out: gradient of the scaled binary weight; ``w``'s shape and device.
        scale, kind, o, t: as in the forward and :func:`~bnnkit.kernels.sign_grad.sign_grad`.

    Returns:
        ``grad_w`` in ``w``'s dtype and shape, alpha's own gradient included (alpha is not
        detached); contiguous (non-contiguous operands are copied first). Slopes and sums in
        float32, the group sum in a fixed order. NaN in ``w`` makes the group's alpha and
        hence its gradient NaN (as the reference).
    """
    scale = _check_weight(w, scale, "scaled_binarize_backward")
    check_kernel_tensor(grad_out, "grad_out", "scaled_binarize_backward")
    check_same_shape_device(w, grad_out, ("w", "grad_out"), "scaled_binarize_backward")
    if scale == "none":
        return sign_grad(w, grad_out, kind, o, t)
    kind = estimator_kind(kind)
    rectified, coef, exponent, t, m = estimator_constants(kind, o, t)
    w, grad_out = w.contiguous(), grad_out.contiguous()
    groups = _groups(w, scale)
    if alpha is None or alpha.numel() != groups:
        got = "None" if alpha is None else f"{alpha.numel()} values"
        raise ValueError(f"scaled_binarize_backward: scale={scale!r} on shape {tuple(w.shape)} needs alpha with "
                         f"{groups} value(s) (the forward's alpha), got {got}")
    alpha = alpha.detach().reshape(groups).to(device=w.device, dtype=torch.float32).contiguous()
    k = w.numel() // groups if groups else 0
    grad_w = torch.empty_like(w)
    if w.numel() == 0:
        return grad_w
    fused, chunk, splits, splits_block, index_64 = group_plan(groups, k)
    partial = _partial_sums(w, grad_out, groups, k, chunk, splits, fused, index_64, with_grad=True)
    with on_device(w.device):
        _scaled_binarize_backward_kernel[(groups, splits)](
            w, grad_out, alpha, partial, grad_w, k, chunk, splits, rectified, coef, exponent, t, m,
            KIND=kind.code, FUSED=fused, SPLITS_BLOCK=splits_block, BLOCK=GROUP_BLOCK, INDEX_64=index_64,
            INTERPRET=interpreting(), num_warps=WEIGHT_WARPS,
        )
    return grad_w


def _partial_sums(w: torch.Tensor, grad_out: torch.Tensor, groups: int, k: int, chunk: int, splits: int,
                  fused: bool, index_64: bool, with_grad: bool) -> torch.Tensor:
    """``(groups, splits)`` float32 partial sums (first launch), or a 1-element dummy when fused."""
    if fused:
        return torch.empty(1, dtype=torch.float32, device=w.device)
    partial = torch.empty((groups, splits), dtype=torch.float32, device=w.device)
    with on_device(w.device):
        _group_partial_sum_kernel[(groups, splits)](
            w, grad_out, partial, k, chunk, splits,
            WITH_GRAD=with_grad, BLOCK=GROUP_BLOCK, INDEX_64=index_64, num_warps=WEIGHT_WARPS,
        )
    return partial
