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

from bnnkit.artifacts import ArtifactError, verify_listed_file

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


def load_trained_model(artifact_dir: str) -> torch.nn.Module:
    """The trained model from ``ARTIFACT_DIR/trained`` (what ``bnnkit export`` copies there)."""
    from bnnkit.train import load_run

    run_dir = os.path.join(artifact_dir, TRAINED_DIR)
    if not os.path.isdir(run_dir):
        raise RuntimeUnavailable(f"no trained model: {run_dir!r} does not exist")
    for name in RUN_FILES:
        verify_listed_file(artifact_dir, f"{TRAINED_DIR}/{name}")
    model, _ = load_run(run_dir)
    return model


PACKED_ROUTES = {"triton": "Triton kernels", "cpu": "native CPU kernels", "torch": "PyTorch reference kernels"}


def load_packed(artifact_dir: str) -> TorchModuleRuntime:
    """The packed model via ``bnnkit.export.load``, on the kernels the backend picks for the
    device (by default Triton on CUDA, the native kernels on CPU)."""
    if not os.path.isfile(os.path.join(artifact_dir, PACKED_MANIFEST)):
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
    """``model.onnx`` in an onnxruntime InferenceSession with one execution provider."""

    def __init__(self, name: str, path: str, provider: str) -> None:
        import onnxruntime as ort

        if provider not in ort.get_available_providers():
            raise RuntimeUnavailable(f"onnxruntime has no {provider} here (available: "
                                     f"{', '.join(ort.get_available_providers())})")
        if not os.path.isfile(path):
            raise RuntimeUnavailable(f"no ONNX graph: {path!r} does not exist")
        _check_onnx_file(path)
        providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
        self.session = ort.InferenceSession(path, providers=providers)
        if self.session.get_providers()[0] != provider:
            raise RuntimeUnavailable(f"onnxruntime could not start {provider} (session uses "
                                     f"{self.session.get_providers()})")
        self.name = name
        self.device = provider
        self.detail = f"onnxruntime {ort.__version__}, {provider}"
        self.input_name = self.session.get_inputs()[0].name

    def run(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().to("cpu", torch.float32).numpy()})[0]
        return torch.from_numpy(out)


def _check_onnx_file(path: str) -> None:
    """The export's ONNX graph, as listed in its manifest, with no external data (bnnkit writes
    every weight into the file; an external reference could make the runtime read any file)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    directory, name = os.path.split(path)
    verify_listed_file(directory, name)
    model = onnx.load(path, load_external_data=False)
    tensors = [*model.graph.initializer, *(a.t for n in model.graph.node for a in n.attribute if a.HasField("t"))]
    if any(uses_external_data(t) for t in tensors):
        raise ArtifactError(f"{path!r} refers to external data files; bnnkit's ONNX graphs hold their weights "
                            "and such a graph is refused")


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
