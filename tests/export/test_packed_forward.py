"""The packed layers' forward: one kernel launch and no other tensor work per layer on the
Triton route, the native CPU route bit for bit the reference (float outputs included) with
its weights prepared once, exact signs for bf16 / fp16 inputs, empty batches, and buffers
that keep the artifact format through ``.to()`` / ``.half()`` / ``load_state_dict``.

Triton runs in its interpreter on CPU (``TRITON_INTERPRET=1``, set by tests/conftest.py), on
CUDA where there is a GPU; the native CPU kernels (``BNNKIT_BACKEND=cpu``) on CPU tensors.
"""

from collections import Counter

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from bnnkit import models
from bnnkit.backend import use_backend
from bnnkit.export import pack
from bnnkit.export.runtime.layers import PackedConv2d, PackedLinear
from bnnkit.kernels.kinds import InputKind, OutputKind
from bnnkit.kernels.launch import TunedKernel
from cpu_testing import assert_bitwise, task_split
from kernel_testing import assert_equal, kernel_device, sign_edge_values

triton = pytest.importorskip("triton")
DEVICE = kernel_device()
BACKENDS = ["torch", "triton", "cpu"]


def _on(backend: str, *tensors_or_layers):
    """Move layers / tensors to the device the backend runs on (CPU for the native kernels)."""
    device = "cpu" if backend == "cpu" else DEVICE
    return [t.to(device) for t in tensors_or_layers]

VIEWS = {"aten::view", "aten::reshape", "aten::_reshape_alias", "aten::permute", "aten::as_strided",
         "aten::select", "aten::unsqueeze", "aten::squeeze", "aten::expand", "aten::alias", "aten::_unsafe_view",
         "aten::transpose", "aten::t"}


def _layer(kind, inp, out, relu=False, residual=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "linear":
        m = PackedLinear.from_weight(torch.randn(40, 70, generator=g), input_kind=inp, output_kind=out, relu=relu,
                                     residual=residual)
    else:
        m = PackedConv2d.from_weight(torch.randn(40, 20, 3, 3, generator=g), 1, 1, input_kind=inp, output_kind=out,
                                     relu=relu, residual=residual)
    if out == "packed":
        lo = torch.randint(-60, 10, (40,), generator=g, dtype=torch.int32)
        m.thresholds.copy_(torch.stack([lo, lo + torch.randint(0, 90, (40,), generator=g, dtype=torch.int32)]))
    else:
        m.epilogue.copy_(torch.randn(4, 40, generator=g))
    return m.to(DEVICE)


def _input(layer, batch, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    if isinstance(layer, PackedLinear):
        shape = (batch, (70 + 31) // 32) if layer.input_kind == InputKind.PACKED else (batch, 70)
    else:
        shape = (batch, 6, 6, 1) if layer.input_kind == InputKind.PACKED else (batch, 20, 6, 6)
    if layer.input_kind == InputKind.PACKED:
        return torch.randint(-2**31, 2**31 - 1, shape, generator=g, dtype=torch.int32).to(DEVICE)
    x = torch.randn(shape, generator=g).to(dtype)
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)  # what PackedModel gives packed convs on CUDA
    return x.to(DEVICE)


def _residual(layer, batch, seed=2):
    if not layer.residual:
        return ()
    r = torch.randn(batch, 40, 6, 6, generator=torch.Generator().manual_seed(seed))
    return (r.contiguous(memory_format=torch.channels_last).to(DEVICE),)


CASES = {
    "linear binarize->float relu, M=1 (popcount)": (("linear", "binarize", "float", True), 1),
    "linear binarize->float, M=33 (tensor cores)": (("linear", "binarize", "float"), 33),
    "linear packed->packed, M=2": (("linear", "packed", "packed"), 2),
    "linear real->float (W1A16)": (("linear", "real", "float"), 4),
    "conv binarize->float relu +residual": (("conv", "binarize", "float", True, True), 2),
    "conv packed->packed": (("conv", "packed", "packed"), 2),
    "conv real->float (W1A16)": (("conv", "real", "float"), 1),
}


class _Launches:
    """Counts every Triton kernel launch (interpreted or compiled) and every launch of the helper."""

    def __init__(self, monkeypatch):
        from triton.runtime.interpreter import InterpretedFunction
        from triton.runtime.jit import JITFunction

        self.kernels, self.helper = [], 0
        for cls in (InterpretedFunction, JITFunction):
            run = cls.run

            def counting(fn, *args, _run=run, **kwargs):
                self.kernels.append(fn.fn.__name__)
                with torch.profiler.record_function("triton launch"):  # the interpreter copies tensors itself
                    return _run(fn, *args, **kwargs)

            monkeypatch.setattr(cls, "run", counting)
        call = TunedKernel.__call__

        def counting_helper(kernel, *args, **kwargs):
            self.helper += 1
            return call(kernel, *args, **kwargs)

        monkeypatch.setattr(TunedKernel, "__call__", counting_helper)


def _top_level_aten_ops(prof) -> Counter:
    """aten ops called by the forward itself: not by another aten op or inside a kernel launch."""
    ops = Counter()
    for event in prof.events():
        if not event.name.startswith("aten::"):
            continue
        parent, nested = event.cpu_parent, False
        while parent is not None:
            nested = nested or parent.name.startswith("aten::") or parent.name == "triton launch"
            parent = parent.cpu_parent
        if not nested:
            ops[event.name] += 1
    return ops


@pytest.mark.parametrize("case", list(CASES))
def test_one_launch_and_no_other_tensor_op_per_layer(case, monkeypatch):
    """Steady state of a packed layer on the Triton route: exactly one kernel launch, and
    besides views only the allocation of its output (before: 2-7 more ops, e.g. stack,
    zeros, full, a separate activation-packing launch)."""
    spec, batch = CASES[case]
    layer = _layer(*spec)
    args = (_input(layer, batch), *_residual(layer, batch))
    with torch.no_grad(), use_backend("triton"):
        want = layer(*args)  # first call: compiles / autotunes
        launches = _Launches(monkeypatch)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            got = layer(*args)
    assert len(launches.kernels) == 1 and launches.helper == 1, launches.kernels
    ops = _top_level_aten_ops(prof)
    others = {name: n for name, n in ops.items() if name not in VIEWS}
    assert others == {"aten::empty": 1}, f"{case}: {dict(ops)}"
    assert torch.equal(got, want)
    with torch.no_grad(), use_backend("torch"):
        ref = layer(*args)
    if layer.output_kind == OutputKind.PACKED:
        assert_equal(got.cpu(), ref.cpu(), case)
    else:
        torch.testing.assert_close(got.cpu(), ref.cpu(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("split", [False, True], ids=["one-task", "threads"])
@pytest.mark.parametrize("batch", [1, 3, 33])
@pytest.mark.parametrize("case", list(CASES))
def test_native_cpu_route_is_bitwise_the_reference(case, batch, split):
    """BNNKIT_BACKEND=cpu: every layer kind (W1A16 included, which runs the reference) gives the
    torch backend's output bit for bit, float outputs included; channels_last and plain NCHW
    inputs and residuals alike."""
    spec, _ = CASES[case]
    layer = _layer(*spec).cpu()
    args = [t.cpu() for t in (_input(layer, batch), *_residual(layer, batch))]
    layouts = [args]
    if args[0].dim() == 4 and args[0].is_floating_point():
        layouts.append([t.contiguous() for t in args])  # NCHW memory, what PackedModel gives on CPU
    for inputs in layouts:
        with torch.no_grad():
            with use_backend("cpu"), task_split(split):
                got = layer(*inputs)
            with use_backend("torch"):
                want = layer(*inputs)
        assert_bitwise(got, want, f"{case} batch {batch}")


def test_native_cpu_route_prepares_each_weight_once(monkeypatch):
    """The weights' kernel layout is derived on the first call, reused after, and derived again
    after load_state_dict (in place, as load() does) or any other in-place write."""
    from bnnkit.kernels import cpu_binary_conv, cpu_binary_gemm

    calls = []
    for module, name in ((cpu_binary_conv, "prepare_conv_weight"), (cpu_binary_gemm, "prepare_linear_weight")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    conv, linear = _layer("conv", "packed", "packed").cpu(), _layer("linear", "binarize", "float").cpu()
    xc, xl = _input(conv, 2).cpu(), _input(linear, 2).cpu()
    with torch.no_grad(), use_backend("cpu"):
        first = conv(xc), linear(xl)
        for _ in range(3):
            assert torch.equal(conv(xc), first[0]) and torch.equal(linear(xl), first[1])
        assert sorted(calls) == ["prepare_conv_weight", "prepare_linear_weight"]
        other = _layer("linear", "binarize", "float", seed=9).cpu()
        linear.load_state_dict(other.state_dict())
        assert torch.equal(linear(xl), other(xl)) and not torch.equal(linear(xl), first[1])
        conv.weight_bits[0].bitwise_not_()
        with use_backend("torch"):
            want = conv(xc)
        assert torch.equal(conv(xc), want) and not torch.equal(want, first[0])
    assert sorted(calls) == ["prepare_conv_weight", "prepare_conv_weight", "prepare_linear_weight",
                             "prepare_linear_weight", "prepare_linear_weight"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind,batch", [("linear", 1), ("linear", 20), ("conv", 2)])
def test_half_inputs_give_the_references_bits(dtype, kind, batch):
    """bf16 / fp16 activations binarized on load: packed outputs bit for bit on every backend."""
    layer = _layer(kind, "binarize", "packed", seed=batch)
    shape = (batch, 70) if kind == "linear" else (batch, 20, 6, 6)
    x = sign_edge_values(shape, dtype, seed=batch).to(DEVICE)
    with torch.no_grad():
        with use_backend("triton"):
            got = layer(x)
        with use_backend("torch"):
            want = layer(x)
        with use_backend("torch"):
            exact = layer(x.float())  # the float32 values of the same inputs
        with use_backend("cpu"):
            native = layer.cpu()(x.cpu())
    assert_equal(got.cpu(), want.cpu(), f"{kind} {dtype} triton vs torch")
    assert_equal(want.cpu(), exact.cpu(), f"{kind} {dtype} vs float32")
    assert_equal(native, want.cpu(), f"{kind} {dtype} cpu vs torch")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_empty_batch(case, backend):
    spec, _ = CASES[case]
    (layer,) = _on(backend, _layer(*spec))
    with torch.no_grad(), use_backend(backend):
        out = layer(*_on(backend, _input(layer, 0), *_residual(layer, 0)))
        full = layer(*_on(backend, _input(layer, 1), *_residual(layer, 1)))
    assert out.shape == (0, *full.shape[1:]) and out.dtype == full.dtype


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn"])
def test_packed_model_with_an_empty_batch(name, backend):
    """Issue 11: the trained model returns (0, 10) for an empty batch; so does the packed one."""
    torch.manual_seed(0)
    model = models.create(name).eval()
    (packed,) = _on(backend, pack(model))
    x = torch.zeros(0, 1, 8, 8)
    with torch.no_grad(), use_backend(backend):
        want = model(x)
        got = packed(*_on(backend, x))
    assert got.shape == want.shape == (0, 10)


def test_buffers_keep_their_format_and_nothing_goes_stale():
    layer = _layer("linear", "binarize", "float")
    names = {name: (t.dtype, tuple(t.shape)) for name, t in layer.state_dict().items()}
    assert names == {"weight_bits": (torch.int32, (40, 3)), "epilogue": (torch.float32, (4, 40))}
    exact = layer.epilogue.clone()
    layer.half()  # the float model around it may go half; the epilogue rows stay float32, unrounded
    assert layer.epilogue.dtype == torch.float32 and torch.equal(layer.epilogue, exact)
    layer.to(torch.bfloat16).to("cpu")
    assert {n: t.dtype for n, t in layer.state_dict().items()} == {"weight_bits": torch.int32,
                                                                   "epilogue": torch.float32}
    assert layer.thresholds.numel() == 0 and "thresholds" not in layer.state_dict()
    x = torch.randn(5, 70)
    for backend in ("triton", "cpu"):
        other = _layer("linear", "binarize", "float", seed=7).cpu()
        with torch.no_grad(), use_backend(backend):
            before = other(x)
            other.load_state_dict(layer.state_dict())  # in place: what load() does
            assert torch.equal(other(x), layer(x)) and not torch.equal(other(x), before)
            other.epilogue.mul_(2.0)  # filled in place after construction: what pack() does
            assert not torch.equal(other(x), layer(x))


def test_kinds_are_one_vocabulary():
    layer = _layer("conv", "packed", "packed")
    assert layer.encoding() == {"input": "packed", "output": "packed", "relu": False, "residual": False}
    assert all(type(v) in (str, bool) for v in layer.encoding().values())  # plain JSON values in the manifest
    assert layer.input_kind is InputKind.PACKED and layer.output_kind is OutputKind.PACKED
    with pytest.raises(ValueError, match="input_kind must be one of binarize, packed, real, got 'int8'"):
        PackedLinear(8, 4, input_kind="int8")
    with pytest.raises(ValueError, match="output_kind must be one of float, packed, got 'acc'"):
        PackedLinear(8, 4, output_kind="acc")


def test_op_argument_errors_name_what_is_accepted():
    layer = _layer("linear", "binarize", "float")
    x = _input(layer, 3)
    no_thresholds = layer.thresholds
    with use_backend("triton"), pytest.raises(ValueError, match=r"params must be a contiguous torch.float32"):
        torch.ops.bnnkit.packed_linear(x, layer.weight_bits, layer.epilogue.double(), no_thresholds, None, 70, False,
                                       False, "float", torch.float32)
    for backend in BACKENDS:
        with use_backend(backend), pytest.raises(ValueError, match="out_kind must be one of float, packed, sign_int8"):
            torch.ops.bnnkit.packed_linear(x, layer.weight_bits, layer.epilogue, no_thresholds, None, 70, False,
                                           False, "acc", torch.float32)
    # both stages empty: no parameters (y = acc)
    with torch.no_grad(), use_backend("triton"):
        acc = torch.ops.bnnkit.packed_linear(x, layer.weight_bits, layer.epilogue[:0], no_thresholds, None, 70,
                                             False, False, "float", torch.float32)
    w = torch.randn(40, 70, generator=torch.Generator().manual_seed(0))  # the layer's weight (seed 0)
    assert torch.equal(acc.cpu(), torch.where(x >= 0, 1.0, -1.0).cpu() @ torch.where(w >= 0, 1.0, -1.0).T)
