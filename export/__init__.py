"""Packed export, artifacts and ONNX of bnnkit models.

- ``pack(model) -> PackedModel``, ``PackedModel.save(dir)``, ``load(dir)``: the packed
  artifact (format: docs/format.md), run by the Triton bitwise kernels on CUDA and by their
  PyTorch references elsewhere.
- ``to_onnx(model, path, example_input, packed=True)``: an ONNX graph that onnxruntime runs.
- ``export_run(run_dir, out, onnx=True)``: what ``bnnkit export`` writes for a training run.

Example::

    import bnnkit, bnnkit.export
    model = bnnkit.models.create("resnet20")       # ... trained
    packed = bnnkit.export.pack(model, architecture={"name": "resnet20", "kwargs": {}})
    packed.save("resnet20.packed")
    same = bnnkit.export.load("resnet20.packed")
"""

from .fold import PackError
from .layers import PackedConv2d, PackedLinear
from .model import FORMAT_KIND, FORMAT_VERSION, PackedModel, load
from .onnx import OnnxExport, OnnxExportError, to_onnx
from .onnx_modules import UnsupportedLayerError
from .pack import pack
from .run_export import RunExport, export_run

__all__ = ["FORMAT_KIND", "FORMAT_VERSION", "OnnxExport", "OnnxExportError", "PackError", "PackedConv2d",
           "PackedLinear", "PackedModel", "RunExport", "UnsupportedLayerError", "export_run", "load", "pack",
           "to_onnx"]
