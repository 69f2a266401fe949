"""Triton building blocks for packed signs, shared by every kernel that reads or writes bits.

Encoding as in :mod:`bnnkit.kernels.bitpack`: bit ``i`` of an int32 word is element ``i``
(LSB first), bit 1 = +1. ``INTERPRET`` constexprs select code the Triton interpreter can run
(it has neither ``libdevice.popc`` nor inline PTX); :func:`interpreting` gives the value to pass.
"""

from __future__ import annotations

from .triton_compat import tl, triton

from bnnkit.backend import triton_interpret


def interpreting() -> bool:
    """Value for a kernel's ``INTERPRET: tl.constexpr`` argument."""
    return triton_interpret()


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


@triton.jit
def unpack_rows(words, ROWS: tl.constexpr, WORDS: tl.constexpr):
    """``(ROWS, WORDS)`` int32 words -> ``(ROWS, WORDS * 32)`` int32 bits (0/1)."""
    shifts = tl.arange(0, 32)[None, None, :]
    b = (words[:, :, None] >> shifts) & 1
    return tl.reshape(b, (ROWS, WORDS * 32))
