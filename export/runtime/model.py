"""PackedModel: the packed inference model, its artifact (docs/format.md) and ``load``.

The artifact is a directory: ``model.safetensors`` (every tensor) and ``manifest.json`` (the
graph as data, see :mod:`bnnkit.export.runtime.graph_format`, the tensor table, the SHA-256 of
every file). ``load`` checks it all before it allocates a tensor and never runs code from it.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import torch
from torch import fx, nn

from bnnkit.artifacts import read_artifact, staged_directory, write_artifact_files

from .graph_format import (CheckedGraph, build_graph_module, check_finite, check_graph_tensors, describe_graph_module,
                           describe_packed_graph)
from .interpreter import PackedGraph
from .layers import PackedLayer
from .manifest import (FORMAT_KIND, FORMAT_VERSION, RETIRED_VERSIONS, SUPPORTED_VERSIONS, check_layers,
                       check_manifest)

__all__ = ["FORMAT_KIND", "FORMAT_VERSION", "SUPPORTED_VERSIONS", "PackedModel", "load"]


class PackedModel(nn.Module):
    """A packed model: binary layers as :class:`~bnnkit.export.runtime.layers.PackedConv2d` /
    :class:`~bnnkit.export.runtime.layers.PackedLinear` with fused epilogues, everything else as
    it was. Inference only (eval mode, no gradients through the packed ops).

    ``forward(x)`` takes what the trained model took; 4-D float inputs are made channels_last
    (NHWC in memory), so the packed layers read their activations without copies and the
    full-precision layers between them (BatchNorm, pooling) run in the layout the CPU and GPU
    kernels vectorize over channels (max pooling of a ResNet-18 stem: 18x faster on a CPU).

    Attributes:
        body: the packed graph: a ``torch.fx.GraphModule`` after :func:`~bnnkit.export.pack`, a
            :class:`~bnnkit.export.runtime.interpreter.PackedGraph` (the node list executed
            step by step, no code generated) after :func:`load`.
        architecture: ``{"name", "kwargs"}`` of the zoo model it was packed from, or ``None``
            (provenance only: the artifact stores the graph itself).
        input_shape: one input's shape without the batch dim, or ``None``.
        layers: per packed layer, its encoding (input/output kind, ReLU, residual).
        input_spec: the :class:`~bnnkit.inputs.InputSpec` (preprocessing, class names) or ``None``.
    """

    def __init__(self, body: nn.Module, *, architecture: dict[str, Any] | None = None,
                 input_shape: tuple[int, ...] | None = None, fp32_state_bytes: int | None = None,
                 layers: dict[str, dict] | None = None, input_spec=None) -> None:
        super().__init__()
        self.body = body
        self.architecture = _check_architecture(architecture)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.input_spec = input_spec
        self.fp32_state_bytes = fp32_state_bytes
        self.layers = dict(layers or {})
        self.eval()

    @property
    def input_spec(self):
        return self._input_spec

    @input_spec.setter
    def input_spec(self, spec) -> None:
        from bnnkit.inputs import InputSpec

        if spec is not None and not isinstance(spec, InputSpec):
            raise TypeError(f"input_spec must be a bnnkit.inputs.InputSpec or None, got {type(spec).__name__}")
        if spec is not None and self.input_shape is not None and spec.shape != self.input_shape:
            raise ValueError(f"input_spec describes inputs of shape {spec.shape}, the model's input_shape is "
                             f"{self.input_shape}")
        self._input_spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and x.is_floating_point():
            x = x.contiguous(memory_format=torch.channels_last)
        return self.body(x)

    def train(self, mode: bool = True) -> "PackedModel":
        if mode:
            raise RuntimeError("a PackedModel is for inference only (its BatchNorms are folded); keep it in eval mode")
        return super().train(False)

    def save(self, directory: str | os.PathLike, *, overwrite: bool = False,
             extra_files: dict[str, str | os.PathLike] | None = None) -> None:
        """Write the artifact directory ``directory``: ``model.safetensors`` + ``manifest.json``.

        ``directory`` may be absent or an empty directory; a non-empty one is replaced only with
        ``overwrite=True``. It is written under a temporary name and renamed into place, so a
        crash leaves the previous state or the new one. ``extra_files`` (name in the directory ->
        file to copy, e.g. ``{"model.onnx": path}`` from :func:`~bnnkit.export.to_onnx`) are
        copied in and listed in the manifest with their SHA-256, which is what readers such as
        ``bnnkit validate`` check before opening them. Raises ``ValueError`` naming a module,
        function or value of the graph that the format cannot hold."""
        from bnnkit import schema

        names = {schema.relative_path(name, "extra_files key"): os.fspath(src)
                 for name, src in (extra_files or {}).items()}
        for name, src in names.items():
            if name in ("manifest.json", "model.safetensors") or not os.path.isfile(src):
                raise ValueError(f"extra_files[{name!r}]: {src!r} must be an existing file, saved under a name other "
                                 "than manifest.json and model.safetensors")
        with staged_directory(os.fspath(directory), overwrite=overwrite) as staging:
            os.mkdir(staging)
            for name, src in names.items():
                os.makedirs(os.path.dirname(os.path.join(staging, name)), exist_ok=True)
                shutil.copyfile(src, os.path.join(staging, name))
            self.write_files(staging)

    def write_files(self, directory: str) -> dict[str, Any]:
        """Write the artifact's files into the existing (staging) ``directory``; every other file
        already there is listed in the manifest with its SHA-256 too. Returns the manifest."""
        from .graph_format import GraphFormatError

        if isinstance(self.body, PackedGraph):
            graph, attributes = describe_packed_graph(self.body)
        elif isinstance(self.body, fx.GraphModule):
            graph, attributes = describe_graph_module(self.body)
        else:
            raise ValueError(f"only a packed graph can be saved, got {type(self.body).__name__}; "
                             "make the model with bnnkit.export.pack()")
        tensors = {**self.body.state_dict(), **attributes}
        for name, t in tensors.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise GraphFormatError(f"tensor {name!r} holds NaN or infinite values, which a packed artifact "
                                       "cannot hold (load refuses them)")
        manifest = {
            "architecture": self.architecture,
            "input_shape": list(self.input_shape) if self.input_shape is not None else None,
            "layers": self.layers,
            "fp32_state_dict_bytes": self.fp32_state_bytes,
            "input_spec": None if self.input_spec is None else self.input_spec.to_json(),
            "graph": graph,
        }
        return write_artifact_files(directory, tensors, manifest, kind=FORMAT_KIND, version=FORMAT_VERSION)


def _check_architecture(architecture: dict[str, Any] | None) -> dict[str, Any] | None:
    if architecture is None:
        return None
    if not isinstance(architecture, dict) or set(architecture) != {"name", "kwargs"}:
        raise ValueError(f"architecture must be {{'name': zoo_name, 'kwargs': {{...}}}}, got {architecture!r}")
    from bnnkit.models import model_info

    model_info(architecture["name"])  # unknown names raise, listing the zoo
    return {"name": architecture["name"], "kwargs": dict(architecture["kwargs"])}


def read_manifest(directory: str | os.PathLike, *, load_tensors: bool = True):
    """``(checked manifest, tensors)`` of the packed artifact in ``directory``: every listed file
    verified (size, then SHA-256), every field checked, the tensor table compared with the
    tensor file's header and with what the graph's modules hold (built on the meta device),
    and the graph run on the meta device for one input of ``input_shape`` (which bounds what
    a forward pass allocates), all before a tensor is loaded."""
    manifest, tensors, _ = _read(os.fspath(directory), load_tensors)
    return manifest, tensors


def _read(directory: str, load_tensors: bool) -> tuple[dict[str, Any], dict[str, torch.Tensor], CheckedGraph]:
    checked: list[CheckedGraph] = []
    where = f"manifest of {directory!r}"
    manifest, tensors = read_artifact(
        directory, kind=FORMAT_KIND, versions=SUPPORTED_VERSIONS, retired=RETIRED_VERSIONS,
        check_manifest=lambda m: check_manifest(m, directory),
        check_tensors=lambda m: checked.append(check_graph_tensors(m["graph"], m["tensors"], where,
                                                                   m["input_shape"])),
        load_tensors=load_tensors)
    return manifest, tensors, checked[0]


def load(directory: str | os.PathLike) -> PackedModel:
    """Load a packed artifact written by :meth:`PackedModel.save` (CPU, float32, eval mode).

    Raises :class:`~bnnkit.artifacts.ArtifactError` naming what is wrong: a wrong kind or format
    version, a file that is missing, not a regular file, unlisted where it is needed, or of
    another size or checksum than listed, a malformed field, a module, function or value
    outside the format's lists, a tensor that is missing, extra, misshapen or not finite, or a
    graph that fails, or would allocate past the bound of :mod:`bnnkit.limits`, on one input
    of its ``input_shape``. Nothing from the artifact is executed or imported: the graph is a
    node list that :class:`~bnnkit.export.runtime.interpreter.PackedGraph` executes.
    """
    directory = os.fspath(directory)
    manifest, tensors, checked = _read(directory, True)
    where = f"manifest of {directory!r}"
    check_finite(tensors, where)
    body = build_graph_module(manifest["graph"], checked, tensors, where)
    check_layers(manifest, {name: m.encoding() for name, m in body.named_modules() if isinstance(m, PackedLayer)},
                 directory)
    return PackedModel(body, architecture=manifest["architecture"], input_shape=manifest["input_shape"],
                       fp32_state_bytes=manifest["fp32_state_dict_bytes"], layers=manifest["layers"],
                       input_spec=manifest.get("input_spec"))
