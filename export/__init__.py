"""Packed export, artifacts, ONNX and validation of bnnkit models.

- ``pack(model) -> PackedModel``, ``PackedModel.save(dir)``, ``load(dir)``: the packed
  artifact (format: docs/format.md), run by the Triton bitwise kernels on CUDA and by their
  PyTorch references elsewhere.
- ``to_onnx(model, path, example_input, packed=True)``: an ONNX graph that onnxruntime runs.
- ``export_run(run_dir, out, onnx=True)``: what ``bnnkit export`` writes for a training run.
- ``validate(model, dir, inputs)`` / ``validate_artifact(dir, inputs)``: every runtime of an
  export directory against the trained model evaluated in float64.

Sub-packages by stage, in the order of the command line: ``packing`` (trace, fuse, fold),
``runtime`` (packed layers and ops, ``PackedModel``, the artifact), ``onnx``, ``validation``.

Example::

    import bnnkit, bnnkit.export
    model = bnnkit.models.create("resnet20").eval()   # ... trained
    packed = bnnkit.export.pack(model)                 # create() recorded the zoo name and input shape
    packed.save("resnet20.packed")
    same = bnnkit.export.load("resnet20.packed")
"""

from .onnx import OnnxExport, OnnxExportError, UnsupportedLayerError, to_onnx
from .packing import PackError, pack
from .run_export import RunExport, export_run
from .runtime import FORMAT_KIND, FORMAT_VERSION, PackedConv2d, PackedLinear, PackedModel, load
from .validation import (NEAR_TIE_MARGIN, RELATIVE_TOLERANCE, Comparison, NearTie, TieFlip, ValidationReport,
                         compare_outputs, validate, validate_artifact)

__all__ = ["FORMAT_KIND", "FORMAT_VERSION", "NEAR_TIE_MARGIN", "RELATIVE_TOLERANCE", "Comparison", "NearTie",
           "OnnxExport", "OnnxExportError", "PackError", "PackedConv2d", "PackedLinear", "PackedModel", "RunExport",
           "TieFlip", "UnsupportedLayerError", "ValidationReport", "compare_outputs", "export_run", "load", "pack",
           "to_onnx", "validate", "validate_artifact"]
