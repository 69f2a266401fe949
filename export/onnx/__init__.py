"""Stage "onnx": a trained model as an ONNX graph with packed weights (``to_onnx``)."""

from .export import GraphOps, OnnxExport, OnnxExportError, run_onnxruntime, to_onnx
from .modules import UnsupportedLayerError

__all__ = ["GraphOps", "OnnxExport", "OnnxExportError", "UnsupportedLayerError", "run_onnxruntime", "to_onnx"]
