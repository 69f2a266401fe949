"""The fused epilogue of the binary GEMM and convolution kernels.

Every binary kernel ends with the same stage on its accumulator ``acc`` (int32 for W1A1,
float32 for W1A16), one row per output pixel / token and one column per output channel ``c``::

    y = post_scale[c] * act(acc * scale[c] + bias[c]) + post_bias[c]  (+ residual)

``act`` is ReLU or the identity. Both orders of this model family are covered: conv -> ReLU
-> BN is ``scale = alpha``, ReLU, ``post_* = BN affine``; conv -> BN -> ReLU folds BN into
``scale``/``bias`` with ``post_scale = 1``, ``post_bias = 0``. The result is written as
:class:`~bnnkit.kernels.kinds.OutputKind` says:

- ``OutputKind.ACC``: the raw accumulator, no epilogue (what the exactness tests compare);
- ``OutputKind.FLOAT``: ``y`` in fp32, fp16 or bf16;
- ``OutputKind.SIGN_INT8``: ``+1`` where ``y >= 0``, ``-1`` elsewhere (NaN -> -1), as int8;
- ``OutputKind.PACKED``: the same signs packed along channels (:mod:`bnnkit.kernels.bitpack`).

The kernels read the stage as a :class:`KernelStage`: the ``(4, C)`` float32 parameter rows or
the ``(2, C)`` int32 thresholds, exactly the buffers a packed layer stores, so a layer hands
its buffers to the kernel as they are.

For a consumer that only needs the sign, :func:`sign_thresholds` turns an epilogue into the
per-channel integer form ``bit = lo[c] <= acc <= hi[c]``: ``y(acc)`` is monotone in ``acc``
for fixed parameters (non-increasing where the folded scale is negative, constant where it is
zero), so ``{acc : y >= 0}`` is one interval of integers. The bounds are found by bisection
on the epilogue evaluated in the parameters' precision: with float32 parameters the integer
form agrees bit for bit with :func:`epilogue_reference` followed by ``y >= 0``; with float64
parameters (``pack``) with the same formula in float64.
"""

from __future__ import annotations

import dataclasses

import torch
from .triton_compat import tl, triton

from .bitpack import pack_signs_reference
from .bits import nonnegative
from .kinds import _OUT_ACC, _OUT_FLOAT, _OUT_SIGN_INT8, OutputKind

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


FLOAT_OUTPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def output_kind(kind: OutputKind | str) -> OutputKind:
    """``kind`` as an :class:`OutputKind` (a ``ValueError`` naming the kinds otherwise)."""
    return OutputKind.parse(kind)


@dataclasses.dataclass(frozen=True)
class Epilogue:
    """Per-channel float epilogue ``y = post_scale * act(acc * scale + bias) + post_bias``.

    Each vector is ``(C,)`` (any float dtype, used in float32) or ``None`` for its neutral
    value (1 for the scales, 0 for the biases); ``relu`` selects ``act``.
    """

    scale: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    relu: bool = False
    post_scale: torch.Tensor | None = None
    post_bias: torch.Tensor | None = None

    def params(self, channels: int, device: torch.device | str) -> torch.Tensor:
        """``(4, C)`` float32 rows ``scale, bias, post_scale, post_bias`` (the kernels' layout)."""
        rows = []
        for name, neutral in (("scale", 1.0), ("bias", 0.0), ("post_scale", 1.0), ("post_bias", 0.0)):
            v = getattr(self, name)
            if v is None:
                rows.append(torch.full((channels,), neutral, dtype=torch.float32, device=device))
                continue
            if v.dim() != 1 or v.shape[0] != channels:
                raise ValueError(f"epilogue {name} must have shape ({channels},), got {tuple(v.shape)}")
            if not v.is_floating_point():
                raise TypeError(f"epilogue {name} must be a float tensor, got {v.dtype}")
            rows.append(v.detach().to(device=device, dtype=torch.float32))
        return torch.stack(rows).contiguous()


@dataclasses.dataclass(frozen=True)
class SignThreshold:
    """Integer sign form of an epilogue: ``bit[c] = lo[c] <= acc <= hi[c]`` (int32 ``(C,)`` each)."""

    lo: torch.Tensor
    hi: torch.Tensor

    def packed(self, channels: int, device: torch.device | str) -> torch.Tensor:
        """``(2, C)`` int32 rows ``lo, hi`` (the kernels' layout)."""
        for name in ("lo", "hi"):
            v = getattr(self, name)
            if v.shape != (channels,):
                raise ValueError(f"threshold {name} must have shape ({channels},), got {tuple(v.shape)}")
            if v.dtype != torch.int32:
                raise TypeError(f"threshold {name} must be int32, got {v.dtype}")
        return torch.stack([self.lo, self.hi]).to(device).contiguous()


@dataclasses.dataclass(frozen=True)
class KernelStage:
    """An output stage in the layout the kernels read, which is what packed layers store.

    - ``params``: ``(4, C)`` float32 rows ``scale, bias, post_scale, post_bias`` of the float
      epilogue, or an empty tensor when the signs come from ``thresholds``;
    - ``thresholds``: ``(2, C)`` int32 rows ``lo, hi`` (``bit = lo <= acc <= hi``), or empty;
    - ``relu``: the float epilogue's ``act``.

    Both empty: no output stage (``out_kind="acc"``). Both tensors are handed to the kernel as
    they are (contiguous, on the input's device; the empty one is never read), so a stage
    built once serves every call with no tensor work. :func:`output_stage` builds one from an
    :class:`Epilogue` or a :class:`SignThreshold`.
    """

    params: torch.Tensor
    thresholds: torch.Tensor
    relu: bool = False

    @property
    def has_epilogue(self) -> bool:
        return self.params.numel() > 0

    @property
    def has_threshold(self) -> bool:
        return self.thresholds.numel() > 0

    def check(self, channels: int, device: torch.device) -> None:
        """Shape, dtype, layout and device of the two tensors (metadata only, no tensor work)."""
        for name, t, rows, dtype in (("params", self.params, 4, torch.float32),
                                     ("thresholds", self.thresholds, 2, torch.int32)):
            if t.numel() == 0:
                continue
            if tuple(t.shape) != (rows, channels) or t.dtype != dtype or not t.is_contiguous():
                raise ValueError(f"the output stage's {name} must be a contiguous {dtype} tensor of shape "
                                 f"({rows}, {channels}) or empty, got {t.dtype} {tuple(t.shape)}"
                                 f"{'' if t.is_contiguous() else ' (not contiguous)'}")
            if t.device != device:
                raise ValueError(f"the output stage's {name} is on {t.device}, the input on {device}")
        if self.has_epilogue and self.has_threshold:
            raise ValueError("an output stage takes either epilogue parameters or sign thresholds, not both")

    def reference_args(self) -> dict:
        """``{"epilogue": Epilogue | None, "threshold": SignThreshold | None}`` for the references."""
        epilogue = Epilogue(scale=self.params[0], bias=self.params[1], relu=self.relu, post_scale=self.params[2],
                            post_bias=self.params[3]) if self.has_epilogue else None
        threshold = SignThreshold(self.thresholds[0], self.thresholds[1]) if self.has_threshold else None
        return {"epilogue": epilogue, "threshold": threshold}


def output_stage(kind: OutputKind, *, epilogue: Epilogue | None, threshold: SignThreshold | None,
                 stage: KernelStage | None, channels: int, device: torch.device) -> KernelStage:
    """The :class:`KernelStage` of a call: ``stage`` as given, or built on ``device`` from an
    ``epilogue`` or a ``threshold`` (at most one of the three); no epilogue means the identity
    for the outputs that need one. :func:`check_output_request` checks it against ``kind``."""
    if stage is not None:
        if epilogue is not None or threshold is not None:
            raise ValueError("pass either stage= (the kernels' layout) or epilogue= / threshold=, not both")
        return stage
    if threshold is not None and epilogue is not None:
        raise ValueError("pass either a SignThreshold or an epilogue/residual, not both")
    no_params = torch.empty(0, dtype=torch.float32, device=device)
    no_thresholds = torch.empty(0, dtype=torch.int32, device=device)
    if threshold is not None:
        return KernelStage(no_params, threshold.packed(channels, device))
    if kind == OutputKind.ACC and epilogue is None:
        return KernelStage(no_params, no_thresholds)
    epilogue = epilogue or Epilogue()
    return KernelStage(epilogue.params(channels, device), no_thresholds, relu=bool(epilogue.relu))


def epilogue_reference(acc: torch.Tensor, epilogue: Epilogue | None, residual: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """``y`` in float32 for ``acc`` of shape ``(..., C)``; ``residual`` (same shape) is added last."""
    channels = acc.shape[-1]
    p = (epilogue or Epilogue()).params(channels, acc.device)
    y = acc.to(torch.float32) * p[0] + p[1]
    if epilogue is not None and epilogue.relu:
        y = torch.relu(y)
    y = y * p[2] + p[3]
    if residual is not None:
        y = y + residual.to(torch.float32)
    return y


def threshold_sign_reference(acc: torch.Tensor, threshold: SignThreshold) -> torch.Tensor:
    """Bool ``(..., C)``: ``lo <= acc <= hi`` per channel (``acc`` int32)."""
    return (acc >= threshold.lo.to(acc.device)) & (acc <= threshold.hi.to(acc.device))


def sign_thresholds(epilogue: Epilogue, channels: int, k: int) -> SignThreshold:
    """The interval form of ``y(acc) >= 0`` for integer ``|acc| <= k`` (``k``: the reduction
    length), with ``y = post_scale * act(acc * scale + bias) + post_bias`` evaluated in the
    precision of the parameters: float64 when any of them is float64 (what ``pack`` passes,
    so the bits are the signs of the trained model evaluated in float64), else float32,
    exactly as :func:`epilogue_reference`.

    Each step of ``y`` (a product, a sum, ReLU, one rounding each) is monotone in ``acc``, so
    ``{acc : y >= 0}`` is ``[t, k]``, ``[-k, t]``, empty or everything; ``t`` is found per
    channel by bisection over the integers. Outside ``[-k, k]`` the interval is extended by
    monotonicity (``INT32_MIN`` / ``INT32_MAX`` bounds). Raises if a parameter is not finite.
    """
    if k < 0:
        raise ValueError(f"the reduction length k must be >= 0, got {k}")
    fields = {name: getattr(epilogue, name) for name in ("scale", "bias", "post_scale", "post_bias")}
    dtype = torch.float64 if any(v is not None and v.dtype == torch.float64 for v in fields.values()) \
        else torch.float32
    p = epilogue.params(channels, "cpu").to(dtype)
    for row, name in enumerate(fields):  # float64 rows as given, not through params()' float32
        if fields[name] is not None and fields[name].dtype == torch.float64:
            p[row] = fields[name].detach().cpu()
    if not torch.isfinite(p).all():
        raise ValueError("epilogue parameters must be finite to fold into sign thresholds")

    def positive(acc: torch.Tensor) -> torch.Tensor:  # acc: int64 (C,) -> bool (C,)
        y = acc.to(dtype) * p[0] + p[1]
        if epilogue.relu:
            y = torch.relu(y)
        return y * p[2] + p[3] >= 0

    low = torch.full((channels,), -k, dtype=torch.int64)
    high = torch.full((channels,), k, dtype=torch.int64)
    at_low, at_high = positive(low), positive(high)
    increasing = ~at_low & at_high  # the interval is [t, k]: t = the smallest positive acc
    decreasing = at_low & ~at_high  # [-k, t]: t = the largest positive acc
    # bisection invariant: increasing: y(lo) < 0 <= y(hi); decreasing: y(lo) >= 0 > y(hi)
    lo, hi = low.clone(), high.clone()
    while bool(((hi - lo) > 1).any()):
        mid = (lo + hi) // 2
        pos = positive(mid)
        move_hi = torch.where(increasing, pos, ~pos)
        lo = torch.where(move_hi, lo, mid)
        hi = torch.where(move_hi, mid, hi)
    # the open end of the interval extends beyond [-k, k] (monotonicity)
    t_lo = torch.where(increasing, hi, torch.full_like(hi, INT32_MIN))
    t_hi = torch.where(decreasing, lo, torch.full_like(lo, INT32_MAX))
    always = at_low & at_high
    never = ~at_low & ~at_high
    t_lo = torch.where(always, INT32_MIN, torch.where(never, INT32_MAX, t_lo))
    t_hi = torch.where(always, INT32_MAX, torch.where(never, INT32_MIN, t_hi))
    return SignThreshold(t_lo.to(torch.int32), t_hi.to(torch.int32))


def finish_reference(
    acc: torch.Tensor,
    *,
    out_kind: OutputKind | str,
    epilogue: Epilogue | None = None,
    threshold: SignThreshold | None = None,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The output stage of the kernels in PyTorch: ``acc (..., C)`` -> what ``out_kind`` says.

    Shapes: ACC / FLOAT / SIGN_INT8 keep ``(..., C)``; PACKED gives ``(..., ceil(C/32))`` int32.
    """
    kind = output_kind(out_kind)
    if kind == OutputKind.ACC:
        return acc
    if threshold is not None:
        positive = threshold_sign_reference(acc, threshold)
    else:
        y = epilogue_reference(acc, epilogue, residual)
        if kind == OutputKind.FLOAT:
            return y.to(out_dtype)
        positive = y >= 0
    if kind == OutputKind.SIGN_INT8:
        return torch.where(positive, 1, -1).to(torch.int8)
    return pack_signs_reference(torch.where(positive, 1.0, -1.0))


def check_output_request(kind: OutputKind, stage: KernelStage, *, residual: torch.Tensor | None,
                         out_dtype: torch.dtype, real_acc: bool, channels: int, device: torch.device) -> None:
    """Validate an output kind with its stage and residual (``real_acc``: W1A16's float accumulator)."""
    stage.check(channels, device)
    if stage.has_threshold:
        if kind not in (OutputKind.SIGN_INT8, OutputKind.PACKED):
            raise ValueError(f"a SignThreshold produces signs; out_kind must be sign_int8 or packed, got {kind.value}")
        if residual is not None:
            raise ValueError("pass either a SignThreshold or an epilogue/residual, not both")
        if real_acc:
            raise ValueError("SignThreshold needs an integer accumulator (W1A1), not a real-valued input")
    if kind == OutputKind.ACC:
        if stage.has_epilogue or residual is not None:
            raise ValueError("out_kind='acc' returns the raw accumulator; it takes no epilogue or residual")
    elif not (stage.has_epilogue or stage.has_threshold):
        raise ValueError(f"out_kind={kind.value!r} needs epilogue parameters ((4, C) float32) or sign thresholds "
                         "((2, C) int32)")
    if kind == OutputKind.FLOAT and out_dtype not in FLOAT_OUTPUT_DTYPES:
        raise TypeError(f"out_dtype must be one of float32, float16, bfloat16, got {out_dtype}")


def output_shape(rows: tuple[int, ...], channels: int, kind: OutputKind) -> tuple[int, ...]:
    return (*rows, (channels + 31) // 32) if kind == OutputKind.PACKED else (*rows, channels)


def output_dtype(kind: OutputKind, out_dtype: torch.dtype, real_acc: bool) -> torch.dtype:
    if kind == OutputKind.ACC:
        return torch.float32 if real_acc else torch.int32
    return {OutputKind.FLOAT: out_dtype, OutputKind.SIGN_INT8: torch.int8, OutputKind.PACKED: torch.int32}[kind]


@triton.jit
def store_epilogue(acc, offs_m, n0, M, N, out_ptr, stride_om, res_ptr, stride_rm, params_ptr, thr_ptr,
                   OUT_KIND: tl.constexpr, SIGN_FROM_THRESHOLD: tl.constexpr, RELU: tl.constexpr,
                   HAS_RESIDUAL: tl.constexpr, BN: tl.constexpr):
    """Apply the epilogue to the ``(BM, BN)`` accumulator tile of rows ``offs_m``, channels
    ``n0 .. n0 + BN`` and store it. ``stride_om`` counts elements of ``out`` (words for PACKED);
    ``n0`` is a multiple of ``BN``, which is a multiple of 32 for packed outputs.

    With a float epilogue, tiles of 64 channels are processed in halves, wider ones in
    quarters: the float temporaries and the residual tile then need a fraction of the
    registers on top of the accumulator (without this, conv tiles of 128x128 spill on sm_90).
    """
    BM: tl.constexpr = acc.shape[0]
    if OUT_KIND == _OUT_ACC or SIGN_FROM_THRESHOLD:  # no float temporaries: splitting would only add shuffles
        _store_epilogue_part(acc, offs_m, n0, M, N, out_ptr, stride_om, res_ptr, stride_rm, params_ptr, thr_ptr,
                             OUT_KIND, SIGN_FROM_THRESHOLD, RELU, HAS_RESIDUAL, BM, BN)
    elif BN >= 128:
        left, right = tl.split(tl.permute(tl.reshape(acc, (BM, 2, BN // 2)), (0, 2, 1)))
        _store_epilogue_halves(left, offs_m, n0, M, N, out_ptr, stride_om, res_ptr, stride_rm, params_ptr, thr_ptr,
                               OUT_KIND, SIGN_FROM_THRESHOLD, RELU, HAS_RESIDUAL, BM, BN // 2)
        _store_epilogue_halves(right, offs_m, n0 + BN // 2, M, N, out_ptr, stride_om, res_ptr, stride_rm, params_ptr,
                               thr_ptr, OUT_KIND, SIGN_FROM_THRESHOLD, RELU, HAS_RESIDUAL, BM, BN // 2)
    elif BN >= 64:
        _store_epilogue_halves(acc, offs_m, n0, M, N, out_ptr, stride_om, res_ptr, stride_rm, params_ptr, thr_ptr,
                               OUT_KIND, SIGN_FROM_THRESHOLD, RELU, HAS_RESIDUAL, BM, BN)
    else:
        _store_epilogue_part(acc, offs_m, n0, M, N, out_ptr, stride_om, res_ptr, stride_rm, params_ptr, thr_ptr,
                             OUT_KIND, SIGN_FROM_THRESHOLD, RELU, HAS_RESIDUAL, BM, BN)


@triton.jit
def _store_epilogue_halves(acc, offs_m, n0, M, N, out_ptr, stride_om, res_ptr, stride_rm, params_ptr, thr_ptr,
                           OUT_KIND: tl.constexpr, SIGN_FROM_THRESHOLD: tl.constexpr, RELU: tl.constexpr,
                           HAS_RESIDUAL: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    left, right = tl.split(tl.permute(tl.reshape(acc, (BM, 2, BN // 2)), (0, 2, 1)))
    _store_epilogue_part(left, offs_m, n0, M, N, out_ptr, stride_om, res_ptr, stride_rm, params_ptr, thr_ptr,
                         OUT_KIND, SIGN_FROM_THRESHOLD, RELU, HAS_RESIDUAL, BM, BN // 2)
    _store_epilogue_part(right, offs_m, n0 + BN // 2, M, N, out_ptr, stride_om, res_ptr, stride_rm, params_ptr,
                         thr_ptr, OUT_KIND, SIGN_FROM_THRESHOLD, RELU, HAS_RESIDUAL, BM, BN // 2)


@triton.jit
def _store_epilogue_part(acc, offs_m, n0, M, N, out_ptr, stride_om, res_ptr, stride_rm, params_ptr, thr_ptr,
                         OUT_KIND: tl.constexpr, SIGN_FROM_THRESHOLD: tl.constexpr, RELU: tl.constexpr,
                         HAS_RESIDUAL: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    offs_n = n0 + tl.arange(0, BN)
    m_ok = offs_m < M
    n_ok = offs_n < N
    if OUT_KIND == _OUT_ACC:
        tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], acc, mask=m_ok[:, None] & n_ok[None, :])
    else:
        if SIGN_FROM_THRESHOLD:
            lo = tl.load(thr_ptr + offs_n, mask=n_ok, other=0)
            hi = tl.load(thr_ptr + N + offs_n, mask=n_ok, other=0)
            positive = (acc >= lo[None, :]) & (acc <= hi[None, :])
        else:
            scale = tl.load(params_ptr + offs_n, mask=n_ok, other=0.0)
            bias = tl.load(params_ptr + N + offs_n, mask=n_ok, other=0.0)
            post_scale = tl.load(params_ptr + 2 * N + offs_n, mask=n_ok, other=0.0)
            post_bias = tl.load(params_ptr + 3 * N + offs_n, mask=n_ok, other=0.0)
            y = acc.to(tl.float32) * scale[None, :] + bias[None, :]
            if RELU:
                y = tl.maximum(y, 0.0)
            y = y * post_scale[None, :] + post_bias[None, :]
            if HAS_RESIDUAL:
                r = tl.load(res_ptr + offs_m[:, None] * stride_rm + offs_n[None, :],
                            mask=m_ok[:, None] & n_ok[None, :], other=0.0)
                y = y + r.to(tl.float32)
            positive = nonnegative(y)
        if OUT_KIND == _OUT_FLOAT:
            tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], y.to(out_ptr.dtype.element_ty),
                     mask=m_ok[:, None] & n_ok[None, :])
        elif OUT_KIND == _OUT_SIGN_INT8:
            sign = tl.where(positive, 1, -1).to(tl.int8)
            tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], sign, mask=m_ok[:, None] & n_ok[None, :])
        else:
            # channels >= N get bit 0: the format's zero padding bits
            bits = tl.reshape((positive & n_ok[None, :]).to(tl.int32), (BM, BN // 32, 32))
            words = tl.sum(bits << tl.arange(0, 32)[None, None, :], axis=2)
            offs_w = n0 // 32 + tl.arange(0, BN // 32)
            tl.store(out_ptr + offs_m[:, None] * stride_om + offs_w[None, :], words,
                     mask=m_ok[:, None] & (offs_w[None, :] < (N + 31) // 32))
