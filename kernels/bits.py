"""Triton building blocks for packed signs, shared by every kernel that reads or writes bits.

Encoding as in :mod:`bnnkit.kernels.bitpack`: bit ``i`` of an int32 word is element ``i``
(LSB first), bit 1 = +1. ``INTERPRET`` constexprs select code the Triton interpreter can run
(it has neither ``libdevice.popc`` nor inline PTX); :func:`interpreting` gives the value to pass.
:func:`nonnegative` is the one place a kernel turns a value into its sign.
"""

from __future__ import annotations

from .triton_compat import tl, triton

from bnnkit.backend import triton_interpret


def interpreting() -> bool:
    """Value for a kernel's ``INTERPRET: tl.constexpr`` argument."""
    return triton_interpret()


@triton.jit
def nonnegative(x):
    """The binarization rule on a tile: True where ``x >= 0`` (+1, bit 1), False elsewhere and
    for NaN; exact for every input dtype (int8, fp16, bf16, fp32). Every kernel that turns a
    value into its sign calls this.

    The comparison runs in float32: the GPU compiler folds the conversion into a native
    compare (``setp.ge.bf16`` / ``.f16``), while Triton's interpreter evaluates a bf16 ``x >= 0``
    as True for every value. bf16 is widened through its bits (its float32 value is the same
    bits followed by 16 zeros) because the interpreter's own bf16 -> fp32 conversion turns
    negative subnormals into -0.0.
    """
    if x.dtype == tl.bfloat16:
        wide = (x.to(tl.int16, bitcast=True).to(tl.int32) << 16).to(tl.float32, bitcast=True)
    else:
        wide = x.to(tl.float32)
    return wide >= 0


@triton.jit
def popcount32(x, INTERPRET: tl.constexpr):
    """Number of set bits of each int32 in ``x`` (int32 result)."""
    if INTERPRET:
        # SWAR popcount with logical shifts (via uint32), for the interpreter.
        u = x.to(tl.uint32, bitcast=True)
        u = u - ((u >> 1) & 0x55555555)
        u = (u & 0x33333333) + ((u >> 2) & 0x33333333)
        u = (u + (u >> 4)) & 0x0F0F0F0F
        u = (u * 0x01010101) >> 24
        return u.to(tl.int32, bitcast=True)
    else:
        return tl.extra.cuda.libdevice.popc(x)


@triton.jit
def pack_rows(bits, ROWS: tl.constexpr, WORDS: tl.constexpr):
    """``(ROWS, WORDS * 32)`` tensor of 0/1 int32 -> ``(ROWS, WORDS)`` int32 words, LSB first."""
    b = tl.reshape(bits, (ROWS, WORDS, 32))
    shifts = tl.arange(0, 32)[None, None, :]
    return tl.sum(b << shifts, axis=2)
