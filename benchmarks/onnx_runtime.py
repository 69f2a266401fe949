"""Suite "onnx": the exported graphs in onnxruntime against the float32 model, torch eager, and
their weight formats.

- ``onnx/binary_vs_fp32``: the binary graph in both forms (``to_onnx(ops="integer")`` and
  ``ops="float"``) against the float32 graph of the same architecture (BinaryConv2d /
  BinaryLinear replaced by nn.Conv2d / nn.Linear with the same weights, exported by
  ``torch.onnx.export``), in ONNX Runtime's CPU provider, at 1 thread and at torch's thread
  count: resnet20 at batch 1 and 64, resnet18 at 224x224 and batch 1 and 8, digits_mlp and
  digits_cnn at batch 1 and 64 (quick mode: resnet20 only). The three sessions run
  interleaved, round after round in a rotating order; each row's speedup is the median of
  the per-round ratios (p20-p80 in ``ratio_p20`` / ``ratio_p80``), and ``load_avg_1min`` is the
  host's load when the comparison started.
- ``onnx/graph_size``: file size and session creation time (median of interleaved creations)
  of the three graphs.
- ``onnx/latency``: digits_mlp and resnet20 at batch 1 and 64: torch eager vs onnxruntime on
  the same model (CPU always; on a CUDA device, torch on CUDA vs the CUDA execution provider
  when onnxruntime has it). onnxruntime gets as many threads as torch. Two torch rows: the
  trained model as it is (it binarizes its weights, mean |w| included, on every forward) and
  its inference form with constant binary weights (what the ONNX graph computes).
- ``onnx/weight_format``: the measurement behind the packed format of ``to_onnx`` (see
  :mod:`bnnkit.export.onnx.graph`): file size, session memory (RSS growth of a fresh process
  that opens the session and runs it once) and CPU latency of float weights, uint8 sign bits
  unpacked in-graph (bnnkit's packed form) and INT2 weights with DequantizeLinear (opset 25).
- ``onnx/matmul_nbits``: a 2048x2048 ±1 MatMul as float and as blockwise INT2/INT4
  DequantizeLinear, which onnxruntime fuses into MatMulNBits (packed in memory); its error
  at accuracy level 0 (fp32) and 4 (int8 activations, the default).

Models have random weights and default BatchNorm statistics: timing does not depend on them.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

from bnnkit.benchmarks.registry import BenchContext, case
from bnnkit.benchmarks.timing import ratio_quantiles, time_cpu, time_fn, time_interleaved

MODELS = {"digits_mlp": (1, 8, 8), "resnet20": (3, 32, 32)}
BATCHES = (1, 64)
# binary_vs_fp32: model -> (input shape, batches)
COMPARED = {"resnet20": ((3, 32, 32), (1, 64)), "resnet18": ((3, 224, 224), (1, 8)),
            "digits_mlp": ((1, 8, 8), (1, 64)), "digits_cnn": ((1, 8, 8), (1, 64))}
QUICK_COMPARED = ("resnet20",)
GRAPHS = ("onnx_fp32", "binary_float_ops", "binary_integer_ops")  # the first is the baseline


@functools.lru_cache(maxsize=None)
def _workdir() -> str:
    return tempfile.mkdtemp(prefix="bnnkit-bench-onnx-")


@functools.lru_cache(maxsize=None)
def _model(name: str) -> torch.nn.Module:
    from bnnkit import models

    torch.manual_seed(0)
    return models.create(name).eval()


def _input_shape(name: str) -> tuple[int, ...]:
    return COMPARED[name][0] if name in COMPARED else MODELS[name]


@functools.lru_cache(maxsize=None)
def _exported(name: str, packed: bool, ops: str = "float") -> str:
    """``to_onnx`` of the zoo model ``name`` (random weights and BatchNorm statistics)."""
    from bnnkit.export import to_onnx

    path = os.path.join(_workdir(), f"{name}-{ops}-{'bits' if packed else 'unpacked'}.onnx")
    to_onnx(_model(name), path, torch.randn(2, *_input_shape(name)), packed=packed, ops=ops)
    return path


def float32_architecture(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with every BinaryConv2d / BinaryLinear replaced by the nn.Conv2d /
    nn.Linear of the same shape and weights: the float32 model of the same architecture."""
    import copy

    from torch import nn

    from bnnkit.nn.layers import BinaryConv2d, BinaryLinear

    plain = copy.deepcopy(model).cpu().float().eval()
    for name, module in list(plain.named_modules()):
        if type(module) is BinaryConv2d:
            new = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                            module.padding, module.dilation, module.groups, module.bias is not None)
        elif type(module) is BinaryLinear:
            new = nn.Linear(module.in_features, module.out_features, module.bias is not None)
        else:
            continue
        new.load_state_dict(module.state_dict())
        parent_name, _, child = name.rpartition(".")
        setattr(plain.get_submodule(parent_name) if parent_name else plain, child, new)
    return plain.eval()


@functools.lru_cache(maxsize=None)
def _fp32_graph(name: str) -> str:
    """The float32 model of ``name``'s architecture exported by ``torch.onnx.export`` (opset 18,
    dynamic batch), as a user would export a float model."""
    from bnnkit.export.onnx.export import quiet_exporter

    path = os.path.join(_workdir(), f"{name}-fp32.onnx")
    with quiet_exporter():
        torch.onnx.export(float32_architecture(_model(name)), (torch.randn(2, *_input_shape(name)),), path,
                          dynamo=True, opset_version=18, input_names=["input"], output_names=["output"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False, verbose=False)
    return path


def _graph_path(name: str, graph: str) -> str:
    if graph == "onnx_fp32":
        return _fp32_graph(name)
    return _exported(name, True, "integer" if graph == "binary_integer_ops" else "float")


def _session(path: str, provider: str = "CPUExecutionProvider", extra: dict[str, str] | None = None,
             threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    for key, value in (extra or {}).items():
        options.add_session_config_entry(key, value)
    providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    return ort.InferenceSession(path, options, providers=providers)


def _thread_counts() -> tuple[int, ...]:
    return tuple(sorted({1, torch.get_num_threads()}))


@case("onnx", "binary_vs_fp32", devices=("cpu",))
def binary_vs_fp32(ctx: BenchContext) -> list[dict]:
    rows = []
    for name in QUICK_COMPARED if ctx.quick else tuple(COMPARED):
        shape, batches = COMPARED[name]
        paths = {graph: _graph_path(name, graph) for graph in GRAPHS}
        for threads in _thread_counts():
            sessions = {graph: _session(path, threads=threads) for graph, path in paths.items()}
            for batch in batches:
                x = np.random.default_rng(batch).standard_normal((batch, *shape)).astype(np.float32)
                load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
                runs = {graph: functools.partial(s.run, None, {s.get_inputs()[0].name: x})
                        for graph, s in sessions.items()}
                timings, samples = time_interleaved(runs, warmup=2, reps=5 if ctx.quick else 15)
                for graph in GRAPHS:
                    t = timings[graph]
                    row = {"case": "binary_vs_fp32", "model": name, "threads": str(threads),
                           "shape": [batch, *shape], "dtype": "float32" if graph == "onnx_fp32" else "1bit",
                           "impl": graph, **t,
                           "load_avg_1min": load, "file_bytes": os.path.getsize(paths[graph])}
                    if graph != GRAPHS[0]:
                        q = ratio_quantiles(samples[GRAPHS[0]], samples[graph])
                        row.update({f"speedup_vs_{GRAPHS[0]}": q["median"], "ratio_p20": q["p20"],
                                    "ratio_p80": q["p80"]})
                    rows.append(row)
    return rows


@case("onnx", "graph_size", devices=("cpu",))
def graph_size(ctx: BenchContext) -> list[dict]:
    """File size and session creation time (ONNX Runtime folds the bit unpacking then)."""
    import time

    rows = []
    for name in QUICK_COMPARED if ctx.quick else tuple(COMPARED):
        paths = {graph: _graph_path(name, graph) for graph in GRAPHS}
        created: dict[str, list[float]] = {graph: [] for graph in GRAPHS}
        for _ in range(3 if ctx.quick else 7):
            for graph, path in paths.items():
                t0 = time.perf_counter()
                _session(path, threads=1)
                created[graph].append((time.perf_counter() - t0) * 1e3)
        fp32_params = 4 * sum(p.numel() for p in _model(name).parameters())
        for graph in GRAPHS:
            q = np.quantile(created[graph], [0.2, 0.5, 0.8])
            rows.append({"case": "graph_size", "model": name, "shape": list(COMPARED[name][0]),
                         "dtype": "float32" if graph == "onnx_fp32" else "1bit", "impl": graph,
                         "median_ms": float(q[1]), "p20_ms": float(q[0]), "p80_ms": float(q[2]), "timer": "cpu",
                         "what": "session creation", "file_bytes": os.path.getsize(paths[graph]),
                         "compression_vs_fp32": fp32_params / os.path.getsize(paths[graph])})
    return rows


def _row(name: str, batch: int, impl: str, timing: dict[str, float], **extra) -> dict:
    return {"case": name, "shape": [batch, *MODELS[name]], "dtype": "float32", "impl": impl, **timing, **extra}


@case("onnx", "latency", devices=("cpu", "cuda"))
def latency(ctx: BenchContext) -> list[dict]:
    import onnxruntime as ort

    provider = "CPUExecutionProvider" if ctx.device.type == "cpu" else "CUDAExecutionProvider"
    rows = []
    from bnnkit.export.onnx.modules import inference_model

    for name in MODELS:
        model = _model(name).to(ctx.device)
        constant_weights = inference_model(_model(name), packed=False).to(ctx.device)
        session = (_session(_exported(name, True, "integer"), provider)
                   if provider in ort.get_available_providers() else None)
        for batch in BATCHES:
            x = torch.randn(batch, *MODELS[name])
            xd = x.to(ctx.device)
            with torch.no_grad():
                eager = time_fn(lambda: model(xd), ctx.device, ctx.quick)
                inference = time_fn(lambda: constant_weights(xd), ctx.device, ctx.quick)
            rows.append(_row(name, batch, "torch_eager", eager))
            rows.append(_row(name, batch, "torch_eager_inference_form", inference,
                             speedup_vs_torch_eager=eager["median_ms"] / inference["median_ms"]))
            if session is None:
                continue
            feed = {session.get_inputs()[0].name: x.numpy()}
            ort_timing = time_cpu(lambda: session.run(None, feed), warmup=1 if ctx.quick else 3,
                                  reps=5 if ctx.quick else 20)
            rows.append(_row(name, batch, "onnxruntime", ort_timing, provider=provider,
                             speedup_vs_torch_eager=eager["median_ms"] / ort_timing["median_ms"]))
        _model(name).to("cpu")
    return rows


def _int2_variant(name: str) -> str:
    """The float export with every binary weight as an INT2 initializer + DequantizeLinear (opset 25)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from bnnkit.export.onnx.modules import binary_weights, inference_model

    graph = onnx.load(_exported(name, False, "float"))
    graph = onnx.version_converter.convert_version(graph, 25)
    inits = {i.name: i for i in graph.graph.initializer}
    nodes = []
    for layer, _ in binary_weights(inference_model(_model(name), packed=False)):
        tensor = inits[f"{layer}.weight"]
        w = numpy_helper.to_array(tensor)
        alpha = np.abs(w.reshape(w.shape[0], -1)).max(axis=1).astype(np.float32)
        signs = np.where(w >= 0, 1, -1).astype(np.int8).ravel().tolist()
        graph.graph.initializer.remove(tensor)
        graph.graph.initializer.extend([helper.make_tensor(f"{layer}.weight_int2", TensorProto.INT2, list(w.shape), signs),
                                        numpy_helper.from_array(alpha, f"{layer}.weight_scale")])
        nodes.append(helper.make_node("DequantizeLinear", [f"{layer}.weight_int2", f"{layer}.weight_scale"],
                                      [f"{layer}.weight"], axis=0))
    rest = list(graph.graph.node)
    del graph.graph.node[:]
    graph.graph.node.extend(nodes + rest)
    path = os.path.join(_workdir(), f"{name}-int2.onnx")
    onnx.save(graph, path)
    return path


_RSS_SCRIPT = """
import sys, json, numpy as np, onnxruntime as ort
def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
before = rss_mb()
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
i = s.get_inputs()[0]
s.run(None, {i.name: np.zeros([1] + list(i.shape[1:]), np.float32)})
print(json.dumps({"session_rss_mb": rss_mb() - before}))
"""


def _session_rss_mb(path: str) -> float | None:
    if not os.path.exists("/proc/self/status"):
        return None
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, path], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["session_rss_mb"]


@case("onnx", "weight_format", devices=("cpu",))
def weight_format(ctx: BenchContext) -> list[dict]:
    rows = []
    for name in ("resnet20",) if ctx.quick else tuple(MODELS):  # quick: the model the choice was made on
        fp32_bytes = 4 * sum(p.numel() for p in _model(name).parameters())
        variants = {"float_weights": lambda: _exported(name, False, "float"),
                    "sign_bits": lambda: _exported(name, True, "float"),
                    "int2_dequantize": lambda: _int2_variant(name)}
        for variant, make in variants.items():
            try:
                path = make()
                session = _session(path)
            except Exception as e:  # e.g. an onnxruntime without INT2 support
                rows.append({"case": name, "shape": list(MODELS[name]), "dtype": "float32", "impl": variant,
                             "error": f"{type(e).__name__}: {e}"})
                continue
            extra = {"file_bytes": os.path.getsize(path), "compression_vs_fp32": fp32_bytes / os.path.getsize(path),
                     "session_rss_mb": _session_rss_mb(path)}
            for batch in BATCHES:
                x = torch.randn(batch, *MODELS[name])
                feed = {session.get_inputs()[0].name: x.numpy()}
                with torch.no_grad():
                    expected = _model(name)(x)
                got = torch.from_numpy(session.run(None, feed)[0])
                timing = time_cpu(lambda: session.run(None, feed), warmup=1 if ctx.quick else 3,
                                  reps=5 if ctx.quick else 20)
                rows.append(_row(name, batch, variant, timing, max_abs_diff=float((got - expected).abs().max()),
                                 **extra))
    return rows


def _nbits_graph(k: int, n: int, onnx_type: int, block: int, path: str) -> np.ndarray:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.where(np.random.default_rng(0).standard_normal((k, n)) >= 0, 1, -1).astype(np.int8)
    scale = numpy_helper.from_array(np.full((k // block, n), 0.5, np.float32), "scale")
    weight = helper.make_tensor("w", onnx_type, [k, n], w.ravel().tolist())
    nodes = [helper.make_node("DequantizeLinear", ["w", "scale"], ["wf"], axis=0, block_size=block),
             helper.make_node("MatMul", ["x", "wf"], ["y"])]
    g = helper.make_graph(nodes, "nbits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])], [weight, scale])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 25)]), path)
    return w.astype(np.float32) * 0.5


@case("onnx", "matmul_nbits", devices=("cpu",))
def matmul_nbits(ctx: BenchContext) -> list[dict]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k = n = 2048
    reps = 5 if ctx.quick else 20
    inputs = {m: np.random.default_rng(1).standard_normal((m, k)).astype(np.float32) for m in BATCHES}
    quantized = {}
    for label, onnx_type in (("int2", TensorProto.INT2), ("int4", TensorProto.INT4)):
        path = os.path.join(_workdir(), f"matmul-{label}.onnx")
        quantized[label] = (path, _nbits_graph(k, n, onnx_type, 32, path))
    w = quantized["int2"][1]
    float_path = os.path.join(_workdir(), "matmul-float.onnx")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "float",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
                          [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), float_path)
    session = _session(float_path)
    rows, float_ms = [], {}
    for m, x in inputs.items():
        timing = time_cpu(lambda: session.run(None, {"x": x}), warmup=1, reps=reps)
        float_ms[m] = timing["median_ms"]
        rows.append({"case": "matmul", "shape": [m, k, n], "dtype": "float32 weights", "impl": "matmul_float",
                     "max_abs_diff": float(np.abs(session.run(None, {"x": x})[0] - x @ w).max()), **timing})
    for label, (path, _) in quantized.items():
        for level in ("0", "4"):
            try:
                session = _session(path, extra={"session.qdq_matmulnbits_accuracy_level": level})
            except Exception as e:  # e.g. an onnxruntime without INT2 support
                rows.append({"case": "matmul", "shape": [k, n], "dtype": f"{label} weights",
                             "impl": f"matmulnbits_accuracy_{level}", "error": f"{type(e).__name__}: {e}"})
                continue
            for m, x in inputs.items():
                err = float(np.abs(session.run(None, {"x": x})[0] - x @ w).max())
                timing = time_cpu(lambda: session.run(None, {"x": x}), warmup=1, reps=reps)
                rows.append({"case": "matmul", "shape": [m, k, n], "dtype": f"{label} weights",
                             "impl": f"matmulnbits_accuracy_{level}", "max_abs_diff": err, **timing,
                             "speedup_vs_matmul_float": float_ms[m] / timing["median_ms"]})
    return rows
