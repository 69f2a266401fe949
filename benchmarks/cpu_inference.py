"""Benchmark suite "cpu": the packed model on the native CPU kernels against its float twin.

The float twin is the same architecture with plain ``nn.Conv2d`` / ``nn.Linear`` layers in
place of the binary ones, in torch eager fp32, eval mode, the same random BatchNorm statistics;
it runs in NCHW (PyTorch's default) and in channels_last (oneDNN's faster layout for small
channel counts), and speedups are given against both. Every case runs its implementations
interleaved (:func:`~bnnkit.benchmarks.timing.time_interleaved`), with 1 thread and with all
cores (``torch.set_num_threads``, which the native kernels follow); ``speedup_p20`` /
``speedup_p80`` are quantiles of the paired per-sample ratios.

Cases:

- ``popcount_ceiling``: the machine's XOR + popcount rate (64-bit words per second) on
  L1-resident operands with the kernels' own vector step, 1 thread and all cores: the ceiling
  the binary GEMMs are related to (``pct_of_ceiling``, ``bound = "popcount"``);
- ``linear``: a 4096 x 4096 binary linear layer (float input binarized on load, float output
  with its epilogue) at batch 1 and 64 against ``nn.Linear``;
- ``layers``: the binary 3x3 convolutions of ResNet-20 (batch 64) and ResNet-18 at 224x224
  (batch 1), packed input, fused epilogue, against ``F.conv2d`` in channels_last;
- ``models``: resnet20 at batch 1 / 64, resnet18 at 224x224 batch 1 / 8, digits_mlp and
  digits_cnn at batch 1 / 64;
- ``cold_start``: a fresh Python process packs resnet20 and resnet18_cifar and runs each once
  with an empty numba cache (``first_process``: the kernels compile), then again with the cache
  it left (``second_process``: they load from disk); ``median_ms`` is the time from the first
  forward call to its output (both models), ``compile_s`` that minus the steady-state forward
  time, ``import_s`` the time to import bnnkit.

Goals (issue 19; 1 thread, against the float twin): resnet20 b64 >= 3x, resnet18 224 b1 >= 4x,
4096^2 linear b1 >= 30x and b64 >= 8x, the large GEMM within 2x of the popcount ceiling.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .registry import BenchContext, case
from .timing import quantiles, ratio_quantiles, time_interleaved

SUITE = "cpu"
CEILING_WORDS = 512  # per operand row: 4 x 4 KiB + 4 KiB, in L1
MODEL_CASES = [("resnet20", (3, 32, 32), (1, 64)), ("resnet18", (3, 224, 224), (1, 8)),
               ("digits_mlp", (1, 8, 8), (1, 64)), ("digits_cnn", (1, 8, 8), (1, 64))]
RESNET20_LAYERS = [(32, 16, 1), (16, 32, 1), (8, 64, 1)]  # (H = W, C, stride), batch 64
RESNET18_LAYERS = [(56, 64, 1), (28, 128, 1), (14, 256, 1), (7, 512, 1)]  # at 224x224, batch 1

_state: dict[str, float] = {}  # the ceilings measured in this process: "threads=N" -> words/s


def thread_settings(quick: bool) -> list[int]:
    """1 thread, and all cores (torch's default thread count) unless that is 1 or ``quick``."""
    cores = max(1, torch.get_num_threads())
    return [1] if quick or cores == 1 else [1, cores]


class _Threads:
    """``with _Threads(n):`` torch (and so the native kernels) use ``n`` threads."""

    def __init__(self, n: int) -> None:
        self.n, self.before = n, torch.get_num_threads()

    def __enter__(self):
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)


def random_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine parameters (a trained model's are not 0 / 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
    return model.eval()


def float_twin(model: nn.Module) -> nn.Module:
    """The same model with every binary layer replaced by the plain layer it derives from (same weights)."""
    from bnnkit.nn.layers import BinaryConv2d, BinaryLinear

    twin = copy.deepcopy(model)
    for parent in list(twin.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, BinaryConv2d):
                plain = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                  child.padding, child.dilation, child.groups, bias=child.bias is not None)
            elif isinstance(child, BinaryLinear):
                plain = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
            else:
                continue
            plain.load_state_dict(child.state_dict(), strict=False)
            setattr(parent, name, plain)
    return twin.eval()


def _speedups(rows: list[dict], samples: dict[str, list[float]], packed: str, baselines: tuple[str, ...]) -> None:
    """``speedup_vs_<baseline>`` (ratio of medians) on the packed row, and the quantiles of the
    paired ratios against the first baseline (``speedup_p20`` / ``speedup_p80``)."""
    by_impl = {r["impl"]: r for r in rows}
    row = by_impl[packed]
    for base in baselines:
        row[f"speedup_vs_{base}"] = by_impl[base]["median_ms"] / row["median_ms"]
    paired = ratio_quantiles(samples[baselines[0]], samples[packed])
    row["speedup_p20"], row["speedup_p80"] = paired["p20"], paired["p80"]


# ----------------------------------------------------------------------------- the ceiling


def _ceiling_kernels() -> dict:
    """Two XOR + popcount loops on L1-resident uint64 operands; the ceiling is the faster one.

    - ``dot4``: four rows against one, ``s_r += popcount(a[r, k] ^ b[k])`` with register
      accumulators (LLVM vectorizes the k loop): the dot form of the GEMM kernels;
    - ``broadcast16``: sixteen activation words, each against a vector of four words, with the
      kernels' explicit vector step (:func:`~bnnkit.kernels.cpu_kernels.xor_popcount_add64`)
      into sixteen independent accumulators: the direct / transposed form.

    Each returns the words it processed (64-bit XOR + popcount operations)."""
    from numba import njit

    from bnnkit.kernels.cpu_kernels import popcount, xor_popcount_add64

    @njit(nogil=True, cache=True)
    def dot4(a, b, acc, reps):
        n = b.shape[0]
        for _ in range(reps):
            s0 = np.uint64(0)
            s1 = np.uint64(0)
            s2 = np.uint64(0)
            s3 = np.uint64(0)
            for k in range(n):
                w = b[k]
                s0 += popcount(a[0, k] ^ w)
                s1 += popcount(a[1, k] ^ w)
                s2 += popcount(a[2, k] ^ w)
                s3 += popcount(a[3, k] ^ w)
            acc[0] += s0 + s1 + s2 + s3
        return reps * n * 4

    @njit(nogil=True, cache=True)
    def broadcast16(a, b, acc, reps):
        n = b.shape[0]
        acc_addr, b_addr = acc.ctypes.data, b.ctypes.data
        for _ in range(reps):
            for i in range(0, n, 4):
                for r in range(16):
                    xor_popcount_add64(acc_addr + 32 * r, b_addr + 8 * i, a[r & 3, i])
        return reps * n * 16

    return {"dot4": dot4, "broadcast16": broadcast16}


def popcount_ceiling_rows(threads: int, quick: bool) -> list[dict]:
    """One row per ceiling loop on ``threads`` threads (each thread its own operands), with
    its 64-bit words per second."""
    from bnnkit.kernels.cpu_threads import run_tasks

    rng = np.random.default_rng(0)
    operands = [(rng.integers(0, 2**63, (4, CEILING_WORDS), dtype=np.uint64),
                 rng.integers(0, 2**63, CEILING_WORDS, dtype=np.uint64), np.zeros(64, dtype=np.uint64))
                for _ in range(threads)]
    reps = 100 if quick else 400
    rows = []
    for name, loop in _ceiling_kernels().items():
        words = threads * loop(*operands[0], reps)
        timing, _ = time_interleaved({name: lambda: run_tasks(loop, [(a, b, acc, reps) for a, b, acc in operands])},
                                     reps=5 if quick else 15)
        wps = words / (timing[name]["median_ms"] * 1e-3)
        rows.append({"case": "popcount_ceiling", "impl": f"xor_popcount_{name}", "shape": f"4x{CEILING_WORDS} words",
                     "dtype": "1bit", "threads": str(threads), **timing[name], "gwords_per_s": wps / 1e9,
                     "tops": 2 * 64 * wps / 1e12, "ceiling_dtype": "popcount"})
    return rows


@case(SUITE, "popcount_ceiling", devices=("cpu",))
def popcount_ceiling(ctx: BenchContext) -> list[dict]:
    rows = []
    for threads in thread_settings(ctx.quick):
        with _Threads(threads):
            part = popcount_ceiling_rows(threads, ctx.quick)
        _state[f"threads={threads}"] = max(r["gwords_per_s"] for r in part) * 1e9
        rows += part
    return rows


def _ceiling(threads: int, quick: bool) -> float:
    key = f"threads={threads}"
    if key not in _state:
        with _Threads(threads):
            _state[key] = max(r["gwords_per_s"] for r in popcount_ceiling_rows(threads, quick)) * 1e9
    return _state[key]


def _relate_to_ceiling(row: dict, words: float, threads: int, quick: bool) -> None:
    """``gwords_per_s`` of a binary GEMM row and its percentage of the popcount ceiling."""
    wps = words / (row["median_ms"] * 1e-3)
    row["gwords_per_s"] = wps / 1e9
    row["pct_of_ceiling"] = 100.0 * wps / _ceiling(threads, quick)
    row["bound"] = "popcount"


# ----------------------------------------------------------------------------- cases


@case(SUITE, "linear", devices=("cpu",))
def linear(ctx: BenchContext) -> list[dict]:
    """A 4096 x 4096 binary linear layer against nn.Linear (fp32), batch 1 and 64."""
    from bnnkit.export.runtime.layers import PackedLinear

    n = k = 4096
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n, k, generator=g)
    dense = nn.Linear(k, n).eval()
    with torch.no_grad():
        dense.weight.copy_(w)
    packed = PackedLinear.from_weight(w, input_kind="binarize", output_kind="float")
    with torch.no_grad():
        packed.epilogue.copy_(torch.randn(4, n, generator=g))
    rows = []
    for batch in ((1,) if ctx.quick else (1, 64)):
        x = torch.randn(batch, k, generator=g)
        for threads in thread_settings(ctx.quick):
            with torch.no_grad(), _Threads(threads):
                timings, samples = time_interleaved({"float_fp32": lambda: dense(x), "packed_cpu": lambda: packed(x)},
                                                    reps=5 if ctx.quick else 25)
            part = [{"case": "linear", "impl": impl, "shape": f"{batch}x{n}x{k}", "threads": str(threads),
                     "dtype": "fp32" if impl == "float_fp32" else "1bit", **timing,
                     "tops": 2.0 * batch * n * k / (timing["median_ms"] * 1e-3) / 1e12}
                    for impl, timing in timings.items()]
            _speedups(part, samples, "packed_cpu", ("float_fp32",))
            _relate_to_ceiling(part[1], batch * n * (k // 64), threads, ctx.quick)
            part[1]["ceiling_dtype"] = "popcount"
            rows += part
    return rows


@case(SUITE, "layers", devices=("cpu",))
def layers(ctx: BenchContext) -> list[dict]:
    """ResNet binary 3x3 convolutions (packed input, fused float epilogue) against F.conv2d."""
    if ctx.quick:
        return []
    from bnnkit.export.runtime.layers import PackedConv2d
    from bnnkit.kernels.bitpack import pack_signs_reference

    rows = []
    shapes = [("resnet20", 64, *s) for s in RESNET20_LAYERS] + [("resnet18_224", 1, *s) for s in RESNET18_LAYERS]
    g = torch.Generator().manual_seed(1)
    for model, batch, hw, c, stride in shapes:
        w = torch.randn(c, c, 3, 3, generator=g)
        layer = PackedConv2d.from_weight(w, stride, 1, input_kind="packed", output_kind="float", relu=True)
        with torch.no_grad():
            layer.epilogue.copy_(torch.randn(4, c, generator=g))
        x = torch.randn(batch, c, hw, hw, generator=g).contiguous(memory_format=torch.channels_last)
        bits = pack_signs_reference(x.permute(0, 2, 3, 1)).contiguous()
        wf = w.contiguous(memory_format=torch.channels_last)
        oh = (hw - 1) // stride + 1
        for threads in thread_settings(False):
            with torch.no_grad(), _Threads(threads):
                timings, samples = time_interleaved({
                    "float_fp32_channels_last": lambda: F.conv2d(x, wf, stride=stride, padding=1),
                    "packed_cpu": lambda: layer(bits)}, reps=15)
            part = [{"case": "layers", "impl": impl, "shape": f"{model}:{batch}x{hw}x{hw}x{c}->{c}/s{stride}",
                     "threads": str(threads), "dtype": "fp32" if impl.startswith("float") else "1bit", **timing,
                     "tops": 2.0 * batch * oh * oh * c * c * 9 / (timing["median_ms"] * 1e-3) / 1e12}
                    for impl, timing in timings.items()]
            _speedups(part, samples, "packed_cpu", ("float_fp32_channels_last",))
            _relate_to_ceiling(part[1], batch * oh * oh * c * 9 * c / 64, threads, False)
            part[1]["ceiling_dtype"] = "popcount"
            rows += part
    return rows


def _model_pair(name: str):
    from bnnkit import models
    from bnnkit.export import pack

    torch.manual_seed(0)
    model = random_batchnorm(models.create(name), seed=1)
    return pack(model), float_twin(model)


@case(SUITE, "models", devices=("cpu",))
def models_case(ctx: BenchContext) -> list[dict]:
    """Packed zoo models (auto backend: the native kernels) against their float twins."""
    cases = [("resnet20", (3, 32, 32), (1,))] if ctx.quick else MODEL_CASES
    rows = []
    for name, shape, batches in cases:
        packed, twin = _model_pair(name)
        twin_cl = copy.deepcopy(twin).to(memory_format=torch.channels_last) if len(shape) == 3 else None
        for batch in batches:
            x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(batch))
            x_cl = x.contiguous(memory_format=torch.channels_last)
            fns = {"float_fp32": lambda: twin(x), "packed_cpu": lambda: packed(x)}
            if twin_cl is not None and name != "digits_mlp":
                fns["float_fp32_channels_last"] = lambda: twin_cl(x_cl)
            for threads in thread_settings(ctx.quick):
                heavy = name == "resnet18" or batch >= 64
                with torch.no_grad(), _Threads(threads):
                    timings, samples = time_interleaved(fns, reps=4 if ctx.quick else (11 if heavy else 25))
                part = [{"case": "models", "impl": impl, "shape": f"{name}:{batch}", "threads": str(threads),
                         "dtype": "fp32" if impl.startswith("float") else "1bit/fp32", **timing,
                         "images_per_s": batch / (timing["median_ms"] * 1e-3)}
                        for impl, timing in timings.items()]
                _speedups(part, samples, "packed_cpu", tuple(k for k in fns if k != "packed_cpu"))
                rows += part
    if not ctx.quick and hasattr(os, "getloadavg"):
        for r in rows:
            r["load_avg_end"] = round(os.getloadavg()[0], 2)
    return rows


# ----------------------------------------------------------------------------- cold start

_COLD_START_SCRIPT = """
import json, time
t0 = time.perf_counter()
import torch
import bnnkit
from bnnkit import models
from bnnkit.export import pack
t_import = time.perf_counter() - t0
torch.set_num_threads(1)
torch.manual_seed(0)
nets = [pack(models.create(name).eval()) for name in ("resnet20", "resnet18_cifar")]
x = torch.randn(1, 3, 32, 32)
with torch.no_grad():
    t1 = time.perf_counter()
    for net in nets:
        net(x)
    first = time.perf_counter() - t1
    steady = []
    for _ in range(5):
        t2 = time.perf_counter()
        for net in nets:
            net(x)
        steady.append(time.perf_counter() - t2)
print(json.dumps({"import_s": t_import, "first_s": first, "steady_s": sorted(steady)[2]}))
"""


def cold_start_rows(repeats: int) -> list[dict]:
    """``first_process`` (an empty numba cache) once, then ``second_process`` ``repeats`` times
    on the cache it left; each a fresh interpreter with ``BNNKIT_BACKEND=cpu``."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bnnkit-numba-cache-") as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "BNNKIT_BACKEND": "cpu"}
        for impl, count in (("first_process", 1), ("second_process", repeats)):
            runs = []
            for _ in range(count):
                done = subprocess.run([sys.executable, "-c", _COLD_START_SCRIPT], env=env, capture_output=True,
                                      text=True, timeout=1800)
                if done.returncode != 0:
                    raise RuntimeError(f"the cold-start process failed: {done.stderr[-2000:]}")
                runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            timing = quantiles([1e3 * r["first_s"] for r in runs])
            steady_s = statistics.median(r["steady_s"] for r in runs)
            rows.append({"case": "cold_start", "impl": impl, "shape": "resnet20+resnet18_cifar:1", "dtype": "1bit",
                         "threads": "1", **timing, "timer": "process", "repeats": count,
                         "compile_s": max(0.0, timing["median_ms"] * 1e-3 - steady_s),
                         "import_s": statistics.median(r["import_s"] for r in runs)})
    return rows


@case(SUITE, "cold_start", devices=("cpu",))
def cold_start(ctx: BenchContext) -> list[dict]:
    """Compile time of the native kernels in a fresh process, and the start of a second one."""
    return cold_start_rows(1 if ctx.quick else 3)
