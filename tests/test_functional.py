"""bnnkit.functional: forward values, every estimator's gradient against its formula, bad input."""

import pytest
import torch

from bnnkit import functional as BF
from bnnkit.estimators import ESTIMATORS, list_estimators

T = 1.5
M = 0.1
GRID = [-3.0, -T - 1e-3, -T, -1.0, -0.5, -M - 1e-3, -M, -0.05, -0.0, 0.0, 0.05, M, M + 1e-3, 0.5, 1.0, T, T + 1e-3, 3.0]


def expected_slope(name: str, x: float, o: float, t: float) -> float:
    a = abs(x)
    if name == "identity_ste":
        return 1.0
    if name == "clipped_ste":
        return 1.0 if a <= t else 0.0
    if name == "approx_sign":
        return 2 - 2 * a if a <= 1 else 0.0
    if a <= M:
        return M ** (1 / o) / M
    return (1 / o) * a ** ((1 - o) / o) if a <= t else 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("name", list_estimators())
def test_forward_is_sign_with_zero_plus_one(name, dtype):
    x = torch.tensor(GRID, dtype=dtype)
    y = BF.sign_estimator(x, name, o=2.0, t=T)
    assert y.dtype == dtype
    assert y.tolist() == [1.0 if v >= 0 else -1.0 for v in x.tolist()]
    assert y[GRID.index(0.0)].item() == 1.0 and y[GRID.index(-0.0)].item() == 1.0


@pytest.mark.parametrize("o", [1.0, 1.586, 3.0, 10.0])
@pytest.mark.parametrize("name", list_estimators())
def test_gradient_matches_piecewise_formula(name, o):
    x = torch.tensor(GRID, dtype=torch.float64, requires_grad=True)
    upstream = torch.linspace(0.5, 2.0, len(GRID), dtype=torch.float64)
    BF.sign_estimator(x, name, o=o, t=T).backward(upstream)
    want = torch.tensor([expected_slope(name, v, o, T) * u for v, u in zip(GRID, upstream.tolist())],
                        dtype=torch.float64)
    torch.testing.assert_close(x.grad, want, rtol=1e-12, atol=1e-12)


def test_reste_sign_named_function_and_paper_values():
    x = torch.tensor([0.0, 0.1, 0.1 + 1e-6, 1.5, 1.6], requires_grad=True)
    BF.reste_sign(x, o=3.0).sum().backward()
    # 4.6416 inside the rectified interval, 1.5472 just outside: the jump at |x| = m is intended.
    assert x.grad.tolist() == pytest.approx([4.6416, 4.6416, 1.5472, (1 / 3) * 1.5 ** (-2 / 3), 0.0], abs=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gradient_is_computed_in_float32(dtype):
    x32 = torch.tensor(GRID)
    x = x32.to(dtype).requires_grad_(True)
    g = torch.full_like(x, 0.75)
    BF.reste_sign(x, o=2.5).backward(g)
    assert x.grad.dtype == dtype
    want = torch.tensor([expected_slope("reste", v, 2.5, T) * 0.75 for v in x.detach().float().tolist()])
    torch.testing.assert_close(x.grad.float(), want, rtol=1e-2 if dtype == torch.bfloat16 else 1e-3, atol=1e-3)


def test_named_shortcuts_agree_with_sign_estimator():
    torch.manual_seed(0)
    x = torch.randn(100, dtype=torch.float64) * 2
    for fn, name, kw in [(BF.identity_ste_sign, "identity_ste", {}), (BF.clipped_ste_sign, "clipped_ste", {"t": 1.2}),
                         (BF.clipped_ste_sign, "clipped_ste", {}), (BF.approx_sign, "approx_sign", {})]:
        a = x.clone().requires_grad_(True)
        b = x.clone().requires_grad_(True)
        fn(a, **kw).sum().backward()
        BF.sign_estimator(b, name, **kw).sum().backward()
        assert torch.equal(a.grad, b.grad), name


def test_the_clipped_ste_is_the_papers_ste_by_default():
    """The ReSTE reference code's STE (``Binary.backward``) passes the gradient where |x| <= 1;
    ReSTE itself clips at t = 1.5."""
    x = torch.tensor([-1.5, -1.0 - 1e-6, -1.0, 0.0, 1.0, 1.0 + 1e-6, 1.5], dtype=torch.float64, requires_grad=True)
    BF.clipped_ste_sign(x).sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    y = x.detach().clone().requires_grad_(True)
    BF.sign_estimator(y, "clipped_ste").sum().backward()
    assert torch.equal(x.grad, y.grad)
    z = x.detach().clone().requires_grad_(True)
    BF.sign_estimator(z, "reste", o=1.0).sum().backward()  # ReSTE at o = 1: the clipped STE at t = 1.5
    assert z.grad.tolist() == [1.0] * 7


def test_the_ambiguous_name_ste_is_refused_naming_both_meanings():
    for call in (lambda: BF.sign_estimator(torch.zeros(2), "ste"), lambda: BF.ste_sign(torch.zeros(2))):
        with pytest.raises(ValueError, match="(identity_ste.*clipped_ste|clipped_ste.*identity_ste)"):
            call()
    assert "ste" not in list_estimators()


def test_callable_estimator_is_used_as_is():
    x = torch.randn(10, requires_grad=True)
    y = BF.sign_estimator(x, torch.tanh)
    y.sum().backward()
    torch.testing.assert_close(x.grad, 1 - torch.tanh(x.detach()) ** 2)


def test_binarize_weight_scales():
    torch.manual_seed(0)
    w = torch.randn(4, 3, 2, 2)
    b = torch.where(w >= 0, 1.0, -1.0)
    torch.testing.assert_close(BF.binarize_weight(w, "tensor"), b * w.abs().mean())
    torch.testing.assert_close(BF.binarize_weight(w, "channel"), b * w.abs().mean(dim=(1, 2, 3), keepdim=True))
    assert torch.equal(BF.binarize_weight(w, "none"), b)


def test_unknown_estimator_lists_valid_names():
    with pytest.raises(ValueError) as e:
        BF.sign_estimator(torch.zeros(2), "bogus")
    for name in ESTIMATORS:
        assert name in str(e.value)


@pytest.mark.parametrize("o,t", [(0.5, 1.5), (float("nan"), 1.5), (float("inf"), 1.5), (2.0, 0.1), (2.0, -1.0)])
def test_reste_rejects_bad_parameters(o, t):
    with pytest.raises(ValueError, match="ReSTE needs"):
        BF.reste_sign(torch.zeros(2), o=o, t=t)


def test_bad_inputs_are_named():
    with pytest.raises(TypeError, match="floating-point"):
        BF.reste_sign(torch.zeros(2, dtype=torch.int32), o=2.0)
    with pytest.raises(ValueError, match="tensor, channel, none"):
        BF.binarize_weight(torch.zeros(2, 2), "row")
    with pytest.raises(TypeError, match="callable"):
        BF.sign_estimator(torch.zeros(2), 3)
    with pytest.raises(ValueError, match="threshold t > 0"):
        BF.clipped_ste_sign(torch.zeros(2), t=0.0)

