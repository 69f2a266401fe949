"""``to_onnx``: a trained bnnkit model as an ONNX graph that standard runtimes run exactly.

The graph is the model in eval semantics, traced by torch's ONNX exporter (torch.export +
onnxscript, opset 18 by default), with a dynamic batch axis (other dims as in the example):

- binary inputs: ``Where(x >= 0, 1, -1)`` (0 -> +1, as in training), never ONNX ``Sign``;
- binary weights (``packed=True``): sign bits in a uint8 initializer, unpacked in-graph with
  BitShift/BitwiseAnd and scaled by alpha (see :mod:`bnnkit.export.onnx.graph` for the format
  and why); ``packed=False``: float initializers holding ``alpha * binarize(w)``;
- BatchNorm stays a BatchNormalization node. In this model family it follows a ReLU (conv ->
  ReLU -> BN), so it cannot be folded into the conv before it, and the conv after it
  binarizes its input; onnxruntime itself folds a BN that directly follows a Conv (the
  full-precision downsample shortcuts). Keeping it keeps one graph node per model module,
  which makes a disagreement easy to locate.
- everything else (stem, classifier, pooling, shortcuts) as the exporter translates it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from bnnkit.artifacts import atomic_path
from ..validation.compare import RELATIVE_TOLERANCE, Comparison, compare_outputs
from .modules import binary_weights, inference_model, set_emit_onnx_node, weight_numel

MIN_OPSET = 18  # BitwiseAnd
DEFAULT_OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "output"
INPUT_SPEC_KEY = "bnnkit.input_spec"  # metadata_props key: the InputSpec as JSON


class OnnxExportError(RuntimeError):
    """The ONNX exporter failed, or the exported graph does not reproduce the model."""


@dataclasses.dataclass(frozen=True)
class OnnxExport:
    """What :func:`to_onnx` wrote.

    ``fp32_param_bytes``: 4 bytes per parameter of the model (its fp32 size);
    ``packed_weight_bytes``: bytes of sign bits in the file (0 for ``packed=False``);
    ``verification``: ONNX Runtime (CPU) against the model on the example input, or ``None``.
    """

    path: str
    opset: int
    packed: bool
    file_bytes: int
    fp32_param_bytes: int
    binary_weights: int
    packed_weight_bytes: int
    input_shape: tuple[int, ...]
    verification: Comparison | None

    @property
    def compression(self) -> float:
        """fp32 parameter bytes over file bytes."""
        return self.fp32_param_bytes / self.file_bytes


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's progress prints, optional-package warnings and deprecations."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _check_example(example_input: torch.Tensor) -> torch.Tensor:
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input must be a torch.Tensor (N, ...) with a batch dim, got {type(example_input).__name__}")
    if not example_input.is_floating_point():
        raise TypeError(f"example_input must be floating point (the graph takes float32), got {example_input.dtype}")
    if example_input.dim() < 2 or example_input.shape[0] < 1:
        raise ValueError(f"example_input must have a batch dim and at least one more, e.g. (1, 3, 32, 32); "
                         f"got shape {tuple(example_input.shape)}")
    return example_input.detach().to("cpu", torch.float32)


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None and e.__cause__ is not e:
        e = e.__cause__
    lines = [ln for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def _export_graph(view: nn.Module, x: torch.Tensor, opset: int):
    from .graph import binarize_translation, expand_packed_signs, strip_metadata

    # torch.export specializes a dim whose example size is 1; trace with batch >= 2.
    trace_x = x if x.shape[0] > 1 else x.expand(2, *x.shape[1:]).contiguous()
    set_emit_onnx_node(view, True)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                view, (trace_x,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_shapes=({0: torch.export.Dim("batch")},),
                custom_translation_table={torch.ops.bnnkit_export.binarize.default: binarize_translation},
                optimize=True, verbose=False)
    except Exception as e:  # the exporter raises many types; report the root cause
        raise OnnxExportError(f"torch.onnx.export failed for {type(view).__name__}: {_root_cause(e)}") from e
    finally:
        set_emit_onnx_node(view, False)
    model = program.model_proto
    expand_packed_signs(model)
    strip_metadata(model)
    return model


def _atomic_save(model, path: str) -> None:
    import onnx

    with atomic_path(path) as tmp:
        onnx.save_model(model, tmp)


def run_onnxruntime(path: str, x: torch.Tensor, providers: list[str] | None = None) -> torch.Tensor:
    """Run the ONNX graph at ``path`` on ``x`` (float32) in onnxruntime (CPU by default)."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=providers or ["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: x.detach().to("cpu", torch.float32).numpy()})[0])


def to_onnx(model: nn.Module, path: str | os.PathLike, example_input: torch.Tensor, packed: bool = True, *,
            opset: int = DEFAULT_OPSET, verify: bool = True, tolerance: float = RELATIVE_TOLERANCE,
            input_spec=None) -> OnnxExport:
    """Export ``model`` (a bnnkit zoo model, or any model with BinaryConv2d/BinaryLinear layers,
    e.g. converted with :func:`bnnkit.binarize`) in eval semantics to the ONNX file ``path``.

    Args:
        model: left unchanged (a float32 CPU eval copy is exported).
        path: the ``.onnx`` file to write (atomically: temp name, then rename).
        example_input: float ``(N, ...)``; fixes every dim but the batch dim, which is dynamic.
        packed: binary weights as 1-bit signs unpacked in-graph (True) or as float ±alpha
            initializers (False, for tools that cannot read the packed form).
        opset: ONNX opset, >= 18.
        verify: run the file in onnxruntime (CPU) on ``example_input`` and raise
            :class:`OnnxExportError` if it differs from the model by more than ``tolerance``
            (relative, see :mod:`bnnkit.export.validation.compare`) or in any top-1.
        input_spec: a :class:`bnnkit.inputs.InputSpec` (preprocessing, class names), written as
            JSON to the file's ``metadata_props`` under ``"bnnkit.input_spec"``; its shape must
            be ``example_input``'s without the batch dim.

    The file passes ``onnx.checker.check_model(full_check=True)``; input ``"input"``, output
    ``"output"`` (float32). Raises :class:`~bnnkit.export.onnx.modules.UnsupportedLayerError`
    naming a layer without a faithful ONNX form.
    """
    import onnx

    from .graph import op_types, set_metadata
    from bnnkit.version import __version__

    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"opset must be an int >= {MIN_OPSET} (BitwiseAnd needs 18), got {opset!r}")
    x = _check_example(example_input)
    if input_spec is not None and input_spec.shape != tuple(x.shape[1:]):
        raise ValueError(f"input_spec describes inputs of shape {input_spec.shape}, example_input has "
                         f"{tuple(x.shape[1:])} (batch dim excluded)")
    path = os.fspath(path)
    view = inference_model(model, packed)
    try:
        with torch.no_grad():
            reference = view(x)
    except Exception as e:
        raise ValueError(f"the model fails on example_input of shape {tuple(x.shape)}: {type(e).__name__}: {e}; "
                         "pass an input the model accepts") from e
    if verify and not isinstance(reference, torch.Tensor):
        raise ValueError(f"verify=True compares one output tensor; the model returns {type(reference).__name__} "
                         "(pass verify=False to export it unchecked)")
    graph = _export_graph(view, x, opset)
    if "Sign" in op_types(graph):
        raise OnnxExportError("the exported graph contains an ONNX Sign node (sign(0) = 0); a layer of the model "
                              "binarizes with torch.sign instead of bnnkit's binarization")
    set_metadata(graph, {
        "bnnkit_version": __version__,
        "bnnkit.binarization": "Where(x >= 0, +1, -1)",
        "bnnkit.weights": ("uint8 sign bits, LSB first along the flattened weight per output channel, bit 1 = "
                           "+alpha; unpacked in-graph") if packed else "float32 alpha * binarize(w)",
        "bnnkit.model": type(model).__name__,
        **({INPUT_SPEC_KEY: json.dumps(input_spec.to_json())} if input_spec is not None else {}),
    }, doc=f"bnnkit {__version__}: {type(model).__name__} in eval semantics, binary weights "
           f"{'packed to bits' if packed else 'as floats'}")
    try:
        onnx.checker.check_model(graph, full_check=True)
    except onnx.checker.ValidationError as e:
        raise OnnxExportError(f"the exported graph fails onnx.checker: {e}") from None
    _atomic_save(graph, path)

    verification = None
    if verify:
        with torch.no_grad():
            verification = compare_outputs(reference, run_onnxruntime(path, x), tolerance)
        if not verification.ok:
            raise OnnxExportError(
                f"{path}: onnxruntime disagrees with the model on the example input (relative difference "
                f"{verification.rel_diff:.3g}, top-1 agreement {verification.top1_agreement:.2%}, first disagreeing "
                f"sample {verification.first_disagreement}); the file is kept for inspection")
    layers = binary_weights(view)
    return OnnxExport(
        path=path, opset=opset, packed=packed, file_bytes=os.path.getsize(path),
        fp32_param_bytes=4 * sum(p.numel() for p in model.parameters()), binary_weights=weight_numel(view),
        packed_weight_bytes=sum(m.packed_bytes for _, m in layers), input_shape=tuple(x.shape[1:]),
        verification=verification)
