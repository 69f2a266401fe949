"""The paper's two indicators as formulas: values computed by hand for a one-layer model after
one SGD step, the loop reporting them at the last step, and their trend over o."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bnnkit.nn import BinaryLinear
from bnnkit.train.indicators import estimating_error, gradient_stability, run_indicators
from bnnkit.train.loop import train_one_epoch

W = [[0.05, -0.5, 1.2, -2.0],
     [0.3, -0.08, 0.9, 1.5],
     [-1.0, 0.2, -0.7, 0.12]]
X = [0.7, -1.3, 0.4, -0.2]  # binarized: [+1, -1, +1, -1]
M, T = 0.1, 1.5


def reste_slope(w: float, o: float) -> float:
    """ReSTE's backward by its piecewise definition (m = 0.1, t = 1.5)."""
    if abs(w) <= M:
        return M ** (1 / o) / M
    if abs(w) <= T:
        return (1 / o) * abs(w) ** ((1 - o) / o)
    return 0.0


def sign(v: float) -> float:
    return 1.0 if v >= 0 else -1.0


def unbiased_var(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / (len(values) - 1)


def one_layer(scale: str, o: float) -> nn.Module:
    layer = BinaryLinear(4, 3, bias=False, scale=scale, o=o, t=T).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(W, dtype=torch.float64))
    return nn.Sequential(layer)


def by_hand(scale: str, o: float, o_end: float, lr: float) -> tuple[list[list[float]], float, float]:
    """Gradient of loss = sum(layer(x)), the weights after one SGD step, and both indicators.

    d loss / d w_q[i][j] = binarize(x_j) =: G[i][j]. scale="none": w_q = sign(w), so
    grad[i][j] = slope(w[i][j]) G[i][j]. scale="tensor": w_q = alpha sign(w), alpha = mean |w|
    (not detached), so grad[i][j] = slope(w[i][j]) alpha G[i][j] + sign(w[i][j]) / N * sum(G sign(w)).
    """
    n = 12
    g_out = [[sign(x) for x in X] for _ in W]
    alpha = sum(abs(w) for row in W for w in row) / n
    through_alpha = sum(g * sign(w) for grow, wrow in zip(g_out, W) for g, w in zip(grow, wrow)) / n
    grad = []
    for wrow, grow in zip(W, g_out):
        if scale == "none":
            grad.append([reste_slope(w, o) * g for w, g in zip(wrow, grow)])
        else:
            grad.append([reste_slope(w, o) * alpha * g + sign(w) * through_alpha for w, g in zip(wrow, grow)])
    stepped = [[w - lr * g for w, g in zip(wrow, grow)] for wrow, grow in zip(W, grad)]
    error = math.sqrt(sum((abs(w) ** (1 / o_end) - 1) ** 2 for row in stepped for w in row))
    stability = unbiased_var([abs(g) for row in grad for g in row])
    return grad, error, stability


@pytest.mark.parametrize("scale", ["none", "tensor"])
@pytest.mark.parametrize("o, o_end", [(3.0, 3.0), (1.7, 3.0), (1.0, 2.0), (4.5, 5.0)])
def test_indicators_after_one_step_match_the_hand_computation(scale, o, o_end):
    model = one_layer(scale, o)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.tensor([X], dtype=torch.float64)
    model(x).sum().backward()
    optimizer.step()
    grad, error, stability = by_hand(scale, o, o_end, lr=0.1)
    assert model[0].weight.grad.flatten().tolist() == pytest.approx(sum(grad, []), rel=1e-12, abs=1e-15)
    assert estimating_error(model, o_end) == pytest.approx(error, rel=1e-6)  # computed in float32, as the reference
    assert gradient_stability(model) == pytest.approx(stability, rel=1e-6)


def test_the_loop_reports_them_at_the_last_step():
    """train_one_epoch's indicators are those of the model after its last step (weights after
    the step, gradients of that step), as the reference code logs them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), BinaryLinear(16, 16), nn.BatchNorm1d(16),
                          nn.Linear(16, 3))
    model[2].o = 2.5
    data = TensorDataset(torch.randn(40, 4), torch.randint(0, 3, (40,)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    stats = train_one_epoch(model, DataLoader(data, batch_size=8), optimizer, torch.device("cpu"), o_end=3.0,
                            progress=False, desc="")
    assert stats["estimating_error"] == pytest.approx(estimating_error(model, 3.0), rel=1e-12)
    assert stats["gradient_stability"] == pytest.approx(gradient_stability(model), rel=1e-12)
    assert stats["gradient_stability"] > 0


def test_zero_weights_and_missing_gradients():
    layer = BinaryLinear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, 0.25]]))
    model = nn.Sequential(layer)
    # sign(0) = +1, so a zero weight is at distance 1 from its binary value (the reference,
    # with torch.sign, counts 0 there); 0.25 ** (1/2) = 0.5 is 0.5 from +1
    assert estimating_error(model, 2.0) == pytest.approx(math.sqrt(1.0 + 0.25))
    assert gradient_stability(model) == 0.0  # no gradient yet
    assert estimating_error(nn.Linear(2, 2), 3.0) == 0.0  # no binary layer


def test_run_indicators_are_the_mean_error_and_the_total_stability():
    rows = [{"estimating_error": 3.0, "gradient_stability": 0.5}, {"estimating_error": 1.0, "gradient_stability": 0.25}]
    assert run_indicators(rows) == {"mean_estimating_error": 2.0, "total_gradient_stability": 0.75}
    assert all(math.isnan(v) for v in run_indicators([]).values())


OS = [1.0, 1.5, 2.0, 3.0, 5.0, 10.0]


def test_estimating_error_falls_as_o_grows():
    torch.manual_seed(0)
    layer = BinaryLinear(64, 64)
    with torch.no_grad():
        layer.weight.normal_(0, 0.3)
    errors = [estimating_error(nn.Sequential(layer), o) for o in OS]
    assert errors == sorted(errors, reverse=True) and len(set(errors)) == len(OS)
    assert errors[-1] < 0.5 * errors[0]


@pytest.mark.parametrize("scale", ["none", "tensor"])
def test_gradient_instability_rises_as_o_grows(scale):
    """The same weights, inputs and upstream gradient; only o changes: the variance of |grad|
    grows with o (the slope near 0 rises to m^(1/o) / m while the slope elsewhere falls)."""
    torch.manual_seed(0)
    x = torch.randn(32, 64)
    upstream = torch.randn(32, 64)
    stabilities = []
    for o in OS:
        layer = BinaryLinear(64, 64, scale=scale)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(64, 64, generator=torch.Generator().manual_seed(1)) * 0.3)
        layer.o = o
        (layer(x) * upstream).sum().backward()
        stabilities.append(gradient_stability(nn.Sequential(layer)))
    assert stabilities == sorted(stabilities) and len(set(stabilities)) == len(OS)
    assert stabilities[-1] > 10 * stabilities[0]
