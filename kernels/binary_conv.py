"""Binary 2-D convolution as an implicit GEMM on NHWC activations.

``out[n, oh, ow, co] = epilogue(sum_{kh, kw, ci} a[n, oh*s - p + kh, ow*s - p + kw, ci] * w[co, kh, kw, ci])``

- Activations ``x`` are NHWC: ``(N, H, W, C)`` real (binarized on load, or used as they are
  with ``real_input=True`` for W1A16), ``(N, H, W, C)`` int8 ±1, or ``(N, H, W, ceil(C/32))``
  int32 bits packed along channels.
- Weights are OHWI packed along input channels per tap, ``(C_out, KH, KW, ceil(C/32))`` int32
  (:func:`bnnkit.kernels.weight_pack.pack_conv_weight`), or ``(C_out, KH, KW, C)`` int8 ±1.
- Zero padding is exact: taps outside the image read as 0 in the int8 activation tile, so
  they contribute 0 (not -1). Any channel count: channels past C are 0 as well.
- GEMM view: M = N*OH*OW output pixels (rows of the NHWC output), N = C_out, K = KH*KW*C,
  walked tap by tap and BK channels at a time in one pipelined loop. The tensor cores take
  int8 x int8 -> int32 tiles (exact), or real x ±1 for W1A16 as in :mod:`.binary_gemm`.
- Output: ``(N, OH, OW, C_out)`` (``ceil(C_out/32)`` words for ``packed``), NHWC, with the
  fused epilogue of :mod:`bnnkit.kernels.epilogue` (residual in the output's shape).
- One launch (:class:`~bnnkit.kernels.launch.TunedKernel`) under the input's device; with a
  prepared :class:`~bnnkit.kernels.epilogue.KernelStage` (``stage=``) no other tensor work
  than allocating the output.

:func:`binary_conv2d_reference` is the PyTorch reference and CPU fallback.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from .triton_compat import tl, triton

from .binarize import binarize_reference
from .binary_operands import MAX_K, dot_pm1, grouped_tile, input_kind, masked_activation, masked_weight
from .bitpack import num_words, unpack_signs_reference
from .epilogue import (Epilogue, KernelStage, SignThreshold, check_output_request, finish_reference, output_dtype,
                       output_kind, output_shape, output_stage, store_epilogue)
from .kinds import _IN_REAL, InputKind, OutputKind
from .launch import TunedKernel, check_residual, next_power_of_2, prepare_out, prune_reading


@triton.jit
def _binary_conv_kernel(
    x_ptr, w_ptr, out_ptr, res_ptr, params_ptr, thr_ptr,
    H, W, C, OH, OW, CO, M, M_BUCKET,
    stride_xpix, stride_wco, stride_wtap, stride_om, stride_rm,
    KH: tl.constexpr, KW: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr,
    IN_KIND: tl.constexpr, W_PACKED: tl.constexpr, OUT_KIND: tl.constexpr, SIGN_FROM_THRESHOLD: tl.constexpr,
    RELU: tl.constexpr, HAS_RESIDUAL: tl.constexpr, EVEN_C: tl.constexpr, WIDE_OFFSETS: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr, INTERPRET: tl.constexpr,
):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, CO, BM, BN, GROUP_M)

    offs_m = pid_m * BM + tl.arange(0, BM)  # output pixels (n, oh, ow) in NHWC order
    m_ok = offs_m < M
    img = offs_m // (OH * OW)
    rest = offs_m % (OH * OW)
    ih0 = (rest // OW) * STRIDE - PAD
    iw0 = (rest % OW) * STRIDE - PAD
    offs_n = pid_n * BN + tl.arange(0, BN)
    w_cols = tl.where(offs_n < CO, offs_n, 0) * stride_wco  # [BN]; channels past CO are never stored

    if IN_KIND == _IN_REAL:
        DOT_DTYPE: tl.constexpr = x_ptr.dtype.element_ty
        acc = tl.zeros((BM, BN), dtype=tl.float32)
    else:
        DOT_DTYPE: tl.constexpr = tl.int8
        acc = tl.zeros((BM, BN), dtype=tl.int32)

    blocks = tl.cdiv(C, BK)
    for step in range(0, KH * KW * blocks):
        tap = step // blocks
        c0 = (step - tap * blocks) * BK
        kh = tap // KW
        kw = tap - kh * KW
        ih = ih0 + kh
        iw = iw0 + kw
        ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)  # [BM]; padding taps read as 0
        pix = (img * H + ih) * W + iw
        if WIDE_OFFSETS:  # int32 offsets (half the registers) unless the input has 2**31+ elements
            pix = pix.to(tl.int64)
        pix = pix * stride_xpix
        a = masked_activation(x_ptr, pix, ok, c0, C, IN_KIND, not EVEN_C, BM, BK)
        w = masked_weight(w_ptr, w_cols + tap * stride_wtap, c0, C, W_PACKED, not EVEN_C, BN, BK, DOT_DTYPE)
        acc = dot_pm1(a, w, acc, IN_KIND == _IN_REAL, INTERPRET)

    store_epilogue(acc, offs_m, pid_n * BN, M, CO, out_ptr, stride_om, res_ptr, stride_rm, params_ptr, thr_ptr,
                   OUT_KIND, SIGN_FROM_THRESHOLD, RELU, HAS_RESIDUAL, BN)


def conv_signature(x_type: str, w_type: str, out_type: str, res_type: str = "*fp32") -> dict[str, str]:
    """Triton signature of :func:`_binary_conv_kernel` for :mod:`.compile_check`."""
    sig = {"x_ptr": x_type, "w_ptr": w_type, "out_ptr": out_type, "res_ptr": res_type, "params_ptr": "*fp32",
           "thr_ptr": "*i32"}
    sig.update(dict.fromkeys(["H", "W", "C", "OH", "OW", "CO", "M", "M_BUCKET", "stride_xpix", "stride_wco",
                              "stride_wtap", "stride_om", "stride_rm"], "i32"))
    sig.update(dict.fromkeys(["KH", "KW", "STRIDE", "PAD", "IN_KIND", "W_PACKED", "OUT_KIND", "SIGN_FROM_THRESHOLD",
                              "RELU", "HAS_RESIDUAL", "EVEN_C", "WIDE_OFFSETS", "BM", "BN", "BK", "GROUP_M",
                              "INTERPRET"], "constexpr"))
    return sig


def _config(bm: int, bn: int, bk: int, warps: int, stages: int, group_m: int = 8) -> triton.Config:
    return triton.Config({"BM": bm, "BN": bn, "BK": bk, "GROUP_M": group_m}, num_warps=warps, num_stages=stages)


# One list for sm_80 and sm_90, every activation kind (real ones included): each compiled for
# both without a register spill, as far as _prune lets each combination use them
# (tests/kernels/test_kernel_compile.py, BNNKIT_COMPILE_SWEEP=1). The gathered activation rows
# (per-tap masks and offsets) cost registers, so BK stays at 32 channels; BK = 64 and 128x64
# tiles spilled.
CONV_CONFIGS = [
    _config(128, 128, 32, 8, 4),
    _config(64, 128, 32, 4, 4),
    _config(64, 64, 32, 4, 4),
]


@prune_reading("M_BUCKET", "C", "IN_KIND", "W_PACKED", "OUT_KIND", "HAS_RESIDUAL")
def _prune(configs, args):
    # packed activations with int8 weights and a float epilogue + residual: tiles above 64x64
    # spill on sm_80 / sm_90 (the unpacking shifts of both operands and the residual tile)
    heaviest = (args["IN_KIND"] == InputKind.PACKED.code and not args["W_PACKED"]
                and args["OUT_KIND"] == OutputKind.FLOAT.code and args["HAS_RESIDUAL"])
    fitting = [cfg for cfg in configs if cfg.kwargs["BM"] <= max(64, args["M_BUCKET"])
               and cfg.kwargs["BK"] <= max(32, next_power_of_2(args["C"]))
               and not (heaviest and cfg.kwargs["BM"] * cfg.kwargs["BN"] > 64 * 64)]
    return fitting or configs[-1:]


_CONV = TunedKernel(
    _binary_conv_kernel, CONV_CONFIGS,
    key=["M_BUCKET", "C", "CO", "H", "W", "IN_KIND", "W_PACKED", "OUT_KIND", "SIGN_FROM_THRESHOLD", "HAS_RESIDUAL",
         "KH", "KW", "STRIDE"],
    prune=_prune,
    interpret_config=lambda args: {"BM": 32, "BN": 128, "BK": 128, "GROUP_M": 2},  # big tiles: fewer steps
    derived={"EVEN_C": lambda args: args["C"] % args["BK"] == 0})


def _pair(v: int | tuple[int, int], name: str) -> int:
    if isinstance(v, (tuple, list)):
        if len(v) != 2 or v[0] != v[1]:
            raise ValueError(f"{name} must be one int (same for H and W), got {v!r}")
        v = v[0]
    if not isinstance(v, int) or v < 0 or (name == "stride" and v < 1):
        raise ValueError(f"{name} must be a {'positive' if name == 'stride' else 'non-negative'} int, got {v!r}")
    return v


def _check_inputs(x: torch.Tensor, weight: torch.Tensor, in_channels: int, stride: int, padding: int,
                  real_input: bool) -> tuple[InputKind, int, int, int, int]:
    """Validate; returns (input kind, KH, KW, OH, OW)."""
    kind = input_kind(x, real_input)
    if x.dim() != 4:
        raise ValueError(f"x must be NHWC (N, H, W, C), got shape {tuple(x.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"weight must be OHWI (C_out, KH, KW, words or C), got shape {tuple(weight.shape)}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
    width = num_words(in_channels) if kind == InputKind.PACKED else in_channels
    if x.shape[-1] != width:
        what = f"{width} words (packed, C={in_channels})" if kind == InputKind.PACKED else f"C={in_channels}"
        raise ValueError(f"x has {x.shape[-1]} values per pixel; expected {what}")
    if weight.dtype == torch.int32:
        if weight.shape[-1] != num_words(in_channels):
            raise ValueError(f"packed weight has {weight.shape[-1]} words per tap; C={in_channels} needs "
                             f"{num_words(in_channels)}")
    elif weight.dtype == torch.int8:
        if weight.shape[-1] != in_channels:
            raise ValueError(f"int8 weight has {weight.shape[-1]} channels per tap; expected C={in_channels}")
    else:
        raise TypeError(f"weight must be int32 (packed OHWI) or int8 (±1 OHWI), got {weight.dtype}")
    if x.device != weight.device:
        raise ValueError(f"x is on {x.device} but weight is on {weight.device}")
    kh, kw = weight.shape[1], weight.shape[2]
    if kh * kw * in_channels > MAX_K:
        raise ValueError(f"reduction length KH*KW*C = {kh * kw * in_channels} exceeds {MAX_K}")
    oh = (x.shape[1] + 2 * padding - kh) // stride + 1
    ow = (x.shape[2] + 2 * padding - kw) // stride + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"input {x.shape[1]}x{x.shape[2]} with padding {padding} is smaller than the {kh}x{kw} kernel")
    return kind, kh, kw, oh, ow


def _check_call(x, weight, in_channels, stride, padding, real_input, out_kind, epilogue, threshold, stage, residual,
                out_dtype):
    """Everything the reference and the launcher check; returns ``(stride, padding, input kind,
    output kind, stage, (KH, KW, OH, OW))``."""
    stride, padding = _pair(stride, "stride"), _pair(padding, "padding")
    in_kind, kh, kw, oh, ow = _check_inputs(x, weight, in_channels, stride, padding, real_input)
    co = weight.shape[0]
    kind = output_kind(out_kind)
    stage = output_stage(kind, epilogue=epilogue, threshold=threshold, stage=stage, channels=co, device=x.device)
    check_output_request(kind, stage, residual=residual, out_dtype=out_dtype, real_acc=real_input, channels=co,
                         device=x.device)
    check_residual(residual, (x.shape[0], oh, ow, co), x.device)
    return stride, padding, in_kind, kind, stage, (kh, kw, oh, ow)


def binary_conv2d_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    in_channels: int,
    *,
    stride: int = 1,
    padding: int = 0,
    real_input: bool = False,
    out_kind: OutputKind | str = OutputKind.FLOAT,
    epilogue: Epilogue | None = None,
    threshold: SignThreshold | None = None,
    stage: KernelStage | None = None,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """PyTorch reference of :func:`binary_conv2d` (and its CPU fallback); same arguments and result.

    ``F.conv2d`` on ±1 float32 values with zero padding: exact for ``KH*KW*C < 2**24``.
    """
    stride, padding, in_kind, kind, stage, _ = _check_call(x, weight, in_channels, stride, padding, real_input,
                                                           out_kind, epilogue, threshold, stage, residual, out_dtype)
    if weight.dtype == torch.int32:
        w = unpack_signs_reference(weight, in_channels)
    else:
        w = weight.to(torch.float32)
    w = w.permute(0, 3, 1, 2)  # OIHW
    if in_kind == InputKind.PACKED:
        a = unpack_signs_reference(x, in_channels)
    elif in_kind == InputKind.BINARIZE:
        a = binarize_reference(x.to(torch.float32))
    else:
        a = x.to(torch.float32)
    a = a.permute(0, 3, 1, 2)
    if in_kind == InputKind.REAL:
        acc = F.conv2d(a.double(), w.double(), stride=stride, padding=padding).float()
    else:
        acc = F.conv2d(a, w, stride=stride, padding=padding).to(torch.int32)
    acc = acc.permute(0, 2, 3, 1)  # NHWC
    return finish_reference(acc, out_kind=kind, **stage.reference_args(), residual=residual,
                            out_dtype=out_dtype).contiguous()


def binary_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    in_channels: int,
    *,
    stride: int = 1,
    padding: int = 0,
    real_input: bool = False,
    out_kind: OutputKind | str = OutputKind.FLOAT,
    epilogue: Epilogue | None = None,
    threshold: SignThreshold | None = None,
    stage: KernelStage | None = None,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Binary convolution with the Triton implicit-GEMM kernel (NHWC in, NHWC out): one launch.

    Args:
        x: ``(N, H, W, C)`` float (binarized, or real with ``real_input``) or int8 ±1, or
            ``(N, H, W, ceil(C/32))`` int32 packed (copied first unless NHWC-contiguous).
        weight: ``(C_out, KH, KW, ceil(C/32))`` int32 packed OHWI or ``(C_out, KH, KW, C)`` int8.
        in_channels: C.
        stride, padding: one int each (square); padding is zero padding, exact.
        out_kind / epilogue / threshold / stage / residual / out_dtype / out: as in
            :func:`bnnkit.kernels.binary_gemm.binary_gemm`; ``residual`` is ``(N, OH, OW, C_out)``.

    Returns:
        ``(N, OH, OW, C_out)`` (``(N, OH, OW, ceil(C_out/32))`` int32 for ``packed``).
    """
    stride, padding, in_kind, kind, stage, (kh, kw, oh, ow) = _check_call(
        x, weight, in_channels, stride, padding, real_input, out_kind, epilogue, threshold, stage, residual, out_dtype)
    nb, h, w_in = x.shape[0], x.shape[1], x.shape[2]
    co = weight.shape[0]
    shape = output_shape((nb, oh, ow), co, kind)
    out = prepare_out(out, shape, output_dtype(kind, out_dtype, real_input), x.device)
    m = nb * oh * ow
    if m == 0 or co == 0:
        return out
    if weight.numel() >= 2**31:
        raise ValueError(f"conv weight with {weight.numel()} elements is larger than the kernel's int32 offsets")
    if not x.is_contiguous():
        x = x.contiguous()
    if not weight.is_contiguous():
        weight = weight.contiguous()
    out2 = out.view(m, shape[-1])
    res2 = None
    if residual is not None:
        res2 = residual.reshape(m, co)
        if not res2.is_contiguous():
            res2 = res2.contiguous()
    args = dict(x_ptr=x, w_ptr=weight, out_ptr=out2, res_ptr=out2 if res2 is None else res2,
                params_ptr=stage.params, thr_ptr=stage.thresholds, H=h, W=w_in, C=in_channels, OH=oh, OW=ow, CO=co,
                M=m, M_BUCKET=next_power_of_2(m), stride_xpix=x.shape[-1], stride_wco=weight.stride(0),
                stride_wtap=weight.stride(2), stride_om=out2.stride(0), stride_rm=0 if res2 is None else res2.stride(0),
                KH=kh, KW=kw, STRIDE=stride, PAD=padding, IN_KIND=in_kind.code, W_PACKED=weight.dtype == torch.int32,
                OUT_KIND=kind.code, SIGN_FROM_THRESHOLD=stage.has_threshold, RELU=stage.relu,
                HAS_RESIDUAL=res2 is not None, WIDE_OFFSETS=x.numel() >= 2**31)
    _CONV(lambda meta: (triton.cdiv(m, meta["BM"]) * triton.cdiv(co, meta["BN"]),), args, x.device)
    return out
