"""The runtimes ``bnnkit validate`` compares, one small adapter each.

An export directory (see ``bnnkit export``) holds ``trained/`` (the run's best model, the
reference: :func:`load_trained_model`), ``manifest.json`` + ``model.safetensors`` (the packed
model) and ``model.onnx``. A runtime adapter loads one of them and maps a float32 CPU batch
``(N, ...)`` to float32 CPU outputs; its time includes any host/device copies. Adding a
runtime is adding a class and an entry in :data:`RUNTIMES`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import torch

from bnnkit.artifacts import ArtifactError, read_listed_file

from ..layout import ONNX_FILE, PACKED_MANIFEST, RUN_FILES, TRAINED_DIR


class RuntimeUnavailable(Exception):
    """The runtime does not apply here (its file is absent, or its device/provider is missing)."""


def _torch_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def ieee_fp32() -> Iterator[None]:
    """True float32 in cuBLAS/cuDNN (PyTorch lets cuDNN convolutions use TF32 by default, a
    10-bit mantissa: 1e-3 relative errors and flipped binarizations), restored afterwards."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = (matmul.fp32_precision, conv.fp32_precision)
    matmul.fp32_precision, conv.fp32_precision = "ieee", "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved


class TorchModuleRuntime:
    """A torch module in eval mode on CUDA when available, else CPU, in true float32."""

    def __init__(self, name: str, module: torch.nn.Module, detail: str) -> None:
        self.name = name
        self.device = _torch_device()
        self.module = module.to(self.device).eval()
        self.detail = detail

    @torch.no_grad()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        with ieee_fp32():
            return self.module(x.to(self.device)).float().cpu()


def checked_export(artifact_dir: str) -> dict:
    """The export's manifest, checked as ``load`` checks it (kind, version, every field, every
    listed file's size and SHA-256, the tensor table, the graph on the meta device), whichever
    of its models a runtime then reads: every runtime trusts the same checked manifest."""
    from ..runtime.model import read_manifest

    manifest, _ = read_manifest(artifact_dir, load_tensors=False)
    return manifest


def load_trained(artifact_dir: str) -> tuple[torch.nn.Module, dict]:
    """``(model, run config)`` of the trained copy in ``ARTIFACT_DIR/trained`` (what ``bnnkit
    export`` copies there): the export's manifest checked whole first, then each file of
    the copy read once, of the size and SHA-256 the manifest lists, and built from those bytes."""
    from bnnkit.train.checkpoint import run_files_model

    run_dir = os.path.join(artifact_dir, TRAINED_DIR)
    if not os.path.isdir(run_dir):
        raise RuntimeUnavailable(f"no trained model: {run_dir!r} does not exist")
    files = checked_export(artifact_dir)["files"]
    where = f"manifest of {artifact_dir!r}"
    config, model, manifest = (read_listed_file(artifact_dir, files, f"{TRAINED_DIR}/{name}", where)
                               for name in RUN_FILES)
    return run_files_model(config, model, manifest, run_dir)


def load_trained_model(artifact_dir: str) -> torch.nn.Module:
    """The trained model from ``ARTIFACT_DIR/trained`` (:func:`load_trained`)."""
    return load_trained(artifact_dir)[0]


PACKED_ROUTES = {"triton": "Triton kernels", "cpu": "native CPU kernels", "torch": "PyTorch reference kernels"}


def load_packed(artifact_dir: str) -> TorchModuleRuntime:
    """The packed model via ``bnnkit.export.load``, on the kernels the backend picks for the
    device (by default Triton on CUDA, the native kernels on CPU)."""
    if not os.path.lexists(os.path.join(artifact_dir, PACKED_MANIFEST)):
        raise RuntimeUnavailable(f"no packed artifact: {os.path.join(artifact_dir, PACKED_MANIFEST)!r} does not exist")
    from bnnkit.backend import packed_route

    from ..runtime import load

    module = load(artifact_dir)
    try:
        backend = PACKED_ROUTES[packed_route(_torch_device())]
    except RuntimeError as e:  # a forced backend that cannot run here: the run itself reports it
        backend = f"no kernels ({e})"
    return TorchModuleRuntime("packed", module, f"bnnkit packed model, {backend}")


class OnnxRuntimeSession:
    """``model.onnx`` in an onnxruntime InferenceSession with one execution provider. The
    export's manifest is checked whole first; the graph's bytes are read once (of the listed
    size and SHA-256), checked (:func:`check_onnx_model`) and handed to onnxruntime as bytes,
    so what runs is what was checked and the runtime opens no file itself."""

    def __init__(self, name: str, path: str, provider: str) -> None:
        import onnxruntime as ort

        if provider not in ort.get_available_providers():
            raise RuntimeUnavailable(f"onnxruntime has no {provider} here (available: "
                                     f"{', '.join(ort.get_available_providers())})")
        if not os.path.lexists(path):
            raise RuntimeUnavailable(f"no ONNX graph: {path!r} does not exist")
        directory, rel = os.path.split(path)
        files = checked_export(directory)["files"]
        data = read_listed_file(directory, files, rel, f"manifest of {directory!r}")
        model = check_onnx_model(data, path)
        providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
        try:
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()  # as PyTorch's: --threads sets both
            self.session = ort.InferenceSession(data, options, providers=providers)
        except Exception as e:  # onnxruntime's own errors (Fail, InvalidGraph, NotImplemented): one line
            raise ArtifactError(f"{path!r} cannot be loaded by onnxruntime: {_first_line(e)}") from None
        if self.session.get_providers()[0] != provider:
            raise RuntimeUnavailable(f"onnxruntime could not start {provider} (session uses "
                                     f"{self.session.get_providers()})")
        self.name = name
        self.device = provider
        self.detail = f"onnxruntime {ort.__version__}, {provider}"
        self.input_name = self.session.get_inputs()[0].name
        self.metadata = {p.key: p.value for p in model.metadata_props}

    def run(self, x: torch.Tensor) -> torch.Tensor:
        try:
            out = self.session.run(None, {self.input_name: x.detach().to("cpu", torch.float32).numpy()})[0]
        except Exception as e:
            raise ArtifactError(f"onnxruntime failed to run the graph: {_first_line(e)}") from None
        return torch.from_numpy(out)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {line[:300]}" if line else type(e).__name__


def check_onnx_model(data: bytes, path: str):
    """The ONNX model in ``data`` (the bytes of ``path``), refused unless it parses and holds
    all its data: no tensor anywhere (initializers, sparse initializers, node attributes, the
    graphs of If / Loop / Scan nodes at any depth, functions) refers to external data, which
    would make the runtime read another file."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError, TypeError) as e:
        raise ArtifactError(f"{path!r} is not a readable ONNX model: {_first_line(e)}") from None
    except RecursionError:
        raise ArtifactError(f"{path!r} is not a readable ONNX model: nested too deeply") from None
    for where, tensor in _onnx_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            raise ArtifactError(f"{path!r} refers to external data ({where}); bnnkit's ONNX graphs hold their "
                                "weights and such a graph is refused")
    return model


def _onnx_tensors(model):
    """Every TensorProto of an ONNX model, with where it is (graphs walked with a stack, not
    recursion: a deep If nest cannot exhaust Python's stack)."""
    graphs = [("graph", model.graph)] + [(f"function {f.name!r}", f) for f in model.functions]
    while graphs:
        where, graph = graphs.pop()
        for t in getattr(graph, "initializer", ()):
            yield f"{where} initializer {t.name!r}", t
        for s in getattr(graph, "sparse_initializer", ()):
            yield f"{where} sparse initializer", s.values
            yield f"{where} sparse initializer", s.indices
        for node in graph.node:
            for a in node.attribute:
                here = f"{where}, node {node.name or node.op_type!r} attribute {a.name!r}"
                if a.HasField("t"):
                    yield here, a.t
                for t in a.tensors:
                    yield here, t
                sparse = ([a.sparse_tensor] if a.HasField("sparse_tensor") else []) + list(a.sparse_tensors)
                for s in sparse:
                    yield here, s.values
                    yield here, s.indices
                if a.HasField("g"):
                    graphs.append((here, a.g))
                graphs.extend((here, g) for g in a.graphs)


def load_onnx_cpu(artifact_dir: str) -> OnnxRuntimeSession:
    return OnnxRuntimeSession("onnxruntime-cpu", os.path.join(artifact_dir, ONNX_FILE), "CPUExecutionProvider")


def load_onnx_cuda(artifact_dir: str) -> OnnxRuntimeSession:
    return OnnxRuntimeSession("onnxruntime-cuda", os.path.join(artifact_dir, ONNX_FILE), "CUDAExecutionProvider")


#: name -> loader(artifact_dir) -> runtime with ``name``, ``device``, ``detail``, ``run(x)``: the
#: runtimes compared with the reference, :data:`REFERENCE` (the trained model in float64).
RUNTIMES: dict[str, Callable[[str], object]] = {
    "packed": load_packed,
    "onnxruntime-cpu": load_onnx_cpu,
    "onnxruntime-cuda": load_onnx_cuda,
}
REFERENCE = "trained"


def resolve_onnxruntime(name: str) -> str:
    """The runtime of :data:`RUNTIMES` that ``name`` stands for: ``"onnxruntime"`` (the name
    ``bnnkit predict`` and ``validate`` share) is ``"onnxruntime-cuda"`` when ONNX Runtime has
    its CUDA provider here, else ``"onnxruntime-cpu"``; other names stand for themselves."""
    if name != "onnxruntime":
        return name
    import onnxruntime as ort

    return "onnxruntime-cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "onnxruntime-cpu"
