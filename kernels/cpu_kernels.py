"""The numba kernels of the native CPU backend: XOR + popcount GEMM on packed words, the binary
convolution (direct, or implicit GEMM over im2col rows), binarize-and-pack, and their fused
epilogue.

Every kernel here is compiled lazily (first call) and cached on disk (numba's ``cache=True``:
``__pycache__`` beside this file when it is writable, else numba's user-wide cache directory,
or ``$NUMBA_CACHE_DIR``), runs single-threaded with the GIL released (``nogil``) on the range
of output rows and channels it is given, and has one signature whatever the layer: tensors
arrive as their data address (an int; :func:`f32_at` and friends turn it into a typed pointer)
plus sizes and element strides, prepared weights as C-contiguous uint64 arrays, modes as int
codes (the :class:`~bnnkit.kernels.kinds.OutputKind` codes). So each kernel compiles once per
machine, and a call costs no array conversions.

Encoding (as :mod:`bnnkit.kernels.bitpack`): bit ``i`` of a word is element ``i`` (LSB first),
bit 1 = +1 (``x >= 0``; NaN gives 0). The GEMM reads uint64 rows of bits: a linear layer's
``K`` bits, or a convolution's im2col row, the ``C`` bits of each of its ``KH*KW`` taps
concatenated (bit ``t*C + c`` is channel ``c`` of tap ``t``; zero bits past the end).
``mismatches = sum popcount(a ^ w)`` and ``acc = valid_bits - 2 * mismatches``, exact in int32.

Zero padding is exact: the direct convolution skips padding taps; in an im2col row a padding
tap's bits are 0, so it adds ``popcount(w_tap)`` mismatches, which are taken back
(``tap_popcounts``), and no valid bits.

The float epilogue repeats :func:`~bnnkit.kernels.epilogue.epilogue_reference` operation by
operation in float32 (no fused multiply-add: numba does not contract without fastmath), so
float outputs are bitwise equal to the reference's::

    y = float32(acc) * scale + bias;  y = 0 where y < 0 if relu (NaN and -0.0 kept);
    y = y * post_scale + post_bias;  y = y + residual
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .kinds import OutputKind

OUT_ACC = OutputKind.ACC.code
OUT_FLOAT = OutputKind.FLOAT.code
OUT_SIGN_INT8 = OutputKind.SIGN_INT8.code
OUT_PACKED = OutputKind.PACKED.code

BLOCK_ROWS = 16
"""Output rows (pixels or tokens) per block: their bit rows sit in a scratch buffer in L1
while every output channel of the task is computed against them."""

SEGMENT_PIXELS = 32
"""Output pixels per segment of the direct convolution (:func:`conv_direct_task`): consecutive
pixels of one output row, whose per-tap work runs as one loop."""

DIRECT_MAX_CHANNELS = 64
"""Convolutions with at most this many input channels take the direct form
(:func:`conv_direct_task`): no im2col rows, each tap's input word against a vector of output
channels in lanes as narrow as C allows. Gathering im2col rows costs as much as the popcounts
when a tap holds few bits; above 64 channels both forms measured alike (AVX2), and im2col
takes any channel count."""

TRANSPOSED_MAX_WORDS = 36
"""Rows of at most this many uint64 words meet the weights transposed (``(K64, N)``: one
activation word against a vector of output channels); longer rows take the dot form, four
rows sharing each weight word. Measured on AVX2 with the im2col rows of 3x3 convolutions:
the transposed form ahead up to 256 channels (36 words), the dot form at 512 channels, where
each row would stream the transposed weights again."""

_JIT = dict(nogil=True, cache=True, error_model="numpy", boundscheck=False)
_INLINE = dict(_JIT, inline="always")


def _pointer_to(element: types.Type):
    pointer = types.CPointer(element)

    @intrinsic
    def at(typingctx, address):
        if not isinstance(address, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(pointer))

        return pointer(address), codegen

    return at


f32_at = _pointer_to(types.float32)
i32_at = _pointer_to(types.int32)
u16_at = _pointer_to(types.uint16)
u32_at = _pointer_to(types.uint32)
u64_at = _pointer_to(types.uint64)
i8_at = _pointer_to(types.int8)
"""``x_at(address)``: the typed pointer at a tensor's ``data_ptr()`` (``p[i]`` reads / writes)."""


@intrinsic
def popcount(typingctx, x):
    """Number of set bits of an unsigned integer (LLVM ``ctpop``: vectorized as ``vpopcntq``
    on AVX-512 VPOPCNTDQ, as a nibble lookup with ``vpshufb`` on AVX2, ``cnt`` on NEON)."""
    if not isinstance(x, types.Integer) or x.signed:
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return x(x), codegen


def _sign_bits(width: int):
    """An intrinsic ``f(address) -> uintN``: bit ``i`` is ``x[i] >= 0`` for the ``width`` float32
    values at ``address`` (NaN gives 0, -0.0 gives 1): one vector compare and its mask
    (``vcmpps`` + mask extraction on x86, the same on NEON), not ``width`` compares."""
    result = {16: types.uint16, 32: types.uint32}[width]

    @intrinsic
    def sign_bits(typingctx, address):
        if not isinstance(address, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            vector = ir.VectorType(ir.FloatType(), width)
            values = builder.load(builder.inttoptr(args[0], vector.as_pointer()), align=4)
            mask = builder.fcmp_ordered(">=", values, ir.Constant(vector, [0.0] * width))
            return builder.bitcast(mask, ir.IntType(width))

        return result(address), codegen

    return sign_bits


sign_bits16 = _sign_bits(16)
sign_bits32 = _sign_bits(32)


VECTOR_BYTES = 32
"""Width of the explicit vectors of :func:`xor_popcount_add16` and friends (256 bits: one AVX2
register; LLVM splits them for SSE / NEON and uses ``vpopcntw/d/q`` with AVX-512 BITALG /
VPOPCNTDQ)."""


def _xor_popcount_add(bits: int):
    """An intrinsic ``f(acc_address, w_address, a)``: ``acc[i] += popcount(a ^ w[i])`` over one
    vector of ``VECTOR_BYTES`` of uintN lanes (unaligned loads and stores)."""
    lanes = VECTOR_BYTES * 8 // bits
    element = ir.IntType(bits)
    vector = ir.VectorType(element, lanes)

    @intrinsic
    def xor_popcount_add(typingctx, acc_address, w_address, a):
        if not all(isinstance(t, types.Integer) for t in (acc_address, w_address, a)):
            return None

        def codegen(context, builder, signature, args):
            acc_ptr = builder.inttoptr(args[0], vector.as_pointer())
            w_ptr = builder.inttoptr(args[1], vector.as_pointer())
            value = args[2]
            if value.type.width > bits:
                value = builder.trunc(value, element)
            elif value.type.width < bits:
                value = builder.zext(value, element)
            one = builder.insert_element(ir.Constant(vector, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
            splat = builder.shuffle_vector(one, ir.Constant(vector, ir.Undefined),
                                           ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes))
            ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector, [vector]),
                                                   f"llvm.ctpop.v{lanes}i{bits}")
            counts = builder.call(ctpop, [builder.xor(builder.load(w_ptr, align=1), splat)])
            builder.store(builder.add(builder.load(acc_ptr, align=1), counts), acc_ptr, align=1)
            return context.get_dummy_value()

        return types.void(acc_address, w_address, a), codegen

    return xor_popcount_add


xor_popcount_add16 = _xor_popcount_add(16)
xor_popcount_add32 = _xor_popcount_add(32)
xor_popcount_add64 = _xor_popcount_add(64)


# ----------------------------------------------------------------------------- the popcount GEMM


@njit(**_JIT)
def mismatches_dot(rows, r1, weight, n0, n1, mism):
    """``mism[r, n - n0] = sum_k popcount(rows[r, k] ^ weight[n, k])`` for ``r < r1`` (a
    multiple of 4), ``n0 <= n < n1``; four rows share each weight word (the k loop becomes
    vector XOR + popcount). rows ``(BLOCK_ROWS, K64)``, weight ``(N, K64)`` uint64."""
    k64 = weight.shape[1]
    for r in range(0, r1, 4):
        for n in range(n0, n1):
            s0 = np.uint64(0)
            s1 = np.uint64(0)
            s2 = np.uint64(0)
            s3 = np.uint64(0)
            for k in range(k64):
                w = weight[n, k]
                s0 += popcount(rows[r, k] ^ w)
                s1 += popcount(rows[r + 1, k] ^ w)
                s2 += popcount(rows[r + 2, k] ^ w)
                s3 += popcount(rows[r + 3, k] ^ w)
            mism[r, n - n0] = s0
            mism[r + 1, n - n0] = s1
            mism[r + 2, n - n0] = s2
            mism[r + 3, n - n0] = s3


@njit(**_JIT)
def mismatches_transposed(rows, r0, r1, weight_t, n0, n1, mism):
    """The same for rows ``r0..r1`` from transposed weights ``(K64, N)``: each activation
    word against a contiguous vector of output channels (vector XOR + popcount over n)."""
    k64 = weight_t.shape[0]
    nb = n1 - n0
    for r in range(r0, r1):
        out = mism[r]
        for n in range(nb):
            out[n] = 0
        for k in range(k64):
            a = rows[r, k]
            w = weight_t[k, n0:n1]
            for n in range(nb):
                out[n] += popcount(a ^ w[n])


@njit(**_JIT)
def mismatches(rows, nrows, weight, weight_t, n0, n1, mism):
    """Mismatch counts of the block's ``nrows`` rows against output channels ``n0..n1``."""
    done = 0
    if weight.shape[1] > TRANSPOSED_MAX_WORDS:
        done = nrows - nrows % 4
        mismatches_dot(rows, done, weight, n0, n1, mism)
    mismatches_transposed(rows, done, nrows, weight_t, n0, n1, mism)


# ----------------------------------------------------------------------------- the epilogue


@njit(**_JIT)
def finish_block(acc, nrows, b0, n0, n1, channels, out_kind, params_addr, thr_addr, relu, res_addr, res_off,
                 res_cstride, out_addr, y):
    """The output stage of a block: ``acc[r, n - n0]`` (int32) for rows ``b0 + r`` -> the output.

    ``params_addr``: ``(4, C)`` float32 rows ``scale, bias, post_scale, post_bias`` or 0;
    ``thr_addr``: ``(2, C)`` int32 ``lo, hi`` (``bit = lo <= acc <= hi``) or 0; residual (0:
    none) float32 at ``res_off[r] + c * res_cstride``; the output, contiguous rows of ``C``
    values (``ceil(C/32)`` int32 words for packed, whose bits past C stay 0; ``n0`` is then a
    multiple of 32); ``y``: a float32 scratch tile like ``acc``.
    """
    nb = n1 - n0
    if out_kind == OUT_ACC:
        out = i32_at(out_addr)
        for r in range(nrows):
            base = (b0 + r) * channels
            for n in range(nb):
                out[base + n0 + n] = acc[r, n]
        return
    zero = np.float32(0.0)
    if thr_addr != 0:
        thr = i32_at(thr_addr)
        for r in range(nrows):  # y holds 1.0 / -1.0: the sign
            for n in range(nb):
                a = acc[r, n]
                y[r, n] = np.float32(1.0) if thr[n0 + n] <= a and a <= thr[channels + n0 + n] else np.float32(-1.0)
    else:
        p = f32_at(params_addr)
        res = f32_at(res_addr)
        rows_contiguous_res = res_addr != 0 and res_cstride == 1
        for r in range(nrows):
            # float outputs are computed in place in the output row; signs in the scratch tile
            target = carray(f32_at(out_addr + 4 * ((b0 + r) * channels + n0)), nb) if out_kind == OUT_FLOAT \
                else y[r]
            a = acc[r]
            if rows_contiguous_res:  # one fused loop per case: a conditional load would stop vectorization
                off = res_off[r] + n0
                for n in range(nb):
                    v = np.float32(a[n]) * p[n0 + n] + p[channels + n0 + n]
                    if relu and v < zero:
                        v = zero
                    target[n] = (v * p[2 * channels + n0 + n] + p[3 * channels + n0 + n]) + res[off + n]
            else:
                for n in range(nb):
                    v = np.float32(a[n]) * p[n0 + n] + p[channels + n0 + n]
                    if relu and v < zero:
                        v = zero
                    target[n] = v * p[2 * channels + n0 + n] + p[3 * channels + n0 + n]
        if res_addr != 0 and res_cstride != 1:
            # channel planes (NCHW memory): each plane's run of pixels, not a gather across planes
            out = f32_at(out_addr)
            for n in range(nb):
                off = (n0 + n) * res_cstride
                for r in range(nrows):
                    if out_kind == OUT_FLOAT:
                        at = (b0 + r) * channels + n0 + n
                        out[at] = out[at] + res[res_off[r] + off]
                    else:
                        y[r, n] = y[r, n] + res[res_off[r] + off]
        if out_kind == OUT_FLOAT:
            return
    if out_kind == OUT_FLOAT:  # thresholds never give floats (checked before the call)
        return
    if out_kind == OUT_SIGN_INT8:
        out8 = i8_at(out_addr)
        for r in range(nrows):
            base = (b0 + r) * channels + n0
            for n in range(nb):
                out8[base + n] = 1 if y[r, n] >= zero else -1
    else:
        words = u32_at(out_addr)
        width = (channels + 31) >> 5
        for r in range(nrows):
            for j in range(n0 >> 5, (n1 + 31) >> 5):
                v = np.uint32(0)
                first = 32 * j - n0
                for b in range(min(32, n1 - 32 * j)):
                    v |= np.uint32(y[r, first + b] >= zero) << np.uint32(b)
                words[(b0 + r) * width + j] = v


# ----------------------------------------------------------------------------- bit rows


@njit(**_INLINE)
def or_bits(dst, r, bit0, v):
    """OR the 32-bit value ``v`` (uint64, high half 0) into bit row ``dst[r]`` at bit ``bit0``."""
    shift = bit0 & 63
    dst[r, bit0 >> 6] |= v << np.uint64(shift)
    if shift > 32:
        dst[r, (bit0 >> 6) + 1] |= v >> np.uint64(64 - shift)


@njit(**_INLINE)
def copy_bits(src, src_off, count, dst, r, bit0, dst32):
    """The first ``count`` bits of the uint32 words ``src[src_off:]`` into the zeroed bit row
    ``dst[r]`` (uint64; ``dst32`` its uint32 view) at bit ``bit0``; bits of the last word past
    ``count`` are dropped, whatever the source holds there."""
    words = (count + 31) >> 5
    if (bit0 & 31) == 0 and (count & 31) == 0:  # word aligned: plain copies
        w0 = bit0 >> 5
        for j in range(words):
            dst32[r, w0 + j] = src[src_off + j]
        return
    for j in range(words):
        v = np.uint64(src[src_off + j])
        left = count - 32 * j
        if left < 32:
            v &= (np.uint64(1) << np.uint64(left)) - np.uint64(1)
        or_bits(dst, r, bit0 + 32 * j, v)


@njit(**_JIT)
def binarize_bits(x_addr, off, stride, count, dst, r):
    """Bits ``x[off + i * stride] >= 0`` for ``i < count`` into the zeroed row ``dst[r]`` (float32
    values at ``x_addr``)."""
    x = f32_at(x_addr)
    full = count >> 6
    if stride == 1:
        address = x_addr + 4 * off
        for j in range(full):
            dst[r, j] = np.uint64(sign_bits32(address + 256 * j)) | (
                np.uint64(sign_bits32(address + 256 * j + 128)) << np.uint64(32))
    else:
        for j in range(full):
            v = np.uint64(0)
            base = off + 64 * j * stride
            for b in range(64):
                if x[base + b * stride] >= np.float32(0.0):
                    v |= np.uint64(1) << np.uint64(b)
            dst[r, j] = v
    if count & 63:
        v = np.uint64(0)
        for b in range(count & 63):
            if x[off + (64 * full + b) * stride] >= np.float32(0.0):
                v |= np.uint64(1) << np.uint64(b)
        dst[r, full] = v


# ----------------------------------------------------------------------------- tasks


@njit(**_INLINE)
def pixel_of(index, h, w):
    """``(image, row, column)`` of NHWC pixel ``index`` in images of ``h x w`` pixels."""
    img = index // (h * w)
    rest = index - img * (h * w)
    row = rest // w
    return img, row, rest - row * w


@njit(**_INLINE)
def next_pixel(img, row, col, h, w):
    """The pixel after ``(img, row, col)`` in NHWC order (counted along: no division per pixel)."""
    col += 1
    if col == w:
        col = 0
        row += 1
        if row == h:
            row = 0
            img += 1
    return img, row, col


@njit(**_JIT)
def pack_signs_task(x_addr, n_img, h, w, c, s_n, s_h, s_w, s_c, out_addr, r0, r1):
    """Binarize and pack a strided float32 ``(N, H, W, C)`` view (element strides ``s_*``) along
    C into contiguous ``(N*H*W, ceil(C/32))`` uint32 words, pixel rows ``r0..r1``.

    Channels contiguous (NHWC memory): each pixel's channels in turn. Otherwise (a permuted
    NCHW tensor) a run of pixels of one image row at a time, channel plane by channel plane:
    contiguous reads, not a gather across planes whose same-offset addresses evict each other.
    """
    x = f32_at(x_addr)
    out = u32_at(out_addr)
    words = (c + 31) >> 5
    if s_c == 1:
        img, hh, ww = pixel_of(r0, h, w)
        for r in range(r0, r1):
            off = img * s_n + hh * s_h + ww * s_w
            img, hh, ww = next_pixel(img, hh, ww, h, w)
            for j in range(words):
                c0 = 32 * j
                count = min(32, c - c0)
                if count == 32:
                    out[r * words + j] = sign_bits32(x_addr + 4 * (off + c0))
                elif count == 16:
                    out[r * words + j] = np.uint32(sign_bits16(x_addr + 4 * (off + c0)))
                else:
                    v = np.uint32(0)
                    for b in range(count):
                        v |= np.uint32(x[off + c0 + b] >= np.float32(0.0)) << np.uint32(b)
                    out[r * words + j] = v
        return
    run = np.empty((words, w), dtype=np.uint32)
    r = r0
    while r < r1:  # runs of pixels within one image row
        img, hh, w0 = pixel_of(r, h, w)
        count = min(w - w0, r1 - r)
        for j in range(words):
            for p in range(count):
                run[j, p] = 0
        base = img * s_n + hh * s_h + w0 * s_w
        for ch in range(c):
            bit = np.uint32(1) << np.uint32(ch & 31)
            row = run[ch >> 5]
            plane = base + ch * s_c
            for p in range(count):
                row[p] |= np.uint32(x[plane + p * s_w] >= np.float32(0.0)) * bit
        for p in range(count):
            for j in range(words):
                out[(r + p) * words + j] = run[j, p]
        r += count


@njit(**_JIT)
def linear_task(x_addr, x_packed, x_rstride, x_cstride, k, weight, weight_t, out_kind, params_addr, thr_addr, relu,
                res_addr, res_rstride, res_cstride, out_addr, m0, m1, n0, n1):
    """Rows ``m0..m1`` x output channels ``n0..n1`` of a binary linear layer.

    Activations at ``x_addr``: packed uint32 words (``x_packed``; row stride ``x_rstride``
    words, ``ceil(K/32)`` contiguous words per row) or float32 values at ``m * x_rstride + i *
    x_cstride``, binarized on load. weight ``(N, K64)`` / weight_t ``(K64, N)`` uint64 (zero
    past K). Residual (0: none) float32 at ``m * res_rstride + n * res_cstride``.
    """
    k64 = weight.shape[1]
    channels = weight.shape[0]
    nb = n1 - n0
    rows = np.empty((BLOCK_ROWS, k64), dtype=np.uint64)
    rows32 = rows.view(np.uint32)
    mism = np.empty((BLOCK_ROWS, nb), dtype=np.uint64)
    acc = np.empty((BLOCK_ROWS, nb), dtype=np.int32)
    y = np.empty((BLOCK_ROWS, nb), dtype=np.float32)
    res_off = np.empty(BLOCK_ROWS, dtype=np.int64)
    xw = u32_at(x_addr)
    for b0 in range(m0, m1, BLOCK_ROWS):
        nrows = min(BLOCK_ROWS, m1 - b0)
        for r in range(nrows):
            for word in range(k64):
                rows[r, word] = 0
        for r in range(nrows):
            if x_packed:
                copy_bits(xw, (b0 + r) * x_rstride, k, rows, r, 0, rows32)
            else:
                binarize_bits(x_addr, (b0 + r) * x_rstride, x_cstride, k, rows, r)
            res_off[r] = (b0 + r) * res_rstride
        mismatches(rows, nrows, weight, weight_t, n0, n1, mism)
        for r in range(nrows):
            for n in range(nb):
                acc[r, n] = k - 2 * np.int64(mism[r, n])
        finish_block(acc, nrows, b0, n0, n1, channels, out_kind, params_addr, thr_addr, relu, res_addr, res_off,
                     res_cstride, out_addr, y)


def _add_tap(bits: int):
    """``add_tap(acc_addr, acc_row_bytes, w_addr, co, xw, src, src_step, mask, count)``: for
    ``count`` pixels ``p``, ``acc[p, :co] += popcount(a_p ^ w[:co])`` on uintN lanes, ``a_p``
    the input bits at ``xw[src + p * src_step]`` (one uint32 word, two for 64-bit lanes) under
    ``mask``. One function per lane width: a branch on the width inside these loops costs 7x."""
    vector_add = {16: xor_popcount_add16, 32: xor_popcount_add32, 64: xor_popcount_add64}[bits]
    lane = {16: np.uint16, 32: np.uint32, 64: np.uint64}[bits]
    lane_at = {16: u16_at, 32: u32_at, 64: u64_at}[bits]
    lane_bytes = bits // 8
    vector_lanes = VECTOR_BYTES // lane_bytes
    two_words = bits == 64

    @njit(**_JIT)
    def add_tap(acc_addr, acc_row_bytes, w_addr, co, xw, src, src_step, mask, count):
        full = co - co % vector_lanes
        if full == vector_lanes and full == co:  # one vector of output channels (16 at 16 bits):
            for p in range(count):  # no loop over vectors, which LLVM would vectorize once more
                at = src + p * src_step
                a = np.uint64(xw[at])
                if two_words:
                    a |= np.uint64(xw[at + 1]) << np.uint64(32)
                vector_add(acc_addr + p * acc_row_bytes, w_addr, a & mask)
            return
        for p in range(count):
            at = src + p * src_step
            a = np.uint64(xw[at])
            if two_words:
                a |= np.uint64(xw[at + 1]) << np.uint64(32)
            a &= mask
            row = acc_addr + p * acc_row_bytes
            n = 0
            while n < full:
                vector_add(row + lane_bytes * n, w_addr + lane_bytes * n, a)
                n += vector_lanes
            if full < co:
                acc = lane_at(row)
                w = lane_at(w_addr)
                for n in range(full, co):
                    acc[n] += lane(popcount(lane(lane(a) ^ w[n])))

    return add_tap


add_tap16 = _add_tap(16)
add_tap32 = _add_tap(32)
add_tap64 = _add_tap(64)


@njit(**_JIT)
def conv_direct_task(x_addr, n_img, h_in, w_in, c, oh_n, ow_n, kh_n, kw_n, stride, pad, tap_lanes, lane_bytes,
                     out_kind, params_addr, thr_addr, relu, res_addr, rs_n, rs_h, rs_w, rs_c, out_addr, m0, m1, n0, n1):
    """Output pixels ``m0..m1`` x channels ``n0..n1`` of a binary convolution with at most 64
    input channels: no im2col rows; along a segment of an output row, each tap's input word of
    every pixel meets the vector of output channels. ``tap_lanes``: ``(KH*KW, C_out *
    lane_bytes)`` bytes, per tap the C bits of each output channel in a lane of ``lane_bytes``
    (2, 4 or 8: the narrowest that holds C, so each vector op counts the most useful bits).
    Padding taps are skipped. Input, residual and output as :func:`conv_task`.
    """
    channels = tap_lanes.shape[1] // lane_bytes
    nb = n1 - n0
    words = (c + 31) >> 5
    mask = (np.uint64(1) << np.uint64(c)) - np.uint64(1) if c < 64 else ~np.uint64(0)
    counts = np.empty(SEGMENT_PIXELS * nb * lane_bytes, dtype=np.uint8)
    counts_addr = counts.ctypes.data
    row_bytes = nb * lane_bytes
    w_base = tap_lanes.ctypes.data + n0 * lane_bytes
    w_row_bytes = channels * lane_bytes
    acc = np.empty((SEGMENT_PIXELS, nb), dtype=np.int32)
    y = np.empty((SEGMENT_PIXELS, nb), dtype=np.float32)
    res_off = np.empty(SEGMENT_PIXELS, dtype=np.int64)
    xw = u32_at(x_addr)
    b0 = m0
    while b0 < m1:  # segments of one output row
        img, oh, ow0 = pixel_of(b0, oh_n, ow_n)
        nrows = min(SEGMENT_PIXELS, m1 - b0, ow_n - ow0)
        for i in range(nrows * row_bytes):  # a plain loop (a memset); slice assignment costs 10x
            counts[i] = 0
        kh_lo = max(0, pad - oh * stride)
        kh_hi = max(kh_lo, min(kh_n, h_in + pad - oh * stride))
        for kh in range(kh_lo, kh_hi):
            ih = oh * stride - pad + kh
            for kw in range(kw_n):
                # pixels ow0 + p whose tap column iw = (ow0 + p) * stride - pad + kw is inside
                p_lo = 0
                while p_lo < nrows and (ow0 + p_lo) * stride - pad + kw < 0:
                    p_lo += 1
                p_hi = nrows
                while p_hi > p_lo and (ow0 + p_hi - 1) * stride - pad + kw >= w_in:
                    p_hi -= 1
                if p_hi <= p_lo:
                    continue
                iw = (ow0 + p_lo) * stride - pad + kw
                src = ((img * h_in + ih) * w_in + iw) * words
                acc_at = counts_addr + p_lo * row_bytes
                w_at = w_base + (kh * kw_n + kw) * w_row_bytes
                if lane_bytes == 2:
                    add_tap16(acc_at, row_bytes, w_at, nb, xw, src, stride * words, mask, p_hi - p_lo)
                elif lane_bytes == 4:
                    add_tap32(acc_at, row_bytes, w_at, nb, xw, src, stride * words, mask, p_hi - p_lo)
                else:
                    add_tap64(acc_at, row_bytes, w_at, nb, xw, src, stride * words, mask, p_hi - p_lo)
        # acc = valid bits - 2 * mismatches: one flat loop over the segment (one per lane width:
        # a branch inside would stop vectorization), then the pixels with padding taps
        full_bits = np.int32((kh_hi - kh_lo) * kw_n * c)
        flat = i32_at(acc.ctypes.data)
        if lane_bytes == 2:
            counts16 = u16_at(counts_addr)
            for i in range(nrows * nb):
                flat[i] = full_bits - np.int32(2) * np.int32(counts16[i])
        elif lane_bytes == 4:
            counts32 = u32_at(counts_addr)
            for i in range(nrows * nb):
                flat[i] = full_bits - np.int32(2) * np.int32(counts32[i])
        else:
            counts64 = u64_at(counts_addr)
            for i in range(nrows * nb):
                flat[i] = full_bits - np.int32(2) * np.int32(counts64[i])
        for r in range(nrows):
            ow = ow0 + r
            valid_w = max(0, min(kw_n, w_in + pad - ow * stride) - max(0, pad - ow * stride))
            if valid_w < kw_n:
                missing = np.int32((kh_hi - kh_lo) * (kw_n - valid_w) * c)
                for n in range(nb):
                    flat[r * nb + n] -= missing
            res_off[r] = img * rs_n + oh * rs_h + ow * rs_w
        finish_block(acc, nrows, b0, n0, n1, channels, out_kind, params_addr, thr_addr, relu, res_addr, res_off,
                     rs_c, out_addr, y)
        b0 += nrows


@njit(**_JIT)
def im2col_row(xw, x64, mode, base, inside, top, left, h_in, w_in, kh_n, kw_n, c, words, word_mask, rows, rows32, r):
    """The im2col bit row of one output pixel into the zeroed ``rows[r]``: the channel bits of
    its valid taps at ``t * C`` (``mode`` 0: whole uint64 words, 1: whole uint32 words, 2: any
    C); returns the number of valid taps."""
    count = 0
    for kh in range(kh_n):
        if not inside and (top + kh < 0 or top + kh >= h_in):
            continue
        for kw in range(kw_n):
            if not inside and (left + kw < 0 or left + kw >= w_in):
                continue
            t = kh * kw_n + kw
            src = base + (kh * w_in + kw) * words
            if mode == 0:
                d0 = (t * c) >> 6
                s0 = src >> 1
                for j in range(c >> 6):
                    rows[r, d0 + j] = x64[s0 + j]
            elif mode == 1:
                d0 = (t * c) >> 5
                for j in range(words):
                    rows32[r, d0 + j] = xw[src + j]
            else:
                for j in range(words):
                    v = np.uint64(xw[src + j] & word_mask[j])
                    bit = t * c + 32 * j
                    shift = bit & 63
                    rows[r, bit >> 6] |= v << np.uint64(shift)
                    if shift > 32:
                        rows[r, (bit >> 6) + 1] |= v >> np.uint64(64 - shift)
            count += 1
    return count


@njit(**_JIT)
def conv_task(x_addr, x_aligned64, n_img, h_in, w_in, c, oh_n, ow_n, kh_n, kw_n, stride, pad, weight, weight_t,
              tap_popcounts, out_kind, params_addr, thr_addr, relu, res_addr, rs_n, rs_h, rs_w, rs_c, out_addr,
              m0, m1, n0, n1):
    """Output pixels ``m0..m1`` (NHWC order) x output channels ``n0..n1`` of a binary convolution
    through implicit im2col rows.

    x at ``x_addr``: ``(N*H*W, ceil(C/32))`` packed uint32 NHWC words (``x_aligned64``: 8-byte
    aligned, so whole uint64 words are copied when C is a multiple of 64); ``weight`` ``(C_out,
    K64)`` / ``weight_t`` ``(K64, C_out)`` uint64 im2col rows of the kernel; ``tap_popcounts``
    ``(C_out, KH*KW)`` int32, the set bits of each tap's weights. Residual (0: none) float32 at
    ``n * rs_n + oh * rs_h + ow * rs_w + c * rs_c``.
    """
    channels = weight.shape[0]
    k64 = weight.shape[1]
    nb = n1 - n0
    words = (c + 31) >> 5
    taps = kh_n * kw_n
    rows = np.empty((BLOCK_ROWS, k64), dtype=np.uint64)
    rows32 = rows.view(np.uint32)
    mism = np.empty((BLOCK_ROWS, nb), dtype=np.uint64)
    acc = np.empty((BLOCK_ROWS, nb), dtype=np.int32)
    y = np.empty((BLOCK_ROWS, nb), dtype=np.float32)
    res_off = np.empty(BLOCK_ROWS, dtype=np.int64)
    valid = np.empty(BLOCK_ROWS, dtype=np.int64)
    pix_h = np.empty(BLOCK_ROWS, dtype=np.int64)
    pix_w = np.empty(BLOCK_ROWS, dtype=np.int64)
    xw = u32_at(x_addr)
    x64 = u64_at(x_addr)
    mode = 0 if x_aligned64 and (c & 63) == 0 else (1 if (c & 31) == 0 else 2)
    word_mask = np.empty(words, dtype=np.uint32)  # the valid bits of each channel word
    for j in range(words):
        word_mask[j] = np.uint32(0xFFFFFFFF) >> np.uint32(32 - min(32, c - 32 * j))
    img, oh, ow = pixel_of(m0, oh_n, ow_n)
    for b0 in range(m0, m1, BLOCK_ROWS):
        nrows = min(BLOCK_ROWS, m1 - b0)
        for r in range(nrows):
            for word in range(k64):
                rows[r, word] = 0
        for r in range(nrows):
            top = oh * stride - pad
            left = ow * stride - pad
            base = ((img * h_in + top) * w_in + left) * words
            inside = top >= 0 and left >= 0 and top + kh_n <= h_in and left + kw_n <= w_in
            valid[r] = im2col_row(xw, x64, mode, base, inside, top, left, h_in, w_in, kh_n, kw_n, c, words,
                                  word_mask, rows, rows32, r)
            pix_h[r] = oh
            pix_w[r] = ow
            res_off[r] = img * rs_n + oh * rs_h + ow * rs_w
            img, oh, ow = next_pixel(img, oh, ow, oh_n, ow_n)
        mismatches(rows, nrows, weight, weight_t, n0, n1, mism)
        for r in range(nrows):
            valid_bits = valid[r] * c
            for n in range(nb):
                acc[r, n] = valid_bits - 2 * np.int64(mism[r, n])
            if valid[r] < taps:  # padding taps: take back the mismatches of their zero bits
                for kh in range(kh_n):
                    ih = pix_h[r] * stride - pad + kh
                    for kw in range(kw_n):
                        iw = pix_w[r] * stride - pad + kw
                        if ih < 0 or ih >= h_in or iw < 0 or iw >= w_in:
                            t = kh * kw_n + kw
                            for n in range(nb):
                                acc[r, n] += 2 * tap_popcounts[n0 + n, t]
        finish_block(acc, nrows, b0, n0, n1, channels, out_kind, params_addr, thr_addr, relu, res_addr, res_off,
                     rs_c, out_addr, y)


# ----------------------------------------------------------------------------- weight preparation


@njit(**_JIT)
def linear_weight_rows(words_addr, n, k, out):
    """Packed int32 ``(N, ceil(K/32))`` words at ``words_addr`` -> ``out`` ``(N, K64)`` uint64
    (zeroed by the caller), bits past K cleared."""
    src = u32_at(words_addr)
    out32 = out.view(np.uint32)
    words = (k + 31) >> 5
    for row in range(n):
        copy_bits(src, row * words, k, out, row, 0, out32)


@njit(**_JIT)
def conv_tap_lanes(words_addr, co_n, taps, c, lane_bytes, out):
    """OHWI packed int32 words at ``words_addr`` (C <= 64) -> ``out`` ``(KH*KW, C_out *
    lane_bytes)`` uint8: per tap, each output channel's C bits in a lane of ``lane_bytes``
    (little-endian), bits past C cleared."""
    src = u32_at(words_addr)
    words = (c + 31) >> 5
    mask = (np.uint64(1) << np.uint64(c)) - np.uint64(1) if c < 64 else ~np.uint64(0)
    for co in range(co_n):
        for t in range(taps):
            at = (co * taps + t) * words
            v = np.uint64(src[at])
            if words > 1:
                v |= np.uint64(src[at + 1]) << np.uint64(32)
            v &= mask
            for b in range(lane_bytes):
                out[t, co * lane_bytes + b] = np.uint8((v >> np.uint64(8 * b)) & np.uint64(255))


@njit(**_JIT)
def conv_weight_rows(words_addr, co_n, taps, c, out, tap_popcounts):
    """OHWI packed int32 ``(C_out, KH, KW, ceil(C/32))`` words at ``words_addr`` -> im2col
    weight rows ``out`` ``(C_out, K64)`` uint64 (zeroed by the caller) and each tap's set bits
    ``tap_popcounts`` ``(C_out, KH*KW)`` int32 (bits past C ignored)."""
    src = u32_at(words_addr)
    out32 = out.view(np.uint32)
    words = (c + 31) >> 5
    for co in range(co_n):
        for t in range(taps):
            off = (co * taps + t) * words
            copy_bits(src, off, c, out, co, t * c, out32)
            s = np.uint64(0)
            for j in range(words):
                v = np.uint64(src[off + j])
                left = c - 32 * j
                if left < 32:
                    v &= (np.uint64(1) << np.uint64(left)) - np.uint64(1)
                s += popcount(v)
            tap_popcounts[co, t] = s
