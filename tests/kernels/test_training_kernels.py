"""The training kernels (binarize, estimator backward, scaled weight binarization) against their references.

Without a GPU the kernels run in Triton's interpreter on CPU tensors; on a GPU machine on CUDA.
Signs and packed bits must be exact. Float outputs and gradients are compared with these
per-dtype tolerances (``|got - want| <= atol + rtol * |want|``):

- float32: rtol 1e-5, atol 1e-6. The ReSTE power is ``exp2(e * log2|x|)`` (approximate
  ``ex2``/``lg2`` on the GPU), the reference uses ``pow``; group sums run in another order.
- float16: rtol 2^-10, atol 1e-5 (one fp16 ulp: the float32 results above can round to
  neighbouring fp16 values).
- bfloat16: rtol 2^-7, atol 1e-5 (one bf16 ulp; Triton's interpreter also truncates when it
  converts float32 to bfloat16, where the GPU rounds to nearest even).
"""

import math

import pytest
import torch

pytest.importorskip("triton")

from bnnkit.kernels import binarize as binarize_mod  # noqa: E402
from bnnkit.kernels import elementwise  # noqa: E402
from bnnkit.kernels import sign_grad as sign_grad_mod  # noqa: E402
from bnnkit.kernels import weight_binarize as weight_mod  # noqa: E402
from bnnkit.kernels.binarize import binarize, binarize_reference  # noqa: E402
from bnnkit.kernels.bitpack import pack_signs_reference  # noqa: E402
from bnnkit.kernels.bits import interpreting  # noqa: E402
from bnnkit.kernels.pack_signs import pack_signs  # noqa: E402
from bnnkit.kernels.sign_grad import RESTE_M, EstimatorKind, sign_grad, sign_grad_reference  # noqa: E402
from bnnkit.kernels.weight_binarize import (  # noqa: E402
    scaled_binarize_backward,
    scaled_binarize_backward_reference,
    scaled_binarize_forward,
    scaled_binarize_forward_reference,
)
from kernel_testing import sign_edge_values  # noqa: E402

DEVICE = "cpu" if interpreting() else "cuda"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOLERANCE = {
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float16: dict(rtol=2.0**-10, atol=1e-5),
    torch.bfloat16: dict(rtol=2.0**-7, atol=1e-5),
}
SHAPES = [(1,), (4097,), (3, 5, 7), (2, 3, 33, 5)]


@pytest.fixture(autouse=True)
def poisoned_empty(monkeypatch):
    """Fresh allocations hold NaN (floats) or 0x5A5A5A5A (ints), so unwritten output shows up."""

    def poison(t):
        if t.numel():
            t.fill_(float("nan") if t.is_floating_point() else 0x5A5A5A5A)
        return t

    for name in ("empty", "empty_like", "empty_strided"):
        original = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, _f=original, **k: poison(_f(*a, **k)))


def _random(shape, dtype, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).to(dtype).to(DEVICE)


def _edge_values(dtype):
    """0, ±0, ±m, ±t, their neighbours, beyond t, tiny, huge, ±inf, NaN, in ``dtype``."""
    vals = [0.0, -0.0, RESTE_M, -RESTE_M, 0.05, -0.05, 1.0, -1.0, 1.5, -1.5, 1.6, -1.6, 4.0, -4.0,
            1e-30, -1e-30, 1e4, -1e4, math.inf, -math.inf, math.nan]
    x = torch.tensor(vals, dtype=torch.float32)
    neighbours = torch.cat([torch.nextafter(x, torch.full_like(x, math.inf)),
                            torch.nextafter(x, torch.full_like(x, -math.inf))])
    x = torch.cat([x, neighbours[torch.isfinite(neighbours)]]).to(dtype)
    if interpreting() and dtype == torch.bfloat16:
        # Triton 3.9's interpreter converts subnormal bf16 to float32 wrongly (-9.2e-41 -> -0.0);
        # the GPU converts exactly, and the GPU run of this test keeps them.
        x = x[~((x != 0) & (x.abs() < torch.finfo(torch.float32).tiny))]
    return x.to(DEVICE)


def _assert_close(got, want, dtype, what):
    assert got.dtype == want.dtype and got.shape == want.shape, what
    torch.testing.assert_close(got, want, equal_nan=True, msg=lambda m: f"{what} ({dtype}): {m}", **TOLERANCE[dtype])


# ---- binarize -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_binarize_exact(dtype, shape):
    x = _random(shape, dtype, seed=len(shape))
    x.view(-1)[0] = 0.0
    out = binarize(x)
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.equal(out, binarize_reference(x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_binarize_edge_values(dtype):
    x = _edge_values(dtype)
    out = binarize(x)
    assert torch.equal(out, binarize_reference(x))
    assert out[0].item() == 1 and out[1].item() == 1  # sign(+0) = sign(-0) = +1
    assert out[torch.isnan(x)].eq(-1).all()


@pytest.mark.parametrize("view", ["transpose", "step", "channels_last", "expand", "offset"])
def test_binarize_non_contiguous(view):
    base = _random((4, 6, 5, 7), torch.float32, seed=3)
    x = {
        "transpose": base.transpose(1, 3),
        "step": base[:, ::2, 1:, ::3],
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "expand": base[:1, :1].expand(3, 4, 5, 7),
        "offset": base.view(-1)[5:].view(-1)[:100].view(4, 25),
    }[view]
    out = binarize(x)
    assert torch.equal(out, binarize_reference(x))
    if view in ("transpose", "channels_last"):  # dense layouts are kept, not copied
        assert out.stride() == x.stride()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,k", [(1, 1), (3, 31), (17, 32), (5, 33), (2, 300), (65, 7)])
def test_binarize_pack_bits_exact(dtype, rows, k):
    x = _random((rows, k), dtype, seed=k)
    x[0, 0] = 0.0
    values, words = binarize(x, pack=True)
    assert torch.equal(values, binarize_reference(x))
    assert torch.equal(words, pack_signs_reference(x))
    assert torch.equal(pack_signs(x), pack_signs_reference(x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_binarize_and_pack_subnormals_and_specials(dtype):
    """Every sign exact, bf16 subnormals included (bnnkit.kernels.bits.nonnegative widens bf16
    through its bits; the interpreter's own bf16 -> fp32 conversion flushes them to -0.0)."""
    x = sign_edge_values((7, 45), dtype, seed=9).to(DEVICE)
    values, words = binarize(x, pack=True)
    assert torch.equal(values, binarize_reference(x)) and torch.equal(binarize(x), values)
    assert torch.equal(words, pack_signs_reference(x))


def test_pack_edge_values_batched_and_strided():
    x = _edge_values(torch.float32)
    x = torch.stack([x, -x, x.flip(0)])  # [3, K]: NaN in every row
    for view in (x, x.t().contiguous().t(), x[:, 1::2], x.unsqueeze(0).expand(2, 3, -1)):
        values, words = binarize(view, pack=True)
        assert torch.equal(values, binarize_reference(view))
        assert torch.equal(words, pack_signs_reference(view))


def test_binarize_empty_and_scalar():
    for shape in [(0,), (3, 0), (0, 5)]:
        x = torch.empty(shape, device=DEVICE)
        assert binarize(x).shape == shape
        values, words = binarize(x, pack=True)
        assert values.shape == shape and torch.equal(words, pack_signs_reference(x))
    scalar = torch.tensor(-0.5, device=DEVICE)
    assert binarize(scalar).item() == -1 and binarize(scalar).shape == ()
    with pytest.raises(ValueError, match="at least 1 dim"):
        pack_signs(scalar)


def test_binarize_rejects_unsupported_dtype():
    with pytest.raises(TypeError, match="float16, torch.bfloat16 and torch.float32"):
        binarize(torch.zeros(3, dtype=torch.float64, device=DEVICE))
    with pytest.raises(TypeError, match="float32/float16/bfloat16/int8"):
        pack_signs(torch.zeros(3, dtype=torch.int32, device=DEVICE))


# ---- estimator backward ---------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", list(EstimatorKind))
@pytest.mark.parametrize("o", [1.0, 2.3, 3.0])
def test_sign_grad_random(dtype, kind, o):
    x = _random((3, 1000, 3), dtype, seed=int(o * 10), scale=1.0)
    grad_out = _random(x.shape, dtype, seed=7)
    got = sign_grad(x, grad_out, kind, o, 1.5)
    _assert_close(got, sign_grad_reference(x, grad_out, kind, o, 1.5), dtype, f"{kind.name} o={o}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", list(EstimatorKind))
def test_sign_grad_edge_values(dtype, kind):
    x = _edge_values(dtype)
    grad_out = torch.linspace(-3, 3, x.numel(), device=DEVICE).to(dtype)
    for o, t in [(1.0, 1.5), (3.0, 1.5), (2.0, 1.0)]:
        got = sign_grad(x, grad_out, kind, o, t)
        _assert_close(got, sign_grad_reference(x, grad_out, kind, o, t), dtype, f"{kind.name} o={o} t={t}")
        # NaN input: slope 1 for STE (gradient passes), 0 otherwise
        nan = torch.isnan(x)
        want_nan = grad_out[nan] if kind == EstimatorKind.IDENTITY_STE else torch.zeros_like(grad_out[nan])
        assert torch.equal(got[nan], want_nan)


def test_reste_branches_at_m_and_t():
    # In float32 |x| = m (as float32) is rectified, its upper neighbour follows the power law;
    # |x| = t still has slope f'(t), its upper neighbour 0.
    m = torch.tensor(RESTE_M, dtype=torch.float32)
    t = torch.tensor(1.5, dtype=torch.float32)
    m_up, t_up = (torch.nextafter(v, torch.tensor(math.inf)) for v in (m, t))
    x = torch.stack([m, -m, m_up, -m_up, t, -t, t_up, -t_up]).to(DEVICE)
    o = 3.0
    g = sign_grad(x, torch.ones_like(x), EstimatorKind.RESTE, o, 1.5).cpu()
    rectified = RESTE_M ** (1 / o) / RESTE_M
    power_m, power_t = ((1 / o) * a ** ((1 - o) / o) for a in (m_up.item(), 1.5))
    want = [rectified, rectified, power_m, power_m, power_t, power_t, 0.0, 0.0]
    torch.testing.assert_close(g, torch.tensor(want), rtol=1e-5, atol=0)


@pytest.mark.parametrize("layout", ["transpose_both", "transpose_x_only", "channels_last_both", "step"])
def test_sign_grad_non_contiguous(layout):
    x = _random((4, 6, 5, 7), torch.bfloat16, seed=11, scale=1.0)
    grad_out = _random((4, 6, 5, 7), torch.bfloat16, seed=12)
    if layout == "transpose_both":
        x, grad_out = x.transpose(0, 2), grad_out.transpose(0, 2)
    elif layout == "transpose_x_only":
        x, grad_out = x.transpose(0, 2), grad_out.transpose(0, 2).contiguous()
    elif layout == "channels_last_both":
        x = x.contiguous(memory_format=torch.channels_last)
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    else:
        x, grad_out = x[:, ::2], grad_out[:, 1::2]
    got = sign_grad(x, grad_out, EstimatorKind.RESTE, 2.5, 1.5)
    _assert_close(got, sign_grad_reference(x, grad_out, EstimatorKind.RESTE, 2.5, 1.5), torch.bfloat16, layout)
    if layout in ("transpose_both", "channels_last_both"):
        assert got.stride() == x.stride()


def test_sign_grad_mixed_grad_dtype_and_empty():
    x = _random((33,), torch.bfloat16, seed=1, scale=1.0)
    grad_out = _random((33,), torch.float32, seed=2)
    got = sign_grad(x, grad_out, EstimatorKind.RESTE, 2.0, 1.5)
    _assert_close(got, sign_grad_reference(x, grad_out, EstimatorKind.RESTE, 2.0, 1.5), torch.bfloat16, "mixed")
    empty = torch.empty(0, 4, device=DEVICE)
    assert sign_grad(empty, empty, EstimatorKind.IDENTITY_STE).shape == (0, 4)


def test_sign_grad_bad_arguments():
    x = torch.zeros(4, device=DEVICE)
    with pytest.raises(ValueError, match="shape"):
        sign_grad(x, torch.zeros(5, device=DEVICE), EstimatorKind.RESTE)
    with pytest.raises(ValueError, match=r"unknown estimator kind 7; expected one of identity_ste, clipped_ste"):
        sign_grad(x, x, 7)
    with pytest.raises(ValueError, match="o must be a finite number > 0"):
        sign_grad(x, x, EstimatorKind.RESTE, o=0.0)
    with pytest.raises(ValueError, match="t must be > 0"):
        sign_grad(x, x, EstimatorKind.RESTE, o=2.0, t=float("nan"))
    with pytest.raises(TypeError, match="dtype torch.float64"):
        sign_grad(x.double(), x.double(), EstimatorKind.IDENTITY_STE)


# ---- scaled weight binarization -------------------------------------------------------------

WEIGHT_SHAPES = [(6, 3, 3, 3), (5, 7), (3, 2100)]


def _check_weight_forward(w, scale):
    out, alpha = scaled_binarize_forward(w, scale)
    want_out, want_alpha = scaled_binarize_forward_reference(w, scale)
    if scale == "none":
        assert alpha is None
        assert torch.equal(out, want_out)
        return alpha
    assert alpha.dtype == want_alpha.dtype and alpha.shape == want_alpha.shape
    # alpha: a fixed-order float32 sum; torch.mean sums in another order (a few ulp apart)
    torch.testing.assert_close(alpha, want_alpha, rtol=1e-6, atol=0, equal_nan=True)
    _assert_close(out, want_out, w.dtype, f"forward scale={scale}")
    finite = torch.isfinite(out)
    assert torch.equal((out[finite] > 0), (w[finite] >= 0))  # the signs are exact
    return alpha


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", ["tensor", "channel", "none"])
@pytest.mark.parametrize("shape", WEIGHT_SHAPES)
def test_scaled_binarize_forward(dtype, scale, shape):
    w = _random(shape, dtype, seed=sum(shape), scale=0.5)
    w.view(-1)[1] = 0.0
    _check_weight_forward(w, scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", ["tensor", "channel", "none"])
@pytest.mark.parametrize("kind", list(EstimatorKind))
def test_scaled_binarize_backward(dtype, scale, kind):
    w = _random((6, 3, 3, 3), dtype, seed=int(kind) + 1, scale=0.7)
    w.view(-1)[:4] = torch.tensor([0.0, RESTE_M, -1.5, 2.0])
    grad_out = _random(w.shape, dtype, seed=40)
    _, alpha = scaled_binarize_forward_reference(w, scale)
    got = scaled_binarize_backward(w, alpha, grad_out, scale, kind, 2.3, 1.5)
    want = scaled_binarize_backward_reference(w, alpha, grad_out, scale, kind, 2.3, 1.5)
    _assert_close(got, want, dtype, f"backward {scale} {kind.name}")


@pytest.mark.parametrize("scale", ["tensor", "channel"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scaled_binarize_split_reduction(monkeypatch, scale, dtype):
    """Groups larger than FUSED_MAX_GROUP: partial sums in a first launch (several blocks per chunk)."""
    monkeypatch.setattr(weight_mod, "FUSED_MAX_GROUP", 1024)
    monkeypatch.setattr(weight_mod, "MAX_SPLITS", 2)
    fused, chunk, splits, _, _ = weight_mod.group_plan(1, 3 * 2100)
    assert not fused and splits == 2 and chunk == 4096
    w = _random((3, 2100), dtype, seed=5, scale=0.5)
    grad_out = _random(w.shape, dtype, seed=6)
    alpha = _check_weight_forward(w, scale)
    got = scaled_binarize_backward(w, alpha, grad_out, scale, EstimatorKind.RESTE, 3.0, 1.5)
    want = scaled_binarize_backward_reference(w, alpha, grad_out, scale, EstimatorKind.RESTE, 3.0, 1.5)
    _assert_close(got, want, dtype, "split backward")


def test_scaled_binarize_nan_weight_poisons_its_group_only():
    w = _random((3, 20), torch.float32, seed=8)
    w[1, 4] = math.nan
    grad_out = _random(w.shape, torch.float32, seed=9)
    out, alpha = scaled_binarize_forward(w, "channel")
    assert torch.isnan(alpha[1]).all() and torch.isnan(out[1]).all()
    assert torch.isfinite(out[[0, 2]]).all()
    grad = scaled_binarize_backward(w, alpha, grad_out, "channel", EstimatorKind.RESTE, 2.0, 1.5)
    want = scaled_binarize_backward_reference(w, alpha, grad_out, "channel", EstimatorKind.RESTE, 2.0, 1.5)
    assert torch.isnan(grad[1]).all() and torch.isfinite(grad[[0, 2]]).all()
    _assert_close(grad, want, torch.float32, "nan weight")
    out_t, alpha_t = scaled_binarize_forward(w, "tensor")
    assert torch.isnan(alpha_t) and torch.isnan(out_t).all()


def test_scaled_binarize_non_contiguous_and_empty():
    w = _random((7, 5), torch.float16, seed=10).t()  # [5, 7], a transposed Linear weight
    grad_out = _random((7, 5), torch.float16, seed=11).t()
    alpha = _check_weight_forward(w, "channel")
    got = scaled_binarize_backward(w, alpha, grad_out, "channel", EstimatorKind.APPROX_SIGN)
    want = scaled_binarize_backward_reference(w, alpha, grad_out, "channel", EstimatorKind.APPROX_SIGN)
    _assert_close(got, want, torch.float16, "transposed")
    for shape in [(0, 3), (3, 0)]:
        e = torch.empty(shape, device=DEVICE)
        out, alpha = scaled_binarize_forward(e, "channel")
        want_out, want_alpha = scaled_binarize_forward_reference(e, "channel")
        assert out.shape == shape and alpha.shape == want_alpha.shape
        assert torch.equal(torch.isnan(alpha), torch.isnan(want_alpha))
        assert scaled_binarize_backward(e, alpha, e, "channel", EstimatorKind.RESTE).shape == shape


def test_scaled_binarize_bad_arguments():
    w = torch.zeros(4, 3, device=DEVICE)
    with pytest.raises(ValueError, match="unknown weight scale 'row'"):
        scaled_binarize_forward(w, "row")
    with pytest.raises(ValueError, match="output-channel dim"):
        scaled_binarize_forward(torch.zeros(4, device=DEVICE), "channel")
    with pytest.raises(ValueError, match="output-channel dim"):
        scaled_binarize_forward_reference(torch.zeros(4), "channel")
    with pytest.raises(ValueError, match="needs alpha with 4 value"):
        scaled_binarize_backward(w, None, w, "channel", EstimatorKind.RESTE)
    with pytest.raises(ValueError, match="shape"):
        scaled_binarize_backward(w, torch.ones(()), w.t(), "tensor", EstimatorKind.RESTE)


# ---- offsets beyond int32 -------------------------------------------------------------------

class _LaunchRecorder:
    """Stands in for a Triton kernel: records grid and constexprs instead of launching."""

    def __init__(self):
        self.launches = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((grid, kwargs))


def test_launchers_choose_int64_offsets_past_int32(monkeypatch):
    recorder = _LaunchRecorder()
    for module, name in [(binarize_mod, "_binarize_kernel"), (binarize_mod, "_binarize_pack_kernel"),
                         (sign_grad_mod, "_sign_grad_kernel"), (weight_mod, "_group_partial_sum_kernel"),
                         (weight_mod, "_scaled_binarize_forward_kernel"),
                         (weight_mod, "_scaled_binarize_backward_kernel")]:
        monkeypatch.setattr(module, name, recorder)
    big = torch.empty(2**31 + 64, dtype=torch.bfloat16, device="meta")  # no memory behind it
    small = torch.empty(2**31 - 2**13, dtype=torch.bfloat16, device="meta")
    binarize(big), binarize(small)
    sign_grad(big, big, EstimatorKind.RESTE, 2.0), sign_grad(small, small, EstimatorKind.RESTE, 2.0)
    binarize(big.view(-1, 64), pack=True), binarize(small.view(-1, 64), pack=True)
    scaled_binarize_forward(big.view(64, -1), "channel")
    flags = [kwargs["INDEX_64"] for _, kwargs in recorder.launches]
    assert flags == [True, False, True, False, True, False, True, True]
    assert all(grid[0] < 2**31 for grid, _ in recorder.launches)
    assert elementwise.needs_int64_index(2**31 - 1) is False and elementwise.needs_int64_index(2**31) is True


def test_int64_offset_path_computes_the_same(monkeypatch):
    """The INDEX_64 variants, forced on small inputs, give the same results."""
    monkeypatch.setattr(elementwise, "INT32_MAX", 16)
    x = _random((5, 45), torch.float16, seed=12, scale=1.0)
    grad_out = _random(x.shape, torch.float16, seed=13)
    assert torch.equal(binarize(x), binarize_reference(x))
    assert torch.equal(pack_signs(x), pack_signs_reference(x))
    _assert_close(sign_grad(x, grad_out, EstimatorKind.RESTE, 2.0),
                  sign_grad_reference(x, grad_out, EstimatorKind.RESTE, 2.0), torch.float16, "int64 sign_grad")
    alpha = _check_weight_forward(x, "channel")
    _assert_close(scaled_binarize_backward(x, alpha, grad_out, "channel", EstimatorKind.RESTE, 2.0),
                  scaled_binarize_backward_reference(x, alpha, grad_out, "channel", EstimatorKind.RESTE, 2.0),
                  torch.float16, "int64 weight backward")
