"""PackedModel: the packed inference model, its artifact (docs/format.md) and ``load``."""

from __future__ import annotations

import io
import os
from typing import Any

import torch
from torch import nn

from bnnkit.artifacts import ArtifactError, read_artifact, write_artifact

FORMAT_KIND = "bnnkit-packed"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
PROGRAM_FILE = "program.pt2"


class PackedModel(nn.Module):
    """A packed model: binary layers as :class:`~bnnkit.export.runtime.layers.PackedConv2d` /
    :class:`~bnnkit.export.runtime.layers.PackedLinear` with fused epilogues, everything else as
    it was. Inference only (eval mode, no gradients through the packed ops).

    ``forward(x)`` takes what the trained model took; 4-D CUDA inputs are made channels_last
    (NHWC in memory) so the packed layers read them without copies (on CPU the layout is
    left alone, so the full-precision layers round exactly as in the trained model).

    Attributes:
        body: the packed graph (a ``torch.fx.GraphModule``, or an exported program's module
            after :func:`load` of a model outside the zoo).
        architecture: ``{"name", "kwargs"}`` of the zoo model, or ``None``.
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
        if x.dim() == 4 and x.is_floating_point() and x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.body(x)

    def train(self, mode: bool = True) -> "PackedModel":
        if mode:
            raise RuntimeError("a PackedModel is for inference only (its BatchNorms are folded); keep it in eval mode")
        # set the flags directly: an exported program's module refuses train()/eval()
        for m in self.modules():
            m.training = False
        return self

    def save(self, directory: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write the artifact directory: ``model.safetensors`` + ``manifest.json`` (and, for a
        model outside the zoo, ``program.pt2``, a ``torch.export`` program of the packed graph
        with the ``bnnkit`` custom ops; its weights are taken from ``model.safetensors`` on load).
        No pickles anywhere."""
        tensors = {k: v for k, v in self.body.state_dict().items()}
        extra: dict[str, bytes] = {}
        architecture: dict[str, Any]
        if self.architecture is not None:
            architecture = {"zoo": self.architecture["name"], "kwargs": self.architecture["kwargs"]}
        else:
            if self.input_shape is None:
                raise ValueError("saving a model outside the zoo stores a torch.export program, which needs the "
                                 "input shape: pass input_shape=(C, H, W) to bnnkit.export.pack() or set "
                                 "packed.input_shape")
            extra[PROGRAM_FILE] = _export_program(self)
            architecture = {"program": PROGRAM_FILE}
        manifest = {
            "architecture": architecture,
            "input_shape": list(self.input_shape) if self.input_shape is not None else None,
            "layers": self.layers,
            "tensors": {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)}
                        for k, v in tensors.items()},
            "fp32_state_dict_bytes": self.fp32_state_bytes,
            "input_spec": None if self.input_spec is None else self.input_spec.to_json(),
        }
        write_artifact(os.fspath(directory), tensors, manifest, kind=FORMAT_KIND, version=FORMAT_VERSION,
                       overwrite=overwrite, extra_files=extra)


def _check_architecture(architecture: dict[str, Any] | None) -> dict[str, Any] | None:
    if architecture is None:
        return None
    if not isinstance(architecture, dict) or set(architecture) != {"name", "kwargs"}:
        raise ValueError(f"architecture must be {{'name': zoo_name, 'kwargs': {{...}}}}, got {architecture!r}")
    from bnnkit.models import model_info

    model_info(architecture["name"])  # unknown names raise, listing the zoo
    return {"name": architecture["name"], "kwargs": dict(architecture["kwargs"])}


def _export_program(model: PackedModel) -> bytes:
    example = torch.zeros(2, *model.input_shape)
    if example.dim() == 4:
        example = example.contiguous(memory_format=torch.channels_last)
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.export.export(model.body, (example,), dynamic_shapes=({0: batch},))
    except Exception as e:
        raise ValueError(f"torch.export could not export the packed model: {e}") from e
    program.example_inputs = None  # the archive would store them pickled
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()


def load(directory: str | os.PathLike) -> PackedModel:
    """Load a packed artifact written by :meth:`PackedModel.save`.

    Raises :class:`~bnnkit.artifacts.ArtifactError` on a wrong kind or format version, a
    checksum mismatch, or a missing / unexpected / misshapen tensor, naming what is wrong.
    """
    from . import ops  # noqa: F401  (the program's custom ops must be registered before loading it)
    from ..packing.fusion import _pack

    directory = os.fspath(directory)
    manifest, tensors = read_artifact(directory, kind=FORMAT_KIND, versions=SUPPORTED_VERSIONS)
    arch = manifest.get("architecture") or {}
    input_shape = tuple(manifest["input_shape"]) if manifest.get("input_shape") else None
    if "zoo" in arch:
        from bnnkit.models import create

        architecture = {"name": arch["zoo"], "kwargs": arch.get("kwargs", {})}
        packed = _pack(create(architecture["name"], **architecture["kwargs"]), architecture=architecture,
                       input_shape=input_shape, fold=False)
        body = packed.body
        if manifest.get("layers", {}) != packed.layers:
            changed = sorted(k for k in set(packed.layers) | set(manifest.get("layers", {}))
                             if packed.layers.get(k) != manifest.get("layers", {}).get(k))
            raise ArtifactError(f"manifest of {directory!r} describes layer(s) {', '.join(changed[:5])} differently "
                                f"from the {architecture['name']} model it names: the manifest was modified")
    elif "program" in arch:
        path = os.path.join(directory, os.path.basename(arch["program"]))
        try:
            body = torch.export.load(path).module()
        except Exception as e:
            raise ArtifactError(f"the program {path!r} of the artifact cannot be loaded: {e}") from None
        architecture = None
    else:
        raise ArtifactError(f"manifest of {directory!r} names no architecture (zoo model or program)")
    _load_tensors(body, tensors, directory)
    from bnnkit.inputs import spec_from_optional_json

    input_spec = spec_from_optional_json(manifest.get("input_spec"), f"manifest of {directory!r}: input_spec")
    if input_spec is not None and input_shape is not None and input_spec.shape != input_shape:
        raise ArtifactError(f"manifest of {directory!r}: input_spec.shape {list(input_spec.shape)} differs from "
                            f"input_shape {list(input_shape)}")
    return PackedModel(body, architecture=architecture, input_shape=input_shape,
                       fp32_state_bytes=manifest.get("fp32_state_dict_bytes"), layers=manifest.get("layers", {}),
                       input_spec=input_spec)


def _load_tensors(body: nn.Module, tensors: dict[str, torch.Tensor], directory: str) -> None:
    expected = body.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise ArtifactError(f"artifact {directory!r} lacks tensor(s) {', '.join(missing[:5])}"
                            f"{'...' if len(missing) > 5 else ''} that the model needs")
    if unexpected:
        raise ArtifactError(f"artifact {directory!r} has tensor(s) {', '.join(unexpected[:5])} the model does not "
                            "have")
    for name, t in tensors.items():
        want = expected[name]
        if t.shape != want.shape or t.dtype != want.dtype:
            raise ArtifactError(f"artifact {directory!r}: tensor {name!r} is {t.dtype} {tuple(t.shape)}, the model "
                                f"expects {want.dtype} {tuple(want.shape)}")
    body.load_state_dict(tensors, strict=True)
