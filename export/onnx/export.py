"""``to_onnx``: a trained bnnkit model as an ONNX graph that standard runtimes run exactly.

Two forms, both in the standard ONNX domain (opset 18 by default) with a dynamic batch axis
(other dims as in the example), traced by torch's ONNX exporter (torch.export + onnxscript):

- ``ops="integer"`` (default): the packed model (:func:`bnnkit.export.pack`: BatchNorm and
  scales folded, float64-derived sign thresholds) with each packed layer computed by integer
  ops (QLinearConv, MatMulInteger) on uint8 binary activations and int8 ±1 weights; see
  :mod:`bnnkit.export.onnx.integer_layers`. The full-precision layers are exported as the
  packed model runs them.
- ``ops="float"``: the trained model itself, every op in float32:

  - binary inputs: ``Where(x >= 0, 1, -1)`` (0 -> +1, as in training), never ONNX ``Sign``;
  - binary weights (``packed=True``): sign bits in a uint8 initializer, unpacked in-graph with
    BitShift/BitwiseAnd and scaled by alpha (see :mod:`bnnkit.export.onnx.graph` for the
    format and why); ``packed=False``: float initializers holding ``alpha * binarize(w)``;
  - BatchNorm stays a BatchNormalization node. In this model family it follows a ReLU (conv
    -> ReLU -> BN), so it cannot be folded into the conv before it, and the conv after it
    binarizes its input; onnxruntime itself folds a BN that directly follows a Conv (the
    full-precision downsample shortcuts). Keeping it keeps one graph node per model module,
    which makes a disagreement easy to locate.
  - everything else (stem, classifier, pooling, shortcuts) as the exporter translates it.

  It is the form for runtimes without fast integer kernels, and for models ``pack`` refuses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
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


class GraphOps(str, enum.Enum):
    """Which ops compute the binary layers of an exported graph (``to_onnx(..., ops=)``)."""

    INTEGER = "integer"  # QLinearConv / MatMulInteger on uint8 binary codes and int8 ±1 weights
    FLOAT = "float"  # float Conv / Gemm on ±1 (times alpha) float values

    @classmethod
    def parse(cls, value) -> "GraphOps":
        for member in cls:
            if value == member or value == member.value:
                return member
        raise ValueError(f"ops must be one of {', '.join(repr(m.value) for m in cls)}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class OnnxExport:
    """What :func:`to_onnx` wrote.

    ``ops``: ``"integer"`` or ``"float"`` (:class:`GraphOps`); ``fp32_param_bytes``: 4 bytes per
    parameter of the model (its fp32 size);
    ``packed_weight_bytes``: bytes of sign bits in the file (0 for ``packed=False``);
    ``verification``: ONNX Runtime (CPU) against the model on the example input, or ``None``.
    """

    path: str
    opset: int
    packed: bool
    ops: str
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
def quiet_exporter() -> Iterator[None]:
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


def _torch_export(view: nn.Module, x: torch.Tensor, opset: int, what: str, **options):
    """``torch.onnx.export`` of ``view`` with a dynamic batch dim; the ModelProto, without the
    exporter's per-node metadata."""
    from .graph import strip_metadata

    # torch.export specializes a dim whose example size is 1; trace with batch >= 2.
    trace_x = x if x.shape[0] > 1 else x.expand(2, *x.shape[1:]).contiguous()
    try:
        with quiet_exporter():
            program = torch.onnx.export(
                view, (trace_x,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_shapes=({0: torch.export.Dim("batch")},),
                optimize=True, verbose=False, **options)
    except Exception as e:  # the exporter raises many types; report the root cause
        raise OnnxExportError(f"torch.onnx.export failed for {what}: {_root_cause(e)}") from e
    model = program.model_proto
    strip_metadata(model)
    return model


def _float_graph(view: nn.Module, x: torch.Tensor, opset: int):
    """The float form: the inference view of the trained model, packed weights expanded."""
    from .graph import binarize_translation, expand_packed_signs

    set_emit_onnx_node(view, True)
    try:
        model = _torch_export(view, x, opset, type(view).__name__, custom_translation_table={
            torch.ops.bnnkit_export.binarize.default: binarize_translation})
    finally:
        set_emit_onnx_node(view, False)
    expand_packed_signs(model)
    return model


def _integer_graph(packed_model, x: torch.Tensor, opset: int, packed: bool, what: str):
    """The integer form: the packed model's graph, each packed layer lowered to integer ops."""
    from .graph import expand_placeholders
    from .integer_layers import expand_packed_layer
    from .packed_view import PLACEHOLDER_DOMAIN, PLACEHOLDER_OP, packed_view

    view, layers = packed_view(packed_model.body)
    model = _torch_export(view, x, opset, what)

    def expand(builder, node) -> None:
        key = next(a.s.decode() for a in node.attribute if a.name == "layer")
        expand_packed_layer(builder, node, layers[key], key, packed)

    expand_placeholders(model, PLACEHOLDER_DOMAIN, PLACEHOLDER_OP, expand)
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


def _pack_for_onnx(model: nn.Module, x: torch.Tensor):
    from ..packing import PackError, pack

    try:
        return pack(model, input_shape=tuple(x.shape[1:]))
    except PackError as e:
        raise OnnxExportError(f"the integer graph is built from the packed model, and {type(model).__name__} cannot "
                              f"be packed: {e}; to_onnx(..., ops='float') (bnnkit export --onnx-ops float) exports "
                              "it with float ops") from e


def to_onnx(model: nn.Module, path: str | os.PathLike, example_input: torch.Tensor, packed: bool = True, *,
            ops: str = GraphOps.INTEGER.value, opset: int = DEFAULT_OPSET, verify: bool = True,
            tolerance: float = RELATIVE_TOLERANCE, input_spec=None) -> OnnxExport:
    """Export ``model`` (a bnnkit zoo model, or any model with BinaryConv2d/BinaryLinear layers,
    e.g. converted with :func:`bnnkit.binarize`) in eval semantics to the ONNX file ``path``.

    Args:
        model: left unchanged (a float32 CPU eval copy is exported).
        path: the ``.onnx`` file to write (atomically: temp name, then rename).
        example_input: float ``(N, ...)``; fixes every dim but the batch dim, which is dynamic.
        packed: binary weights as 1-bit signs unpacked in-graph by a constant subgraph that
            runtimes fold at session start (True), or as plain initializers (False: int8 ±1
            for ``ops="integer"``, float ±alpha for ``ops="float"``), for tools that cannot
            read the packed form.
        ops: ``"integer"`` (default): binary layers as QLinearConv / MatMulInteger on uint8
            binary activations, built from :func:`bnnkit.export.pack` (see
            :mod:`bnnkit.export.onnx.integer_layers`); ``"float"``: float Conv / Gemm on ±1
            values, traced from the trained model (for runtimes without fast integer kernels).
            A model that ``pack`` refuses raises :class:`OnnxExportError` naming the layer
            (``ops="float"`` exports it).
        opset: ONNX opset, >= 18.
        verify: run the file in onnxruntime (CPU) on ``example_input`` and raise
            :class:`OnnxExportError` if it differs from the model by more than ``tolerance``
            (relative, see :mod:`bnnkit.export.validation.compare`) or in any top-1. The
            integer form is compared with the trained model evaluated in float64 (its sign
            thresholds are), a flip at a near-tie of it allowed (see
            :mod:`bnnkit.export.validation.reference`); the float form with the model in float32.
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

    form = GraphOps.parse(ops)
    if not isinstance(opset, int) or isinstance(opset, bool) or opset < MIN_OPSET:
        raise ValueError(f"opset must be an int >= {MIN_OPSET} (BitwiseAnd needs 18), got {opset!r}")
    x = _check_example(example_input)
    if input_spec is not None and input_spec.shape != tuple(x.shape[1:]):
        raise ValueError(f"input_spec describes inputs of shape {input_spec.shape}, example_input has "
                         f"{tuple(x.shape[1:])} (batch dim excluded)")
    path = os.fspath(path)
    view = inference_model(model, packed)  # also refuses layers without an ONNX form, by name
    try:
        with torch.no_grad():
            reference = view(x)
    except Exception as e:
        raise ValueError(f"the model fails on example_input of shape {tuple(x.shape)}: {type(e).__name__}: {e}; "
                         "pass an input the model accepts") from e
    if verify and not isinstance(reference, torch.Tensor):
        raise ValueError(f"verify=True compares one output tensor; the model returns {type(reference).__name__} "
                         "(pass verify=False to export it unchecked)")
    layers = binary_weights(view)
    if form == GraphOps.INTEGER and layers:
        graph = _integer_graph(_pack_for_onnx(model, x), x, opset, packed, type(model).__name__)
    else:  # without binary layers both forms are the same graph
        graph = _float_graph(view, x, opset)
    if "Sign" in op_types(graph):
        raise OnnxExportError("the exported graph contains an ONNX Sign node (sign(0) = 0); a layer of the model "
                              "binarizes with torch.sign instead of bnnkit's binarization")
    set_metadata(graph, {
        "bnnkit_version": __version__,
        "bnnkit.ops": form.value,
        **_encoding_metadata(form, packed),
        "bnnkit.model": type(model).__name__,
        **({INPUT_SPEC_KEY: json.dumps(input_spec.to_json())} if input_spec is not None else {}),
    }, doc=f"bnnkit {__version__}: {type(model).__name__} in eval semantics, binary layers as {form.value} ops, "
           f"binary weights {'packed to bits' if packed else 'unpacked'}")
    try:
        onnx.checker.check_model(graph, full_check=True)
    except onnx.checker.ValidationError as e:
        raise OnnxExportError(f"the exported graph fails onnx.checker: {e}") from None
    _atomic_save(graph, path)

    verification = None
    if verify:
        verification = _verify(path, model, reference, x, tolerance, float64=form == GraphOps.INTEGER)
        if not verification.ok:
            raise OnnxExportError(
                f"{path}: onnxruntime disagrees with the model on the example input (relative difference "
                f"{verification.rel_diff:.3g}, top-1 agreement {verification.top1_agreement:.2%}, first disagreeing "
                f"sample {verification.first_disagreement}); the file is kept for inspection")
    return OnnxExport(
        path=path, opset=opset, packed=packed, ops=form.value, file_bytes=os.path.getsize(path),
        fp32_param_bytes=4 * sum(p.numel() for p in model.parameters()), binary_weights=weight_numel(view),
        packed_weight_bytes=sum(m.packed_bytes for _, m in layers) if packed else 0, input_shape=tuple(x.shape[1:]),
        verification=verification)


def _encoding_metadata(form: GraphOps, packed: bool) -> dict[str, str]:
    if form == GraphOps.FLOAT:
        return {"bnnkit.binarization": "Where(x >= 0, +1, -1)",
                "bnnkit.weights": ("uint8 sign bits, LSB first along the flattened weight per output channel, bit 1 "
                                   "= +alpha; unpacked in-graph") if packed else "float32 alpha * binarize(w)"}
    return {"bnnkit.binarization": "Where(x >= 0, 2, 0) as uint8, zero point 1 (code - 1 = ±1)",
            "bnnkit.weights": ("uint8 sign bits, LSB first along each weight row, unpacked in-graph to int8 ±1"
                               if packed else "int8 ±1")}


def _verify(path: str, model: nn.Module, reference: torch.Tensor, x: torch.Tensor, tolerance: float,
            float64: bool) -> Comparison:
    """ONNX Runtime on ``x`` against the float32 ``reference``, or against the model in float64
    with near-tie flips explained (``float64``)."""
    got = run_onnxruntime(path, x)
    if not float64:
        return compare_outputs(reference, got, tolerance)
    from ..validation.reference import Float64Reference

    exact = Float64Reference(model)
    with torch.no_grad():
        return compare_outputs(exact.run(x), got, tolerance, explain=exact.explain)
