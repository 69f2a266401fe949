"""bnnkit.ops as torch.library ops: opcheck, backend routing, whole training steps on both backends,
torch.compile(fullgraph=True) without recompiles when o changes, and autocast.

Without a GPU the triton backend runs the kernels in Triton's interpreter on CPU tensors
(the custom ops are opaque to torch.compile, so that works inside compiled graphs too).
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from bnnkit import models, ops
from bnnkit.backend import use_backend
from bnnkit.kernels.bits import interpreting
from bnnkit.kernels.sign_grad import EstimatorKind
from bnnkit.nn import BinaryConv2d, BinaryLinear, binary_layers
from bnnkit.schedule import OSchedule

DEVICE = "cpu" if interpreting() else "cuda"
BACKENDS = ["torch", "triton"]
# One training step on the two backends: the kernels' float32 slopes and fixed-order alpha sums
# differ from the references in the last bits; SGD turns that into weight differences of ~lr * 1e-6.
STEP_TOLERANCE = dict(rtol=1e-4, atol=1e-5)


def _randn(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(device=DEVICE, dtype=dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_sign_estimate(backend, dtype):
    o = torch.tensor(2.5, dtype=torch.float64)
    x = _randn(2, 3, 4, 5, dtype=dtype)
    cases = [(x, int(EstimatorKind.RESTE), o, 1.5),
             (x.contiguous(memory_format=torch.channels_last), int(EstimatorKind.APPROX_SIGN), o, 1.5),
             (x.transpose(1, 3), int(EstimatorKind.IDENTITY_STE), o, 1.5)]
    with use_backend(backend):
        for args in cases:
            torch.library.opcheck(torch.ops.bnnkit.sign_estimate.default, (args[0].requires_grad_(True), *args[1:]))
            grad = _randn(*args[0].shape, dtype=dtype, seed=1)
            torch.library.opcheck(torch.ops.bnnkit.sign_estimate_backward.default,
                                  (args[0].detach(), grad, *args[1:]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", ["tensor", "channel"])
def test_opcheck_scaled_binarize(backend, scale):
    o = torch.tensor(1.7, dtype=torch.float64)
    w = _randn(6, 3, 3, 3, dtype=torch.bfloat16)
    with use_backend(backend):
        torch.library.opcheck(torch.ops.bnnkit.scaled_binarize.default,
                              (w.clone().requires_grad_(True), scale, int(EstimatorKind.RESTE), o, 1.5))
        _, alpha = torch.ops.bnnkit.scaled_binarize(w, scale, int(EstimatorKind.RESTE), o, 1.5)
        torch.library.opcheck(torch.ops.bnnkit.scaled_binarize_backward.default,
                              (w, alpha, _randn(6, 3, 3, 3, seed=2).to(torch.bfloat16), scale,
                               int(EstimatorKind.RESTE), o, 1.5))


def test_backend_routes_to_kernels_or_references(monkeypatch):
    calls = []
    for name in ("binarize", "sign_grad", "scaled_binarize_forward", "scaled_binarize_backward"):
        real = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    x = _randn(3, 4).requires_grad_(True)
    w = _randn(5, 4, seed=1).requires_grad_(True)

    def step():
        calls.clear()
        (F.linear(ops.sign_estimate(x, EstimatorKind.RESTE, 2.0), ops.scaled_binarize(w, "channel", 3, 2.0))
         .sum().backward())
        return sorted(calls)

    with use_backend("torch"):
        assert step() == []
    with use_backend("triton"):
        assert step() == ["binarize", "scaled_binarize_backward", "scaled_binarize_forward", "sign_grad"]
        x64 = x.detach().double().requires_grad_(True)
        calls.clear()
        ops.sign_estimate(x64, EstimatorKind.RESTE, 2.0).sum().backward()
        assert calls == []  # float64 has no kernel: the reference runs, on any backend


def _model(name="digits_cnn", seed=0, **kwargs):
    torch.manual_seed(seed)
    width = {"channels": 8} if name == "digits_cnn" else {"hidden": 64}
    return models.create(name, **width, **kwargs).to(DEVICE)


def _train_step(model, x, y, lr=0.1, forward=None):
    """One SGD step of ``model`` (run through ``forward``, e.g. its compiled form); returns the
    loss and the parameters after the step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss = F.cross_entropy((model if forward is None else forward)(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach(), {name: p.detach().clone() for name, p in model.named_parameters()}


class _ScaledBinaryNet(torch.nn.Module):
    """FP conv -> BN -> binary conv (binary input, per-channel alpha) -> binary linear (real
    input, per-tensor alpha). Nothing discontinuous follows a scaled binary layer, so the
    last-bit differences between the kernels' alpha (a fixed-order float32 sum) and torch.mean
    stay last-bit differences."""

    def __init__(self):
        super().__init__()
        # no bias: before a training-mode BatchNorm its gradient is 0 up to rounding, so whether
        # it moves in one step depends on the float order of the BN backward
        self.conv0 = torch.nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn0 = torch.nn.BatchNorm2d(8)
        self.conv1 = BinaryConv2d(8, 16, 3, padding=1, bias=False, scale="channel")
        self.fc = BinaryLinear(16 * 64, 10, input_estimator=None, scale="tensor")

    def forward(self, x):
        return self.fc(self.conv1(self.bn0(self.conv0(x))).flatten(1))


def _step_model(name, seed=0):
    if name != "scaled_binary_net":
        return _model(name, seed, scale="none")
    torch.manual_seed(seed)
    return _ScaledBinaryNet().to(DEVICE)


# Zoo models (conv -> ReLU -> BN) with scale="none": their forward is then bit-identical on both
# backends. With a scale, the kernels' alpha may differ from torch.mean in the last bit, and
# ReLU -> BN -> binarize turns such bits into different signs wherever a binary dot product is
# exactly 0 or a BatchNorm input ties with its batch mean; the scaled path is checked in a model
# where nothing discontinuous follows a scaled layer.
@pytest.mark.parametrize("name", ["digits_cnn", "digits_mlp", "scaled_binary_net"])
def test_training_step_triton_backend_equals_torch_backend(name):
    x, y = _randn(16, 1, 8, 8, seed=3), torch.randint(0, 10, (16,), device=DEVICE)
    results = {}
    for backend in BACKENDS:
        model = _step_model(name)
        for _, layer in binary_layers(model):
            layer.o = 2.3
        with use_backend(backend):
            results[backend] = _train_step(model, x, y)
    (loss_t, params_t), (loss_k, params_k) = results["torch"], results["triton"]
    torch.testing.assert_close(loss_k, loss_t, rtol=1e-6, atol=1e-6)
    initial = dict(_step_model(name).named_parameters())
    for name_, p in params_t.items():
        assert not torch.equal(p, initial[name_].detach()) or name_.startswith("bn"), f"{name_} did not move"
        torch.testing.assert_close(params_k[name_], p, **STEP_TOLERANCE, msg=lambda m: f"{name_}: {m}")


# "aot_eager" captures the full graph (Dynamo + AOTAutograd, the bnnkit ops as nodes) and runs
# it with the eager kernels, so its first step must equal eager. Inductor also generates code,
# and rounds BatchNorm differently in the last bits; with binary activations that is not a
# small difference: conv -> ReLU -> BN produces exact ties at 0 (integer pre-activations whose
# batch mean equals one of them), and the last bit decides their sign. So under Inductor the
# test checks that training runs and learns, not that it matches eager.
@pytest.mark.parametrize("backend,compiler,name", [("torch", "inductor", "digits_mlp"),
                                                   ("triton", "aot_eager", "digits_cnn")])
def test_compile_fullgraph_trains_without_recompiling_when_o_changes(backend, compiler, name):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    x, y = _randn(16, 1, 8, 8, seed=4), torch.randint(0, 10, (16,), device=DEVICE)
    eager, compiled_model = _model(name, seed=1), _model(name, seed=1)
    compiled = torch.compile(compiled_model, fullgraph=True, backend=compiler)
    schedule = OSchedule(compiled_model, epochs=12, o_end=3.0)
    with use_backend(backend):
        for _, layer in binary_layers(eager):
            layer.o = schedule.value(0)
        schedule.step(0)
        eager_loss, eager_params = _train_step(eager, x, y)
        first_loss, compiled_params = _train_step(compiled_model, x, y, forward=compiled)
        if compiler == "aot_eager":
            assert torch.equal(first_loss, eager_loss)
            for pname, p in eager_params.items():
                torch.testing.assert_close(compiled_params[pname], p, rtol=0, atol=0, msg=lambda m: f"{pname}: {m}")
        optimizer = torch.optim.SGD(compiled_model.parameters(), lr=0.05)
        for epoch in range(1, 12):  # more o values than Dynamo's recompile limit (8)
            schedule.step(epoch)
            optimizer.zero_grad()
            loss = F.cross_entropy(compiled(x), y)
            loss.backward()
            optimizer.step()
    assert loss < first_loss  # it learns the batch
    assert next(layer for _, layer in binary_layers(compiled_model))._o.item() == pytest.approx(schedule.value(11))
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])  # compiled once, never again


@pytest.mark.parametrize("name", ["digits_cnn", "scaled_binary_net"])  # compared as in the step test above
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_training_under_autocast_on_both_backends(dtype, name):
    x, y = _randn(16, 1, 8, 8, seed=5), torch.randint(0, 10, (16,), device=DEVICE)
    results = {}
    for backend in BACKENDS:
        model = _step_model(name, seed=2)
        before = copy.deepcopy(model.state_dict())
        with use_backend(backend), torch.autocast(DEVICE, dtype=dtype):
            out = model(x)
            assert out.dtype == dtype  # the classifier ran in the autocast dtype
            loss = F.cross_entropy(out, y)
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
        assert all(g.dtype == torch.float32 for g in grads.values())  # parameters stay float32
        assert any(grads[n].abs().sum() > 0 for n in before if n.startswith("conv1"))
        results[backend] = grads
    for name, g in results["torch"].items():
        # The same autocast graph on both backends; low-precision convs make the comparison loose.
        torch.testing.assert_close(results["triton"][name], g, rtol=2e-2, atol=2e-3, msg=lambda m: f"{name}: {m}")


def test_o_attribute_is_a_cpu_tensor_outside_the_state_dict():
    model = _model()
    layer = model.conv1
    layer.o = 2.5
    assert layer.o == 2.5 and isinstance(layer.o, float)
    assert layer._o.device.type == "cpu" and layer._o.dtype == torch.float64
    assert not any(k.endswith("_o") for k in model.state_dict())
    with pytest.raises(ValueError, match="finite o >= 1"):
        layer.o = 0.5
    with pytest.raises(ValueError, match="0-d floating-point tensor"):
        ops.sign_estimate(torch.zeros(3), EstimatorKind.RESTE, torch.ones(2))
