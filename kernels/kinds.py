"""The named kinds that cross from Python into the kernels: one vocabulary per concept.

Each concept is a str Enum whose values are the words users, packed layers and artifact
manifests write (``"binarize"``, ``"packed"``, ...). Kernels branch on int codes: every member
carries its ``code``, and a ``tl.constexpr`` twin of each member sits beside its enum, so a
kernel reads ``if IN_KIND == _IN_PACKED:`` (Liger-Kernel's style).

- :class:`InputKind`: how a binary kernel's activations are encoded.
- :class:`OutputKind`: what a binary kernel writes.
- :class:`EstimatorKind`: the straight-through estimator of a binarization's backward.
"""

from __future__ import annotations

import enum
import re
from typing import Any

from .triton_compat import tl

__all__ = ["EstimatorKind", "InputKind", "KernelEnum", "OutputKind"]


class KernelEnum(str, enum.Enum):
    """A str Enum whose members also carry the int ``code`` kernels take as a constexpr."""

    code: int

    def __new__(cls, value: str, code: int) -> "KernelEnum":
        member = str.__new__(cls, value)
        member._value_ = value
        member.code = code
        return member

    def __str__(self) -> str:
        return self.value

    def __int__(self) -> int:
        return self.code

    @classmethod
    def parse(cls, value: Any) -> "KernelEnum":
        """``value`` as a member: a member, its string value or its int code; a ``ValueError``
        naming the accepted values otherwise."""
        if isinstance(value, cls):
            return value
        if type(value) is str:  # the common case, one dict lookup (this runs on every kernel call)
            member = cls._value2member_map_.get(value)
            if member is not None:
                return member
        for member in cls:
            if (isinstance(value, str) and value == member.value) or \
                    (type(value) is int and value == member.code):
                return member
        what = re.sub(r"(?<!^)(?=[A-Z])", " ", cls.__name__).lower()  # "InputKind" -> "input kind"
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(m.value for m in cls)}")


class InputKind(KernelEnum):
    """How activations reach a binary kernel (the dtype tells which, see
    :func:`bnnkit.kernels.binary_operands.input_kind`)."""

    INT8 = "int8", 0  # int8 ±1 values (0 contributes 0)
    BINARIZE = "binarize", 1  # real values binarized on load: +1 for x >= 0, -1 otherwise (NaN -> -1)
    PACKED = "packed", 2  # int32 words of sign bits (bnnkit.kernels.bitpack), unpacked in registers
    REAL = "real", 3  # real values used as they are (W1A16: binary weights only)


_IN_INT8: tl.constexpr = tl.constexpr(InputKind.INT8.code)
_IN_BINARIZE: tl.constexpr = tl.constexpr(InputKind.BINARIZE.code)
_IN_PACKED: tl.constexpr = tl.constexpr(InputKind.PACKED.code)
_IN_REAL: tl.constexpr = tl.constexpr(InputKind.REAL.code)


class OutputKind(KernelEnum):
    """What a binary kernel writes (see :mod:`bnnkit.kernels.epilogue`)."""

    ACC = "acc", 0  # the raw accumulator (int32; float32 for real inputs), no epilogue
    FLOAT = "float", 1  # the float epilogue's y in fp32 / fp16 / bf16
    SIGN_INT8 = "sign_int8", 2  # +1 where y >= 0, -1 elsewhere (NaN -> -1), int8
    PACKED = "packed", 3  # the same signs packed along channels, int32 words


_OUT_ACC: tl.constexpr = tl.constexpr(OutputKind.ACC.code)
_OUT_FLOAT: tl.constexpr = tl.constexpr(OutputKind.FLOAT.code)
_OUT_SIGN_INT8: tl.constexpr = tl.constexpr(OutputKind.SIGN_INT8.code)
_OUT_PACKED: tl.constexpr = tl.constexpr(OutputKind.PACKED.code)


class EstimatorKind(KernelEnum):
    """The built-in straight-through estimators (see :mod:`bnnkit.kernels.sign_grad`)."""

    IDENTITY_STE = "identity_ste", 0  # slope 1 everywhere (bnnkit 0.1 called it "ste")
    CLIPPED_STE = "clipped_ste", 1  # slope 1 for |x| <= t; at t = 1 the paper's STE
    STE = "identity_ste", 0  # an alias of IDENTITY_STE for code written against the old member name
    APPROX_SIGN = "approx_sign", 2
    RESTE = "reste", 3


_EST_IDENTITY_STE: tl.constexpr = tl.constexpr(EstimatorKind.IDENTITY_STE.code)
_EST_CLIPPED_STE: tl.constexpr = tl.constexpr(EstimatorKind.CLIPPED_STE.code)
_EST_APPROX_SIGN: tl.constexpr = tl.constexpr(EstimatorKind.APPROX_SIGN.code)
_EST_RESTE: tl.constexpr = tl.constexpr(EstimatorKind.RESTE.code)
