"""The launch path of the tiled binary kernels, in pure Python (no kernel runs here).

- Every autotuned kernel's key holds every argument its prune function reads.
- A launch runs under the input's device, and the TMA scratch allocator allocates there: shown
  for tensors on ``cuda:1`` with fake tensors and a recording ``torch.cuda.device``, so the
  checks run on a machine without a GPU.
- The interpreter / ``BNNKIT_AUTOTUNE=0`` / autotune choice is made in one place.
"""

import contextlib
import contextvars
import importlib
import pkgutil

import pytest
import torch

pytest.importorskip("triton")
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402

import bnnkit.kernels  # noqa: E402
from bnnkit.kernels import binary_conv, binary_gemm, launch  # noqa: E402
from bnnkit.kernels.launch import DeviceAllocator, TunedKernel, ensure_descriptor_allocator, prune_reading  # noqa: E402
from bnnkit.kernels.weight_pack import pack_conv_weight, pack_linear_weight  # noqa: E402


def _tuned_kernels() -> dict[str, TunedKernel]:
    """Every TunedKernel defined in a bnnkit.kernels module (module attributes and dict values)."""
    found = {}
    for info in pkgutil.iter_modules(bnnkit.kernels.__path__):
        module = importlib.import_module(f"bnnkit.kernels.{info.name}")
        for name, value in vars(module).items():
            values = value.items() if isinstance(value, dict) else [(None, value)]
            for key, v in values:
                if isinstance(v, TunedKernel):
                    found[f"{info.name}.{name}" + (f"[{key}]" if key is not None else "")] = v
    return found


def test_every_autotune_key_holds_what_its_prune_function_reads():
    kernels = _tuned_kernels()
    assert {"binary_gemm._GEMV", "binary_conv._CONV"} <= set(kernels)
    assert sum(name.startswith("binary_gemm._MMA[") for name in kernels) == 6
    for name, kernel in kernels.items():
        tuner = kernel.tuned
        reads = tuner.early_config_prune.reads
        assert reads and set(reads) <= set(tuner.keys), f"{name}: prune reads {reads}, key {tuner.keys}"
        # the declaration is complete: given only what it declares, the prune function runs
        pruned = tuner.early_config_prune(kernel.configs, {name: 1 for name in reads})
        assert pruned and all(c in kernel.configs for c in pruned), name
    assert "HAS_RESIDUAL" in kernels["binary_gemm._GEMV"].tuned.keys


def test_a_prune_function_cannot_read_what_it_does_not_declare():
    @prune_reading("M_BUCKET")
    def sneaky(configs, args):
        return [c for c in configs if args["HAS_RESIDUAL"]]

    with pytest.raises(KeyError, match="HAS_RESIDUAL"):
        sneaky(binary_gemm.GEMV_CONFIGS, {"M_BUCKET": 1, "HAS_RESIDUAL": True})
    gemv = binary_gemm._GEMV
    with pytest.raises(ValueError, match=r"reads \['IN_KIND'\], which the autotune key"):
        TunedKernel(gemv.kernel, gemv.configs, key=["BM"], prune=gemv.prune, interpret_config=gemv.interpret_config)


class _Devices:
    """A stand-in for ``torch.cuda.device``: records which device is current."""

    def __init__(self):
        self.stack = []

    @contextlib.contextmanager
    def __call__(self, device):
        self.stack.append(torch.device(device))
        try:
            yield
        finally:
            self.stack.pop()

    @property
    def current(self):
        return self.stack[-1] if self.stack else None


class _FakeKernel:
    """Records each launch: the current device, the grid, the arguments."""

    def __init__(self, devices, arg_names):
        self.devices, self.arg_names, self.launches = devices, arg_names, []

    def __getitem__(self, grid):
        return lambda **kwargs: self.launches.append((self.devices.current, grid, kwargs))


@pytest.fixture
def fake_gemv(monkeypatch):
    """binary_gemm's popcount kernel with its Triton kernel and autotuner replaced by recorders."""
    devices = _Devices()
    monkeypatch.setattr(torch.cuda, "device", devices)
    kernel = binary_gemm._GEMV
    fake = _FakeKernel(devices, kernel.kernel.arg_names)
    tuned = _FakeKernel(devices, kernel.kernel.arg_names)
    monkeypatch.setattr(kernel, "kernel", fake)
    monkeypatch.setattr(kernel, "tuned", tuned)
    monkeypatch.setattr(launch, "interpreting", lambda: False)
    return kernel, fake, tuned


GEMV_ARGS = dict(BM=16, IN_KIND=1, OUT_KIND=1, SIGN_FROM_THRESHOLD=False, HAS_RESIDUAL=True, N=64)


def _grid(meta):
    return (4,)


def test_launch_runs_under_the_inputs_device(fake_gemv, monkeypatch):
    kernel, fake, tuned = fake_gemv
    cuda1 = torch.device("cuda", 1)
    monkeypatch.setenv("BNNKIT_AUTOTUNE", "1")
    kernel(_grid, dict(GEMV_ARGS), cuda1)
    assert [(d, g) for d, g, _ in tuned.launches] == [(cuda1, _grid)] and not fake.launches
    assert tuned.launches[0][2]["INTERPRET"] is False
    monkeypatch.setenv("BNNKIT_AUTOTUNE", "0")  # the first config the prune keeps, with its warps
    kernel(_grid, dict(GEMV_ARGS), cuda1)
    device, grid, kwargs = fake.launches[-1]
    first = binary_gemm._prune_gemv(binary_gemm.GEMV_CONFIGS, GEMV_ARGS)[0]
    assert device == cuda1 and grid == (4,)
    assert {k: kwargs[k] for k in ("BN", "BKW", "num_warps")} == {**first.kwargs, "num_warps": first.num_warps}
    monkeypatch.setattr(launch, "interpreting", lambda: True)  # CPU tensors in the interpreter: no CUDA guard
    kernel(_grid, dict(GEMV_ARGS), torch.device("cpu"))
    device, _, kwargs = fake.launches[-1]
    assert device is None and (kwargs["BN"], kwargs["BKW"], kwargs["INTERPRET"]) == (32, 4, True)


def test_descriptor_scratch_is_allocated_on_the_inputs_device(fake_gemv):
    kernel, _, tuned = fake_gemv

    def run():
        kernel(_grid, dict(GEMV_ARGS), torch.device("cuda", 1), descriptors=True)
        first = launch._current_allocator()
        ensure_descriptor_allocator(torch.device("cuda", 0))  # a later launch on another device
        return first, launch._current_allocator()

    first, second = contextvars.copy_context().run(run)
    assert isinstance(first, DeviceAllocator) and first.device == torch.device("cuda", 1)
    assert second.device == torch.device("cuda", 0)

    def users_own():
        def mine(size, alignment, stream):
            return torch.empty(size, dtype=torch.int8)

        import triton

        triton.set_allocator(mine)
        ensure_descriptor_allocator(torch.device("cuda", 1))
        return launch._current_allocator() is mine

    assert contextvars.copy_context().run(users_own)


def test_launchers_hand_the_inputs_device_to_the_launch(monkeypatch):
    """binary_gemm / binary_conv2d on (fake) cuda:1 tensors launch for cuda:1; the TMA
    decision reads cuda:1's capability, not the current device's."""
    calls = []
    monkeypatch.setattr(TunedKernel, "__call__",
                        lambda self, grid, args, device, descriptors=False: calls.append((self, device, descriptors)))
    monkeypatch.setattr(launch, "_capability", lambda index: (9, 0) if index == 1 else (8, 0))
    monkeypatch.setattr(binary_gemm, "tma_compatible", lambda t: True)  # fake tensors have no data pointer
    monkeypatch.setattr(binary_gemm, "interpreting", lambda: False)
    weight = pack_linear_weight(torch.randn(24, 128))
    conv_weight = pack_conv_weight(torch.randn(8, 20, 3, 3))
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        cuda1 = torch.device("cuda", 1)
        x = torch.empty(32, 128, device=cuda1)
        w = mode.from_tensor(weight).to(cuda1)
        assert binary_gemm.binary_gemm(x, w, 128).device == cuda1
        assert binary_gemm.binary_gemm(torch.empty(2, 128, device=cuda1), w, 128).device == cuda1  # popcount
        xc = torch.empty(2, 6, 6, 20, device=cuda1)
        assert binary_conv.binary_conv2d(xc, mode.from_tensor(conv_weight).to(cuda1), 20, padding=1).shape == \
            (2, 6, 6, 8)
    assert [(k, d, desc) for k, d, desc in calls] == [
        (binary_gemm._MMA[(True, False, True)], cuda1, True), (binary_gemm._GEMV, cuda1, False),
        (binary_conv._CONV, cuda1, False)]
